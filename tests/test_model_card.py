"""The model card: one typed description on every model, one Preprocessing type everywhere."""

import dataclasses
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import random_pixels
from resnetlab import create_model, load_model, save_weights
from resnetlab.data import DataInfo
from resnetlab.data.folder import folder_transforms
from resnetlab.data.images import load_image
from resnetlab.errors import ArchitectureNotDescribedError, ResnetlabError
from resnetlab.inference import Predictor, describe_model, export_model
from resnetlab.inference import Preprocessing as InferencePreprocessing
from resnetlab.inference.meta import PreprocessingError as InferencePreprocessingError
from resnetlab.models import (
    ModelCard,
    Preprocessing,
    PreprocessingError,
    WeightsSource,
    read_weights,
    resolve_pretrained,
)
from resnetlab.models.card import SIDECAR_FORMAT, default_preprocessing

NAMES = ["cat", "dog", "eel"]
PREP = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "image_size": 16, "channels": 3,
        "in_chans": 3, "resize": 18, "crop": "center", "interpolation": "bicubic"}  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = create_model("resnet20", depth=8, num_classes=3)
    save_weights(model, run / "model.safetensors", preprocessing=PREP, class_names=NAMES)
    return run


def test_one_preprocessing_type():
    assert InferencePreprocessing is Preprocessing
    assert InferencePreprocessingError is PreprocessingError
    assert issubclass(PreprocessingError, ResnetlabError) and issubclass(
        PreprocessingError, ValueError
    )


def test_card_of_a_zoo_model():
    model = create_model("resnet20", depth=8, num_classes=3)
    card = model.card
    assert isinstance(card, ModelCard) and card.architecture == "resnet20"
    assert card.config == model.config.to_dict() and card.model_config() == model.config
    assert card.num_classes == 3 and card.in_chans == 3
    # random weights: nothing describes the classes, the preprocessing or a source
    assert card.class_names is None and card.preprocessing is None and card.source is None
    assert card.metrics == {}
    assert model.preprocessing == default_preprocessing(model.config)
    assert (model.preprocessing.image_size, model.preprocessing.mean[0]) == (32, 0.4914)
    x = model.transforms()(Image.fromarray(random_pixels(0, (40, 50, 3))))
    assert type(x) is torch.Tensor and x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert model.meta["architecture"] == "resnet20" and model.meta["preprocessing"] is None
    big = create_model("resnet50")  # an ImageNet stem: 256 resize, 224 crop
    assert (big.preprocessing.resize, big.preprocessing.image_size) == (256, 224)
    # a fresh head: neither class names nor published metrics describe it any more
    named = dataclasses.replace(card, class_names=tuple(NAMES), metrics={"top1": 1.0})
    model.card = named
    model.reset_classifier(5)
    assert model.card.num_classes == 5 and model.card.config["num_classes"] == 5
    assert model.card.class_names is None and model.card.metrics == {}


def test_card_of_a_torchvision_state_dict(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "tv.pth")
    model = create_model("resnet18", weights=tmp_path / "tv.pth")
    card = model.card
    assert card.num_classes == 10 and card.architecture == "resnet18"
    assert card.source == WeightsSource("torchvision", file=str(tmp_path / "tv.pth"))
    assert card.preprocessing is None and card.class_names is None  # the file does not say
    assert model.preprocessing == default_preprocessing(model.config)  # ImageNet's convention
    assert model.load_report.fmt == "torchvision"


def test_card_of_named_weights_and_a_new_head(tmp_path):
    import torchvision

    tv = resolve_pretrained("torchvision:resnet18.IMAGENET1K_V1")
    card = tv.model_card()
    assert card.architecture == "resnet18" and len(card.class_names) == 1000
    assert card.source.name == tv.name and card.source.url == tv.url
    assert card.source.sha256 == tv.hash and card.metrics["top1"] == pytest.approx(69.758)
    assert card.preprocessing.to_dict() == {**tv.preprocessing}  # train crop 224 = test crop
    timm = resolve_pretrained("timm:resnet50.a1_in1k").model_card()
    assert (timm.preprocessing.train_size, timm.preprocessing.image_size) == (224, 288)
    assert timm.preprocessing.interpolation == "bicubic" and timm.metrics["top1"] == 81.24
    assert timm.preprocessing.to_dict()["train_image_size"] == 224
    # Loading a file read for the card (as create_model does after the download)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    wf = read_weights(tmp_path / "r18.pth")
    wf.card = tv
    model = create_model("resnet18", weights=wf)
    assert model.card.class_names == tv.class_names and model.card.metrics == card.metrics
    assert model.card.source.file == str(tmp_path / "r18.pth") and model.card.source.name == tv.name
    prep, names = describe_model(model)
    assert prep == card.preprocessing and names[0] == "tench"
    with pytest.warns(UserWarning, match="classifier re-initialised"):
        five = create_model("resnet18", weights=wf, num_classes=5)
    # the head is new: the classes and metrics are gone, the preprocessing stays
    assert five.card.class_names is None and five.card.metrics == {}
    assert five.card.preprocessing == card.preprocessing and five.card.num_classes == 5
    gray = create_model("resnet18", weights=wf, in_chans=1)  # the stem is adapted
    assert gray.card.preprocessing is None and gray.preprocessing.in_chans == 1


def test_transforms_are_what_predict_uses(run_dir, tmp_path):
    model = load_model(run_dir)
    predictor = Predictor.from_source(run_dir, device="cpu")
    assert model.preprocessing == predictor.preprocessing == Preprocessing.from_dict(PREP)
    assert model.card.class_names == predictor.class_names == tuple(NAMES)
    path = tmp_path / "a.png"
    Image.fromarray(random_pixels(1, (30, 41, 3))).save(path)
    image = load_image(path, channels=3, min_side=PREP["resize"])
    assert torch.equal(model.transforms()(image), predictor.prepare(path))
    tensor = torch.from_numpy(random_pixels(2, (3, 20, 24)))
    assert torch.equal(model.transforms()(tensor), predictor.prepare(tensor))
    train = model.transforms(train=True)(image)
    assert train.shape == (3, 16, 16)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
@pytest.mark.parametrize("size", [(16, 16), (18, 18), (30, 41), (64, 17)])
@pytest.mark.parametrize(
    "channels, interpolation", [(3, "bicubic"), (1, "bilinear"), (3, "nearest")]
)
def test_the_direct_path_for_pil_images_is_the_compose_bit_for_bit(
    mode, size, channels, interpolation
):
    prep = Preprocessing.from_dict({**PREP, "channels": channels, "in_chans": channels,
                                    "mean": PREP["mean"][:channels], "std": PREP["std"][:channels],
                                    "interpolation": interpolation})  # fmt: skip
    image = Image.fromarray(random_pixels(3, (size[1], size[0], 3))).convert(mode)
    expected = prep.transforms()(image)
    assert expected.shape == (channels, 16, 16)
    assert torch.equal(prep._pil_to_input(image), expected)

    def compose(_):
        raise AssertionError("a PIL image went through the Compose")

    prep.__dict__["_test_transforms"] = compose  # (the cached Compose __call__ would use)
    assert torch.equal(prep(image), expected)


def test_round_trips():
    prep = Preprocessing.from_dict({**PREP, "train_image_size": 12})
    assert prep.train_size == 12 and prep.crop_pct == pytest.approx(16 / 18)
    assert Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict()))) == prep
    assert "train_image_size" not in Preprocessing.from_dict(PREP).to_dict()
    model = create_model("resnet20", depth=8, num_classes=3)
    card = dataclasses.replace(
        model.card, class_names=tuple(NAMES), preprocessing=prep,
        source=WeightsSource("resnetlab", file="m.safetensors", tensors_sha256="0" * 64),
        metrics={"top1": 91.5, "top5": None}, metrics_source="a paper",
    )  # fmt: skip
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    again = ModelCard.from_meta(json.loads(json.dumps(card.to_meta())))
    assert again.to_meta() == card.to_meta() and again.to_meta()["format"] == SIDECAR_FORMAT
    assert hash(card) == hash(ModelCard.from_dict(card.to_dict()))
    with pytest.raises(PreprocessingError, match="2 class names for a model with 3"):
        dataclasses.replace(card, class_names=("a", "b"))


def test_data_info_uses_the_same_preprocessing():
    info = DataInfo("x", 3, tuple(NAMES), 3, 16, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), resize=18)
    prep = info.to_preprocessing()
    assert prep == Preprocessing.from_dict(info.preprocessing())
    image = Image.fromarray(random_pixels(3, (37, 29, 3)))
    # the image-folder evaluation pipeline is the card's test pipeline
    assert torch.equal(folder_transforms(info, train=False)(image), prep.transforms()(image))


def test_a_sidecar_of_the_first_format_still_loads(tmp_path):
    """A sidecar with only the keys the first version wrote (a partial config, a preprocessing
    of mean, std and image_size, no checksum), beside a plain safetensors file, or inside it."""
    model = create_model("resnet20", depth=8, num_classes=3)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "resnetlab-weights", "version": 1, "architecture": "resnet20",
            "config": {"block": "basic", "layers": [1, 1, 1], "widths": [16, 32, 64],
                       "stem": "cifar", "stem_width": 16, "shortcut": "A", "num_classes": 3},
            "num_classes": 3, "preprocessing": {"mean": [0.5] * 3, "std": [0.25] * 3,
                                                "image_size": 32}}  # fmt: skip
    save_file(tensors, tmp_path / "old.safetensors")
    (tmp_path / "old.json").write_text(json.dumps(meta))
    inside = tmp_path / "inside.safetensors"
    save_file(tensors, inside, metadata={SIDECAR_FORMAT: json.dumps(meta)})
    x = torch.randn(2, 3, 32, 32)
    for path in (tmp_path / "old.safetensors", inside):
        loaded = load_model(path).eval()
        assert torch.equal(loaded(x), model.eval()(x))
        card = loaded.card
        assert card.config == model.config.to_dict() and card.class_names is None
        assert card.preprocessing == Preprocessing(
            mean=(0.5,) * 3, std=(0.25,) * 3, image_size=32, channels=3, in_chans=3, resize=32
        )
        assert card.source == WeightsSource("resnetlab", file=str(path))
        assert loaded.meta["preprocessing"]["resize"] == 32
    prep, names = describe_model(load_model(inside))
    assert prep.image_size == 32 and names == ("class_0", "class_1", "class_2")


def test_weights_without_an_architecture_raise_the_typed_error(tmp_path):
    torch.save(create_model("resnet20", depth=8).state_dict(), tmp_path / "w.pth")
    with pytest.raises(ArchitectureNotDescribedError, match="does not describe its architecture"):
        load_model(tmp_path / "w.pth")
    assert issubclass(ArchitectureNotDescribedError, ResnetlabError)
    assert issubclass(ArchitectureNotDescribedError, ValueError)  # what was raised before
    with pytest.raises(ArchitectureNotDescribedError, match="--model NAME --weights PATH"):
        Predictor.from_source(tmp_path / "w.pth", device="cpu")
    with pytest.raises(ArchitectureNotDescribedError):
        export_model(tmp_path / "w.pth", "safetensors", tmp_path / "m.safetensors")


def test_export_takes_another_card(run_dir, tmp_path):
    model = load_model(run_dir)
    prep = dataclasses.replace(model.preprocessing, image_size=12, resize=14)
    card = dataclasses.replace(model.card, preprocessing=prep, class_names=("a", "b", "c"))
    result = export_model(model, "safetensors", tmp_path / "c.safetensors", card=card)
    again = load_model(result.path)
    assert again.card.preprocessing == prep and again.card.class_names == ("a", "b", "c")
    assert model.card.class_names == tuple(NAMES)  # the model's own card is unchanged


def test_optimized_models_carry_the_card(run_dir):
    from resnetlab.inference import optimize_for_inference

    model = load_model(run_dir).eval()
    fast = optimize_for_inference(model, precision="fp32")
    assert fast.card == model.card
    assert describe_model(fast) == (model.preprocessing, tuple(NAMES))
