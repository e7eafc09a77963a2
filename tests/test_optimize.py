"""optimize_for_inference: BN folding, channels_last, bf16 and int8 keep the model's outputs."""

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from conftest import randomize, rel_err
from resnetlab import ModelConfig, create_model
from resnetlab.errors import ConfigError
from resnetlab.inference import (
    EmulatedPrecisionWarning,
    InferenceModel,
    Predictor,
    describe_model,
    fold_batchnorm,
    has_native_bf16,
    optimize_for_inference,
)
from resnetlab.inference import optimize as optimize_module
from resnetlab.inference.optimize import Int8FallbackWarning, auto_precision


def _inputs(n: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _calibration(seed: int = 1) -> list[torch.Tensor]:
    return [_inputs(16, seed + i) for i in range(2)]


@pytest.fixture(scope="module")
def tiny():
    return randomize(create_model("resnet20", depth=8, num_classes=10), seed=3)


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


BOTTLENECK = ModelConfig(block="bottleneck", layers=(1, 1), widths=(8, 16), stem_width=8,
                         groups=2, base_width=32, num_classes=7)  # fmt: skip


@pytest.mark.parametrize(
    "make",
    [
        lambda: create_model("resnet20", depth=8, num_classes=10),
        lambda: create_model(BOTTLENECK),
        lambda: create_model("resnet18", num_classes=5, layers=(1, 1, 1, 1)),
    ],
    ids=["basic-A", "resnext-bottleneck", "imagenet-stem"],
)
def test_fp32_folds_every_bn_and_keeps_outputs(make):
    model = randomize(make(), seed=0)
    x = _inputs(4, 0, size=32)
    with torch.no_grad():
        expected = model(x)
    opt = optimize_for_inference(model, "fp32")
    assert isinstance(opt, InferenceModel) and opt.precision == "fp32"
    assert _bn_count(opt) == 0 and opt.folded_bn == _bn_count(model) > 0
    with torch.no_grad():
        got = opt(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert rel_err(expected, got) < 1e-4
    assert _bn_count(model) > 0, "the caller's model must be left as it was"
    conv = next(m for m in opt.modules() if isinstance(m, nn.Conv2d) and m.weight.ndim == 4)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_preact_folds_the_bns_that_follow_convs():
    model = randomize(create_model("resnet110_v2", depth=8, num_classes=4), seed=1)
    opt = optimize_for_inference(model, "fp32", channels_last=False)
    # Each v2 basic unit's norm2 follows conv1; its norm1 (and the final norm) normalise
    # sums and stay.
    assert opt.folded_bn == 3 and _bn_count(opt) == 4
    x = _inputs(3, 2)
    with torch.no_grad():
        assert rel_err(model(x), opt(x)) < 1e-4


def test_optimized_model_keeps_its_description(tiny):
    opt = optimize_for_inference(tiny, "fp32")
    assert opt.config == tiny.config and opt.name == "resnet20" and opt.num_classes == 10
    prep, names = describe_model(opt)
    assert prep == describe_model(tiny)[0] and len(names) == 10
    pred = Predictor.from_model(opt, device="cpu")
    out = pred.predict(torch.rand(2, 3, 32, 32), topk=2)
    assert len(out) == 2 and len(out[0]["topk"]) == 2


def test_fold_batchnorm_needs_eval_mode():
    model = create_model("resnet20", depth=8).train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model)


def test_bf16_within_bf16_tolerance(tiny):
    x = _inputs(8, 4)
    with torch.no_grad():
        expected = tiny(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = optimize_for_inference(tiny, "bf16")
    emulated = [w for w in caught if issubclass(w.category, EmulatedPrecisionWarning)]
    assert bool(emulated) == (not has_native_bf16())
    assert next(opt.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        got = opt(x)
    assert got.dtype == torch.float32
    assert rel_err(expected, got) < 5e-2


def test_int8_close_to_fp32(tiny):
    x = _inputs(64, 5)
    with torch.no_grad():
        expected = tiny(x)
    opt = optimize_for_inference(tiny, "int8", calibration=_calibration())
    assert opt.precision == "int8" and opt.calibration_batches == 2
    assert not any(type(m) is nn.Conv2d for m in opt.modules()), "convs must be quantized"
    with torch.no_grad():
        got = opt(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert rel_err(expected, got) < 0.15
    agreement = (got.argmax(1) == expected.argmax(1)).float().mean().item()
    assert agreement >= 0.85


def test_int8_takes_image_label_pairs_and_preact_nets():
    model = randomize(create_model("resnet110_v2", depth=8, num_classes=4), seed=2)
    pairs = [(x, torch.zeros(len(x), dtype=torch.long)) for x in _calibration(7)]
    opt = optimize_for_inference(model, "int8", calibration=pairs)
    x = _inputs(16, 9)
    with torch.no_grad():
        assert rel_err(model(x), opt(x)) < 0.15


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "fp16"}, "unknown precision 'fp16'"),
        ({"precision": "int8"}, "int8 needs calibration data"),
        ({"precision": "int8", "calibration": []}, "no batches"),
        ({"precision": "int8", "calibration": [torch.zeros(3, 16, 16)]}, "NxCxHxW"),
        (
            {
                "precision": "int8",
                "calibration": [torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 8, 8)],
            },
            "different image sizes",
        ),
    ],
)
def test_bad_requests_say_what_to_do(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        optimize_for_inference(tiny, **kwargs)


def test_predictor_runs_an_int8_model():
    from resnetlab import Predictor, create_model

    model = create_model("resnet20", depth=8, num_classes=3).eval()
    calib = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    int8 = optimize_for_inference(model, "int8", example_inputs=calib[0], calibration=calib)
    pred = Predictor.from_model(int8, preprocessing={"mean": [0.5] * 3, "std": [0.5] * 3,
                                                     "image_size": 16})  # fmt: skip
    out = pred.predict([torch.rand(3, 16, 16)], topk=2)
    assert len(out) == 1 and len(out[0]["topk"]) == 2


def _quantized_graph_ops(opt: InferenceModel) -> set[str]:
    return {str(n.target) for n in opt.module.graph.nodes if n.op == "call_function"}


def test_int8_is_pt2e_lowered_by_inductor_for_any_batch_size(tiny):
    opt = optimize_for_inference(tiny, "int8", calibration=_calibration())
    assert opt.backend == "pt2e-x86-inductor" and opt.compiled and opt.compile_seconds > 0
    assert isinstance(opt.module, torch.fx.GraphModule)
    ops = _quantized_graph_ops(opt)
    assert any("quantize_per_tensor" in op for op in ops)
    assert any("dequantize_per_channel" in op for op in ops), "weights quantized per channel"
    assert not any("batch_norm" in op for op in ops)
    assert opt.folded_bn == _bn_count(tiny) and opt.input_shape == (3, 16, 16)
    x = _inputs(5, 11)
    with torch.inference_mode():
        expected = tiny(x)
        # One export serves every batch size: calibrated at 16, run at 5 and at 1.
        assert rel_err(expected, opt(x)) < 0.15
        assert rel_err(expected[:1], opt(x[:1])) < 0.15
    with pytest.raises(ConfigError, match="takes 3x16x16 images"):
        opt(_inputs(2, 0, size=32))
    assert "backend=pt2e-x86-inductor" in repr(opt)


FAMILIES = {
    "v1-basic-imagenet": lambda: create_model("resnet18", num_classes=5, layers=(1, 1, 1, 1)),
    "v1.5-bottleneck": lambda: create_model(
        "resnet50", num_classes=5, layers=(1, 1), widths=(8, 16), stem_width=8
    ),
    "v1-bottleneck": lambda: create_model(
        "resnet50_v1", num_classes=5, layers=(1, 1), widths=(8, 16), stem_width=8
    ),
    "v2-bottleneck": lambda: create_model("resnet164_v2", depth=11, num_classes=4),
    "resnext": lambda: create_model(BOTTLENECK),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_int8_pt2e_for_every_family(family):
    model = randomize(FAMILIES[family](), seed=4)
    calib = [_inputs(8, 20 + i, size=32) for i in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Int8FallbackWarning)
        opt = optimize_for_inference(model, "int8", calibration=calib)
    assert opt.backend == "pt2e-x86-inductor"
    x = _inputs(32, 30, size=32)
    with torch.inference_mode():
        expected, got = model(x), opt(x)
    assert rel_err(expected, got) < 0.15
    assert (got.argmax(1) == expected.argmax(1)).float().mean().item() >= 0.85


def _no_torchao():
    raise ImportError("No module named 'torchao'")


def _export_fails(*args, **kwargs):
    raise RuntimeError("cannot export this model")


@pytest.mark.parametrize(
    ("target", "replacement", "reason"),
    [
        ("_pt2e_api", _no_torchao, "pip install torchao"),
        ("torch.export.export", _export_fails, "RuntimeError: cannot export this model"),
    ],
    ids=["no-torchao", "export-fails"],
)
def test_int8_falls_back_to_fx_with_a_warning(tiny, monkeypatch, target, replacement, reason):
    if "." in target:
        monkeypatch.setattr(target, replacement)
    else:
        monkeypatch.setattr(optimize_module, target, replacement)
    with pytest.warns(Int8FallbackWarning, match=reason):
        opt = optimize_for_inference(tiny, "int8", calibration=_calibration())
    assert opt.backend == "fx-x86" and not opt.compiled and opt.input_shape is None
    assert not any(type(m) is nn.Conv2d for m in opt.modules()), "convs must be quantized"
    x = _inputs(16, 5)
    with torch.no_grad():
        assert rel_err(tiny(x), opt(x)) < 0.15


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_auto_picks_bf16_only_where_it_is_fast_and_never_int8(tiny, monkeypatch, fast_bf16):
    monkeypatch.setattr(optimize_module, "cpu_bf16_is_fast", lambda: fast_bf16)
    expected = "bf16" if fast_bf16 else "fp32"
    assert auto_precision("cpu") == expected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmulatedPrecisionWarning)
        # Calibration data does not make "auto" choose int8: only asking for it does.
        opt = optimize_for_inference(tiny, "auto", calibration=_calibration())
    assert opt.precision == expected and opt.backend == "eager" and _bn_count(opt) == 0
    assert next(opt.parameters()).dtype == (torch.bfloat16 if fast_bf16 else torch.float32)
    x = _inputs(4, 6)
    with torch.no_grad():
        assert rel_err(tiny(x), opt(x)) < (5e-2 if fast_bf16 else 1e-4)


def test_int8_of_a_gray_model_works_whichever_backend_lowers_it():
    """1-channel (gray) inputs: inductor's int8 convolution cannot lower them in torch 2.14;
    the model then falls back to FX (with a warning) instead of failing at the first call."""
    torch.manual_seed(0)
    model = create_model("resnet8_pool", num_classes=4, in_chans=1).eval()
    calibration = [torch.randn(8, 1, 16, 16) for _ in range(2)]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        q = optimize_for_inference(model, "int8", calibration=calibration)
    assert q.backend in ("pt2e-x86-inductor", "fx-x86")
    for batch in (8, 3):
        x = torch.randn(batch, 1, 16, 16)
        assert q(x).shape == (batch, 4)


def test_fp32_compile_of_a_gray_model_works_compiled_or_not():
    """inductor fails on 1-channel inputs with a free batch dimension in torch 2.14: the
    model then runs uncompiled, with a warning, instead of failing at a later call."""
    model = randomize(create_model("resnet8_pool", num_classes=4, in_chans=1), seed=2).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = optimize_for_inference(model, "fp32", compile=True,
                                     example_inputs=torch.randn(4, 1, 16, 16))  # fmt: skip
    fallback = [w for w in caught if issubclass(w.category, optimize_module.CompileFallbackWarning)]
    assert opt.compiled != bool(fallback), [str(w.message) for w in caught]
    assert opt.backend == ("inductor" if opt.compiled else "eager")
    with torch.inference_mode():
        for batch in (4, 3, 1):
            x = torch.randn(batch, 1, 16, 16)
            assert rel_err(model(x), opt(x)) < 1e-4


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_compiled_model_is_static_for_its_example_batch_then_dynamic(tiny, precision):
    # The example's batch size gets a graph of its own (weights prepacked for it); one
    # graph with a free batch dimension, compiled up front too, serves every other size.
    example = _inputs(6, 4)
    kwargs = {"calibration": _calibration()} if precision == "int8" else {"compile": True}
    before = _graphs_compiled()
    opt = optimize_for_inference(tiny, precision, example_inputs=example, **kwargs)
    assert opt.compiled and opt.compile_seconds > 0
    assert opt.backend == ("inductor" if precision == "fp32" else "pt2e-x86-inductor")
    assert _graphs_compiled() == before + 2, "the example's batch size and a free one"
    tolerance = 1e-4 if precision == "fp32" else 0.15
    with torch.inference_mode():
        for n in (6, 5, 3, 1, 2, 17, 1):
            x = _inputs(n, n)
            assert rel_err(tiny(x), opt(x)) < tolerance, n
            assert _graphs_compiled() == before + 2, f"batch {n} compiled another graph"
    # A call outside inference mode (grad enabled) gives the same numbers, no new graph.
    assert rel_err(tiny(example).detach(), opt(example)) < tolerance
    assert _graphs_compiled() == before + 2


KEPT_MEMORY_SCRIPT = """
import resource, sys, torch
from resnetlab import create_model
from resnetlab.inference import optimize_for_inference

torch.set_num_threads(1)
model = create_model("resnet20", depth=8, num_classes=3).eval()
if sys.argv[1] == "optimized":
    model = optimize_for_inference(model, "fp32")
# 4 x 16 x 384 x 384 floats: 38 MB activations, above glibc's largest mmap threshold.
x = torch.randn(4, 3, 384, 384)
with torch.inference_mode():
    for i in range(8):
        if i == 3:  # after warm-up
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 5)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_an_optimized_model_reuses_its_activation_memory():
    def faults_per_batch(mode):
        out = subprocess.run([sys.executable, "-c", KEPT_MEMORY_SCRIPT, mode],
                             capture_output=True, text=True, check=True)  # fmt: skip
        return float(out.stdout)

    plain, optimized = faults_per_batch("plain"), faults_per_batch("optimized")
    # Without keep_freed_host_memory each batch maps its large activations afresh: ~9,000
    # pages for each 38 MB tensor; with it they stay in the heap.
    assert plain > 5000 and optimized < plain / 20, (plain, optimized)
