"""Export to safetensors, torchvision, ONNX, torch.export and OpenVINO, each file read back
and run."""

import json
import re
import subprocess
import sys

import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision

from conftest import randomize, rel_err
from resnetlab import ModelConfig, create_model, load_model, save_weights
from resnetlab.cli.present import format_export_result
from resnetlab.inference import EXPORT_FORMATS, ExportError, export_model
from resnetlab.inference import export as export_module

NAMES = ["cat", "dog", "bird"]
PREP = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "image_size": 16, "channels": 3,
        "in_chans": 3, "resize": 16, "crop": "center", "interpolation": "bilinear"}  # fmt: skip


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "resnetlab", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    model = randomize(create_model("resnet20", depth=8, num_classes=3))
    save_weights(model, run / "model.safetensors", preprocessing=PREP, class_names=NAMES)
    return run


@pytest.fixture(scope="module")
def reference(run_dir):
    return load_model(run_dir).eval()


def images(batch, seed=1):
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_cli_onnx_dynamic_batch(run_dir, reference, tmp_path):
    out = tmp_path / "new" / "dir" / "r.onnx"  # the folder is created
    proc = cli("export", run_dir, "--format", "onnx", "--output", out)  # free by default
    assert proc.returncode == 0, proc.stderr
    assert "(onnx, dynamic batch)" in proc.stdout
    error = float(re.search(r"max relative error vs PyTorch (\S+)", proc.stdout)[1])
    assert 0 <= error <= 1e-4
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_names"]) == NAMES
    assert json.loads(props["preprocessing"])["mean"] == PREP["mean"]
    assert props["architecture"] == "resnet20"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for batch in (1, 5):
        x = images(batch)
        got = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
        assert rel_err(reference(x).detach(), got) < 1e-4


def test_cli_bad_inputs_are_one_line(run_dir, tmp_path):
    proc = cli("export", run_dir, "--format", "tflite", "--output", tmp_path / "m.tflite")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown export format 'tflite'" in proc.stderr
    for fmt in EXPORT_FORMATS:
        assert fmt in proc.stderr


def test_onnx_static_batch_and_opset(run_dir, reference, tmp_path):
    result = export_model(run_dir, "onnx", tmp_path / "r.onnx", opset=13, dynamic_batch=False)
    assert not result.dynamic_batch
    assert result.max_rel_error is not None and result.max_rel_error <= 1e-4
    model = onnx.load(str(result.path))
    assert model.opset_import[0].version == 13
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 16, 16]
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = images(1)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert rel_err(reference(x).detach(), got) < 1e-4


def _onnx_batch_dim(path):
    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_param or dim.dim_value


def test_onnx_batch_is_free_by_default_and_checked_at_two_sizes(run_dir, tmp_path, monkeypatch):
    checked = []
    compare = export_module._compare

    def spy(model, run, size, batches):
        checked.append(tuple(batches))
        return compare(model, run, size, batches)

    monkeypatch.setattr(export_module, "_compare", spy)
    result = export_model(run_dir, "onnx", tmp_path / "r.onnx")
    assert result.dynamic_batch and result.max_rel_error <= 1e-4
    assert checked == [(1, 3)]  # neither is the traced batch (2)
    assert _onnx_batch_dim(result.path) == "batch"
    checked.clear()
    fixed = export_model(run_dir, "onnx", tmp_path / "b1.onnx", dynamic_batch=False)
    assert not fixed.dynamic_batch and checked == [(1,)]
    assert _onnx_batch_dim(fixed.path) == 1


def test_a_batch_size_baked_into_the_graph_fails_verification(run_dir, tmp_path, monkeypatch):
    """A dynamic export whose graph only works at the traced size must not pass: a static
    graph traced at 2 is refused at the checked batches 1 and 3."""
    real = torch.onnx.export

    def static_export(*args, **kwargs):
        return real(*args, **{**kwargs, "dynamic_axes": None})

    monkeypatch.setattr(torch.onnx, "export", static_export)
    with pytest.raises(ExportError, match="cannot run a batch of 1"):
        export_model(run_dir, "onnx", tmp_path / "r.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_static_batch_and_the_old_flag(run_dir, tmp_path, capsys):
    from resnetlab.cli import build_parser, main

    out = tmp_path / "b1.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--output", str(out),
                 "--static-batch"]) == 0  # fmt: skip
    assert "(onnx, static batch 1)" in capsys.readouterr().out and _onnx_batch_dim(out) == 1
    args = build_parser().parse_args(["export", "r", "--format", "onnx", "--output", "m.onnx",
                                      "--dynamic-batch"])  # fmt: skip
    assert args.dynamic_batch and not args.static_batch  # still accepted: now the default
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = capsys.readouterr().out
    assert "--static-batch" in help_text and "the default, kept for older" in help_text
    assert "openvino" in help_text


def test_safetensors_copy(run_dir, reference, tmp_path):
    result = export_model(run_dir / "model.safetensors", "safetensors", tmp_path / "c.safetensors")
    assert result.max_rel_error == 0.0
    copy = load_model(result.path)
    assert copy.meta["class_names"] == NAMES and copy.meta["preprocessing"]["resize"] == 16
    assert (tmp_path / "c.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.safetensors"]
    x = images(2)
    assert torch.equal(copy.eval()(x), reference(x))


def test_torchvision_state_dict_loads_into_torchvision(tmp_path):
    model = randomize(create_model("resnet18", num_classes=5))
    result = export_model(model, "torchvision", tmp_path / "r18.pth")
    assert result.max_rel_error is not None and result.max_rel_error <= 1e-4
    assert result.load_with == "torchvision.models.resnet18(num_classes=5)"
    tv = torchvision.models.resnet18(num_classes=5)
    tv.load_state_dict(torch.load(result.path, weights_only=True))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(model(x), tv.eval()(x)) < 1e-5


def test_torchvision_twin_without_a_builder(tmp_path):
    cfg = ModelConfig(layers=(1, 1, 1, 1), num_classes=4)
    result = export_model(randomize(create_model(cfg)), "torchvision", tmp_path / "small.pth")
    assert result.load_with.startswith("torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1]")
    assert result.max_rel_error <= 1e-4


def test_torchvision_refuses_models_without_a_twin(run_dir, tmp_path):
    with pytest.raises(ExportError, match="no torchvision counterpart"):
        export_model(run_dir, "torchvision", tmp_path / "r20.pth")
    v1 = create_model(ModelConfig(block="bottleneck", layers=(1, 1, 1, 1), stride_on="1x1"))
    with pytest.raises(ExportError, match="strides on the bottleneck's 1x1"):
        export_model(v1, "torchvision", tmp_path / "v1.pth")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_export(run_dir, reference, tmp_path, dynamic):
    result = export_model(run_dir, "torch-export", tmp_path / "r.pt2", dynamic_batch=dynamic)
    assert result.max_rel_error is not None and result.max_rel_error <= 1e-4
    extra = {"resnetlab.json": ""}
    program = torch.export.load(result.path, extra_files=extra)
    assert json.loads(extra["resnetlab.json"])["class_names"] == NAMES
    module = program.module()
    batches = (1, 3) if dynamic else (1,)
    for batch in batches:
        x = images(batch)
        assert rel_err(reference(x), module(x)) < 1e-5
    if not dynamic:
        with pytest.raises(Exception, match="size"):
            module(images(3))


def test_torch_export_batch_is_free_by_default(run_dir, reference, tmp_path):
    result = export_model(run_dir, "torch-export", tmp_path / "r.pt2")
    assert result.dynamic_batch
    module = torch.export.load(result.path).module()
    for batch in (1, 4):
        assert rel_err(reference(images(batch)), module(images(batch))) < 1e-5


def test_failed_verification_removes_the_file(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "MAX_REL_ERROR", -1.0)
    with pytest.raises(ExportError, match="differs from the PyTorch model"):
        export_model(run_dir, "onnx", tmp_path / "r.onnx")
    assert list(tmp_path.iterdir()) == []
    result = export_model(run_dir, "onnx", tmp_path / "r.onnx", verify=False)
    assert result.max_rel_error is None and result.path.exists()


def test_model_in_memory_is_left_as_it_was(tmp_path):
    model = create_model("resnet20", depth=8, num_classes=3).train()
    result = export_model(model, "onnx", tmp_path / "m.onnx", dynamic_batch=True)
    assert model.training and result.max_rel_error <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert json.loads(props["preprocessing"])["image_size"] == 32  # the CIFAR default
    assert json.loads(props["class_names"]) == ["class_0", "class_1", "class_2"]


@pytest.mark.parametrize(
    ("fmt", "name", "kwargs", "match"),
    [
        ("onnx", "m.onnx", {"opset": 99}, "opset=99"),
        ("onnx", "m.pt2", {}, r"does not end in \.onnx"),
        ("safetensors", "m.safetensors", {"dynamic_batch": True}, "dynamic batch applies"),
        ("torch-export", "m.pt2", {"opset": 17}, "opset applies to onnx"),
        ("bogus", "m.onnx", {}, "unknown export format"),
        ("openvino", "m.onnx", {}, "openvino export goes to a folder"),
        ("openvino", "m.bin", {}, r"or to a path ending in \.xml"),
        ("openvino", "ov", {"opset": 17}, "opset applies to onnx"),
    ],
)
def test_bad_options(run_dir, tmp_path, fmt, name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_model(run_dir, fmt, tmp_path / name, **kwargs)


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        export_model(tmp_path / "nope", "onnx", tmp_path / "m.onnx")
    torch.save(create_model("resnet20", depth=8).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="does not describe its architecture"):
        export_model(tmp_path / "w.pth", "onnx", tmp_path / "m.onnx")


# ------------------------------------------------------------------ disks that fight back

FORMAT_FILES = [("safetensors", "m.safetensors"), ("onnx", "m.onnx"),
                ("torch-export", "m.pt2")]  # fmt: skip


def _fail_writes_under(folder, monkeypatch):
    """os.write into ``folder`` fails with ENOSPC after a few bytes, as on a full disk."""
    import errno
    import os

    from resnetlab import io as rio

    real = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
            real(fd, bytes(data[:10]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell the test's writes from pytest's")
    monkeypatch.setattr(rio.os, "write", write)


@pytest.mark.parametrize(("fmt", "name"), FORMAT_FILES)
def test_full_disk_keeps_the_previous_export(run_dir, tmp_path, monkeypatch, fmt, name):
    out = tmp_path / "out" / name
    out.parent.mkdir()
    out.write_bytes(b"previous")
    if fmt == "safetensors":
        out.with_suffix(".json").write_text("previous")
    _fail_writes_under(out.parent, monkeypatch)
    with pytest.raises(ExportError, match=rf"^no space left on device: {re.escape(str(out))}"):
        export_model(run_dir, fmt, out)
    assert out.read_bytes() == b"previous"
    expected = sorted([name] + ([out.with_suffix(".json").name] if fmt == "safetensors" else []))
    assert sorted(p.name for p in out.parent.iterdir()) == expected  # no temporary file left


def test_output_below_a_regular_file_is_a_clear_error(run_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match=r"afile is a file, not a folder") as info:
        export_model(run_dir, "onnx", tmp_path / "afile" / "x.onnx")
    assert isinstance(info.value, ValueError)  # still a bad option for callers catching those
    assert (tmp_path / "afile").read_text() == "x"
    proc = cli("export", run_dir, "--format", "onnx", "--output", tmp_path / "afile" / "x.onnx")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "is a file, not a folder" in proc.stderr


@pytest.mark.parametrize(("fmt", "name"), FORMAT_FILES)
def test_an_export_leaves_another_exports_temporary_file_alone(run_dir, tmp_path, fmt, name):
    """A second export of the same path may be writing its temporary file right now: an
    export must use a name of its own, never a fixed one it then overwrites and deletes
    (``.m.partial.onnx`` was shared by every export of ``m.onnx``)."""
    out = tmp_path / name
    others = [tmp_path / f".{out.stem}.partial{out.suffix}"]
    if fmt == "safetensors":
        others.append(tmp_path / f".{out.stem}.partial.json")
    for other in others:
        other.write_bytes(b"another export, half written")
    export_model(run_dir, fmt, out)
    for other in others:
        assert other.read_bytes() == b"another export, half written"
    assert load_model(out) if fmt == "safetensors" else out.stat().st_size > 1000


def test_option_errors_are_project_errors(run_dir, tmp_path):
    from resnetlab.errors import ResnetlabError

    for kwargs in ({"fmt": "bogus"}, {"fmt": "onnx", "opset": 99}):
        with pytest.raises(ResnetlabError):
            export_model(run_dir, output=tmp_path / "m.onnx", **kwargs)
    with pytest.raises(ResnetlabError, match="not found"):
        export_model(tmp_path / "nope", "onnx", tmp_path / "m.onnx")


# ------------------------------------------------------------------ OpenVINO IR


def _compile_ir(path, precision="f32"):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                 "INFERENCE_NUM_THREADS": 1})  # fmt: skip
    return model, compiled


def test_openvino_ir_round_trip(run_dir, reference, tmp_path):
    out = tmp_path / "new" / "ov"  # a folder, created
    result = export_model(run_dir, "openvino", out)
    assert result.path == out / "model.xml" and result.dynamic_batch
    assert result.max_rel_error is not None and 0 <= result.max_rel_error <= 1e-4
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml"]
    model, compiled = _compile_ir(result.path)
    info = {k: model.get_rt_info(["resnetlab", k]).astype(str)
            for k in ("architecture", "num_classes", "class_names", "preprocessing")}  # fmt: skip
    assert info["architecture"] == "resnet20" and info["num_classes"] == "3"
    assert json.loads(info["class_names"]) == NAMES
    assert json.loads(info["preprocessing"])["mean"] == PREP["mean"]
    assert model.inputs[0].get_names() == {"input"} and model.outputs[0].get_names() == {"logits"}
    assert model.inputs[0].get_partial_shape().is_dynamic
    for batch in (1, 5):
        x = images(batch)
        got = torch.from_numpy(compiled(x.numpy())[0])
        assert got.shape == (batch, 3) and rel_err(reference(x).detach(), got) < 1e-4


def test_openvino_xml_path_static_batch(run_dir, reference, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = export_model(run_dir, "openvino", tmp_path / "r20.xml", dynamic_batch=False)
    assert result.path == tmp_path / "r20.xml" and not result.dynamic_batch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "r20.bin", "r20.xml"]
    model, compiled = _compile_ir(result.path)
    assert list(model.inputs[0].get_shape()) == [1, 3, 16, 16]
    got = torch.from_numpy(compiled(images(1).numpy())[0])
    assert rel_err(reference(images(1)).detach(), got) < 1e-4
    text = format_export_result(result)
    assert "r20.xml and r20.bin (openvino, static batch 1)" in text and "compile_model" in text


def test_cli_openvino(run_dir, tmp_path):
    out = tmp_path / "ir"
    proc = cli("export", run_dir, "--format", "openvino", "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out / 'model.xml'} and model.bin (openvino, dynamic batch)" in proc.stdout
    error = float(re.search(r"max relative error vs PyTorch (\S+)", proc.stdout)[1])
    assert 0 <= error <= 1e-4


def test_openvino_failed_verification_writes_nothing(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "MAX_REL_ERROR", -1.0)
    with pytest.raises(ExportError, match="openvino export differs from the PyTorch model"):
        export_model(run_dir, "openvino", tmp_path / "ov")
    assert list(tmp_path.iterdir()) == []
    result = export_model(run_dir, "openvino", tmp_path / "ov", verify=False)
    assert result.max_rel_error is None and (tmp_path / "ov" / "model.bin").exists()


@pytest.mark.parametrize(
    ("make", "output", "match"),
    [
        (lambda t: (t / "afile").write_text("x"), "afile", "is a file: give a folder"),
        (lambda t: (t / "afile").write_text("x"), "afile/m.xml", "afile is a file, not a folder"),
        (lambda t: (t / "d.xml").mkdir(), "d.xml", "is a folder: give a file name"),
        (lambda t: (t / "ov" / "model.xml").mkdir(parents=True), "ov", "it is a folder"),
    ],
)
def test_openvino_bad_output_paths(run_dir, tmp_path, make, output, match):
    make(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ExportError, match=match) as info:
        export_model(run_dir, "openvino", tmp_path / output)
    assert isinstance(info.value, ValueError)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_openvino_full_disk_keeps_the_previous_ir(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("model.xml", "model.bin"):
        (out / name).write_bytes(b"previous")
    _fail_writes_under(out, monkeypatch)
    with pytest.raises(ExportError, match=rf"^no space left on device: {re.escape(str(out))}/"):
        export_model(run_dir, "openvino", out)
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml"]  # no temp file
    assert all((out / n).read_bytes() == b"previous" for n in ("model.xml", "model.bin"))


def test_openvino_missing_is_a_missing_dependency(run_dir, tmp_path, monkeypatch):
    from resnetlab.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(MissingDependencyError, match="pip install openvino") as info:
        export_model(run_dir, "openvino", tmp_path / "ov")
    assert isinstance(info.value, ExportError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("fmt", "name", "backend"),
                         [("onnx", "m.onnx", "onnxruntime"), ("openvino", "ov", "openvino")])  # fmt: skip
def test_exported_graphs_predict_like_their_model(run_dir, tmp_path, fmt, name, backend):
    from PIL import Image

    from conftest import random_pixels
    from resnetlab.inference import Predictor

    written = export_model(run_dir, fmt, tmp_path / name).path
    graph = Predictor.from_source(written)
    weights = Predictor.from_source(run_dir, device="cpu")
    assert graph.class_names == tuple(NAMES) and graph.preprocessing == weights.preprocessing
    assert graph.precision == f"fp32 ({backend})" and graph.model.name == "resnet20"
    files = []
    for i in range(5):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(random_pixels(i, (20, 18, 3))).save(files[-1])
    got, expected = graph.predict(files, topk=3), weights.predict(files, topk=3)
    for g, e in zip(got, expected, strict=True):
        assert [t["class"] for t in g["topk"]] == [t["class"] for t in e["topk"]]
        for a, b in zip(g["topk"], e["topk"], strict=True):
            assert abs(a["prob"] - b["prob"]) < 1e-5
    proc = cli("predict", written, files[0], "--topk", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(":")[1].split()[0] == expected[0]["topk"][0]["class"]


def test_exported_graphs_that_cannot_be_read_are_export_errors(tmp_path):
    from resnetlab.inference import Predictor

    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(ExportError, match="onnxruntime cannot load it"):
        Predictor.from_source(tmp_path / "junk.onnx")
    (tmp_path / "junk.xml").write_text("<net/>")
    with pytest.raises(ExportError, match="OpenVINO cannot load it"):
        Predictor.from_source(tmp_path / "junk.xml")
    plain = tmp_path / "plain.onnx"  # a graph without resnetlab's description
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1), torch.zeros(1, 3, 4, 4), plain, dynamo=False)
    with pytest.raises(ExportError, match="does not carry resnetlab's description"):
        Predictor.from_source(plain)
    proc = cli("predict", plain, plain)
    assert proc.returncode == 2 and "export it with `resnetlab export`" in proc.stderr
