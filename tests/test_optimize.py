"""optimize_for_inference: BN folding, channels_last, bf16 and int8 keep the model's outputs."""

import warnings

import pytest
import torch
from torch import nn

from conftest import randomize, rel_err
from resnetlab import ModelConfig, create_model
from resnetlab.inference import (
    EmulatedPrecisionWarning,
    InferenceModel,
    Predictor,
    describe_model,
    fold_batchnorm,
    has_native_bf16,
    optimize_for_inference,
)


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
