"""The layer picture of README's layout is true of the code: each layer imports only layers
to its left (function-level imports included); models know nothing of data or training."""

import ast
from pathlib import Path

import resnetlab

ROOT = Path(resnetlab.__file__).parent
# Left to right; the names of one entry are siblings that do not import each other.
LAYERS = [
    {"errors"},
    {"io", "formatting", "device"},
    {"config"},
    {"models"},
    {"data"},
    {"engine"},
    {"inference", "experiments"},
    {"cli"},
    {"__init__", "__main__"},  # the public API and `python -m resnetlab`
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _imports(path: Path, root: Path = ROOT) -> set[str]:
    """The top-level resnetlab modules a file imports (relative or absolute)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    package = [p for p in package if p != "__init__"]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [])
            found.add(target[0] if target else node.names[0].name)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("resnetlab."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("resnetlab.")}
    return found


def _layer(path: Path) -> str:
    first = path.relative_to(ROOT).parts[0]
    return first.removesuffix(".py")


def test_each_layer_imports_only_layers_to_its_left():
    wrong = []
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 50
    for path in files:
        me = _layer(path)
        for other in _imports(path) - {me, "__version__"}:
            if other in RANK and RANK[other] >= RANK[me]:
                wrong.append(f"{path.relative_to(ROOT)} imports {other}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path):
    # The same reading on files that break the rule, so the test above can fail.
    (tmp_path / "models").mkdir()
    lazy = tmp_path / "models" / "probe.py"
    lazy.write_text("def f():\n    from ..engine import trainer\n")
    absolute = tmp_path / "config.py"
    absolute.write_text("import resnetlab.data.build\nfrom resnetlab.models import zoo\n")
    assert _imports(lazy, tmp_path) == {"engine"}
    assert _imports(absolute, tmp_path) == {"data", "models"}
