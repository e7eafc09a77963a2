"""The hostile-input suite of tests/hostile.py: no traceback, no result lost, no foreign
code run, in every case; README's reliability table gives exactly these counts."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hostile  # noqa: E402

README = Path(__file__).parents[1] / "README.md"


@pytest.mark.slow
def test_hostile_inputs_give_clear_errors_and_lose_nothing(tmp_path):
    outcomes = hostile.run_suite(tmp_path)
    bad = [o for o in outcomes if o.kind not in ("ok", "clear error") or o.lost or o.foreign]
    assert not bad, "\n".join(f"{o.kind} lost={o.lost} foreign={o.foreign} {o.case}: {o.detail}"
                              for o in bad)  # fmt: skip
    table = hostile.counts(outcomes)
    assert table["cases"] == len(hostile.CASES) >= 50
    # README quotes the suite's counts: they cannot drift from what the suite gives
    assert hostile.render(table) in README.read_text(), hostile.render(table)


def test_the_canary_would_catch_foreign_code(tmp_path):
    """The suite's canary is real: unpickling its payload unsafely does write the file."""
    import pickle

    pickle.loads(hostile._evil_pickle(tmp_path))  # the unsafe load the code never does
    assert (tmp_path / hostile.CANARY).exists()


def test_a_traceback_is_classified_as_one(tmp_path, monkeypatch):
    """The classifier is not a rubber stamp: a command that raises a bug is a traceback."""
    from resnetlab import cli

    def boom(args):
        raise IndexError("a bug")

    monkeypatch.setattr(cli.models, "cmd_models", boom)
    case = hostile.Case("bug", lambda d: ["models"])
    done = tmp_path / "done0"
    done.mkdir()
    assert hostile.run_case(case, tmp_path / "c", done).kind == "traceback"
    assert re.search("IndexError", hostile.run_case(case, tmp_path / "c2", done).detail)
