"""Hostile inputs: odd and broken image files, bad configs, untrusted weight files.

The fuzz tests run ``FUZZ_EXAMPLES`` hypothesis cases each and print how many ran.
"""

import io
import logging
import random

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from conftest import random_pixels
from resnetlab import create_model
from resnetlab.config import DataConfig, TrainConfig, load_train_config, parse_override
from resnetlab.data import build_loaders
from resnetlab.data import images as images_mod
from resnetlab.data.errors import ImageDecodeError
from resnetlab.data.images import load_image
from resnetlab.models.weights import WeightsError, load_weights, read_weights

FUZZ_EXAMPLES = 200
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


def noise(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    data = random_pixels(seed, shape)
    return Image.fromarray(data, mode)


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


# ------------------------------------------------------------------ every kind of image


def image_kinds() -> dict[str, tuple[bytes, tuple[int, int]]]:
    """name -> (file bytes, expected (width, height) after decoding)."""
    palette = Image.new("P", (12, 10), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    g16 = Image.fromarray(np.linspace(0, 65535, 120, dtype=np.uint16).reshape(10, 12))
    rgba = Image.new("RGBA", (12, 10), (10, 20, 30, 0))
    return {
        "rgb png": (encoded(noise(12, 10), "PNG"), (12, 10)),
        "grayscale": (encoded(Image.new("L", (12, 10), 100), "PNG"), (12, 10)),
        "gray+alpha": (encoded(Image.new("LA", (12, 10), (100, 50)), "PNG"), (12, 10)),
        "rgba": (encoded(rgba, "PNG"), (12, 10)),
        "palette": (encoded(palette, "PNG"), (12, 10)),
        "palette+transparency": (encoded(palette, "PNG", transparency=0), (12, 10)),
        "1-bit": (encoded(Image.new("1", (12, 10), 1), "PNG"), (12, 10)),
        "cmyk jpeg": (encoded(Image.new("CMYK", (12, 10), (0, 0, 0, 0)), "JPEG"), (12, 10)),
        "16-bit gray": (encoded(g16, "PNG"), (12, 10)),
        "32-bit int tiff": (encoded(g16.convert("I"), "TIFF"), (12, 10)),
        "float tiff": (encoded(g16.convert("F"), "TIFF"), (12, 10)),
        "exif-rotated jpeg": (encoded(noise(12, 10), "JPEG", exif=exif), (10, 12)),
        "webp": (encoded(noise(12, 10), "WEBP", lossless=True), (12, 10)),
        "gif": (encoded(palette, "GIF"), (12, 10)),
        "bmp": (encoded(noise(12, 10), "BMP"), (12, 10)),
        "tiff": (encoded(noise(12, 10), "TIFF"), (12, 10)),
        "tiny 1x1": (encoded(noise(1, 1), "PNG"), (1, 1)),
        "1x40 strip": (encoded(noise(1, 40), "JPEG"), (1, 40)),
    }


@pytest.mark.parametrize("kind", list(image_kinds()))
def test_every_kind_of_image_decodes(tmp_path, kind):
    data, size = image_kinds()[kind]
    path = tmp_path / f"image.{kind.split()[0]}"
    path.write_bytes(data)
    rgb, gray = load_image(path), load_image(path, channels=1)
    assert (rgb.mode, gray.mode, rgb.size, gray.size) == ("RGB", "L", size, size)


def test_image_values_survive_conversion(tmp_path):
    kinds = image_kinds()
    for name in ("16-bit gray", "palette", "webp", "grayscale"):
        (tmp_path / name).write_bytes(kinds[name][0])
    ramp = np.asarray(load_image(tmp_path / "16-bit gray", channels=1))
    assert ramp[0, 0] == 0 and ramp[-1, -1] == 255 and np.all(np.diff(ramp.ravel()) >= 0)
    assert np.asarray(load_image(tmp_path / "palette"))[0, 0].tolist() == [200, 10, 10]
    assert np.array_equal(np.asarray(load_image(tmp_path / "webp")), np.asarray(noise(12, 10)))
    assert np.asarray(load_image(tmp_path / "grayscale"))[0, 0].tolist() == [100] * 3


def test_large_jpeg_decodes_at_reduced_scale(tmp_path, monkeypatch):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (4000, 3000), (30, 120, 200)).save(path, quality=90)
    decoded = []

    def spy(image, mode):
        decoded.append(image.size)
        return convert(image, mode)

    convert = images_mod._convert
    monkeypatch.setattr(images_mod, "_convert", spy)
    image = load_image(path, max_side=256)
    assert image.size == (256, 192) and image.mode == "RGB"
    assert decoded == [(500, 375)]  # decoded at 1/8 scale: 0.56 MB, not 36 MB
    assert np.abs(np.asarray(image).astype(int) - [30, 120, 200]).max() <= 3
    png = tmp_path / "wide.png"
    Image.new("L", (3000, 200), 7).save(png)
    assert load_image(png, max_side=300).size == (300, 20)
    with pytest.raises(ValueError, match="max_side=0"):
        load_image(png, max_side=0)


def test_decompression_bomb_limit_is_kept(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for max_side in (None, 8):
        with pytest.raises(ImageDecodeError, match=r"bomb\.png: refused as a possible decompr"):
            load_image(path, max_side=max_side)


def broken_files() -> dict[str, bytes | None]:
    png, jpeg = encoded(noise(64, 64), "PNG"), encoded(noise(64, 64), "JPEG")
    webp = encoded(noise(64, 64), "WEBP")
    flipped = bytearray(png)
    flipped[20] ^= 0xFF  # inside the IHDR chunk: its CRC no longer matches
    return {
        "empty": b"",
        "truncated png": png[: len(png) // 2],
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "truncated webp": webp[: len(webp) // 2],
        "png signature only": png[:8],
        "corrupt png header": bytes(flipped),
        "random bytes": random.Random(0).randbytes(3000),
        "text file": b"class,label\ncat,1\n",
        "html page": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "directory": None,
    }


@pytest.mark.parametrize("kind", list(broken_files()))
def test_broken_image_is_named_in_a_clear_error(tmp_path, kind):
    data = broken_files()[kind]
    path = tmp_path / "photo.jpg"
    if data is None:
        path.mkdir()
    else:
        path.write_bytes(data)
    with pytest.raises(ImageDecodeError) as err:
        load_image(path)
    assert err.value.path == str(path) and str(path) in str(err.value)
    reasons = ("empty file", "truncated", "not an image", "a directory", "corrupt")
    assert any(r in err.value.reason for r in reasons), err.value.reason


def test_missing_image_file(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"nope\.png: cannot read the file"):
        load_image(tmp_path / "nope.png")


def test_dataset_skips_broken_files_with_a_count_instead_of_crashing_a_worker(tmp_path, caplog):
    root = tmp_path / "pets"
    for k, cls in enumerate(("cat", "dog")):
        for i in range(4):
            for split in ("train", "val"):
                path = root / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                noise(20, 20, 10 * k + i).save(path)
    bad = broken_files()
    bad.pop("directory")
    for name, data in bad.items():
        (root / "val" / "dog" / f"{name.replace(' ', '_')}.jpg").write_bytes(data)

    def val_loader(skip: bool):
        data = DataConfig(f"imagefolder:{root}", batch_size=4, image_size=16, num_workers=1,
                          skip_bad_images=skip)  # fmt: skip
        return build_loaders(data)[1]

    with caplog.at_level(logging.WARNING):
        n = sum(len(labels) for _, labels in val_loader(True))
    assert n == 8
    assert f"skipped {len(bad)} unreadable image(s)" in caplog.text
    with pytest.raises(ImageDecodeError, match=r"cannot decode image .*val/dog/.*\.jpg"):
        for _ in val_loader(False):
            pass


# ----------------------------------------------------------------------------- fuzzing


def report(name: str, cases: int) -> None:
    """Print how many hypothesis cases ``name`` ran, and check that most of them did."""
    print(f"fuzz {name}: {cases} cases")
    assert cases >= FUZZ_EXAMPLES // 2


SAMPLES = {
    fmt: encoded(noise(24, 16, 1), fmt) for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
}


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """Prefixes of ``data`` and copies with a few bytes overwritten."""
    prefix = st.integers(0, len(data)).map(lambda n: data[:n])
    edits = st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), min_size=1,
                     max_size=4)  # fmt: skip

    def apply(pairs):
        out = bytearray(data)
        for i, b in pairs:
            out[i] = b
        return bytes(out)

    return st.one_of(prefix, edits.map(apply))


image_bytes = st.one_of(
    st.binary(max_size=2048), st.sampled_from(list(SAMPLES.values())).flatmap(mutations)
)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow/torch on broken files
def test_fuzz_image_loader_raises_only_image_decode_error(tmp_path):
    cases = 0

    @FUZZ
    @given(data=image_bytes, channels=st.sampled_from([1, 3]),
           max_side=st.sampled_from([None, 8]))  # fmt: skip
    def check(data, channels, max_side):
        nonlocal cases
        cases += 1
        path = tmp_path / "fuzz.img"
        path.write_bytes(data)
        try:
            image = load_image(path, channels, max_side=max_side)
        except ImageDecodeError as e:
            assert str(path) in str(e)
        else:
            assert image.mode == ("L" if channels == 1 else "RGB")

    check()
    report("image loader", cases)


FIELDS = sorted(
    {f for f in TrainConfig().to_dict()}
    | {f"{section}.{f}" for section in ("data", "optim", "schedule")
       for f in TrainConfig().to_dict()[section]}
)  # fmt: skip
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)  # fmt: skip


override_texts = st.one_of(
    st.text(max_size=40),
    st.tuples(st.sampled_from(FIELDS), values).map(
        lambda kv: f"{kv[0]}={yaml.safe_dump(kv[1], default_flow_style=True).strip()}"
    ),
    st.tuples(st.sampled_from(FIELDS), st.text(max_size=12)).map("=".join),
)


def test_fuzz_config_overrides_raise_only_value_error():
    cases = 0

    @FUZZ
    @given(text=override_texts)
    def check(text):
        nonlocal cases
        cases += 1
        try:
            parse_override(text)
            cfg = load_train_config(None, [text])
        except ValueError as e:
            assert str(e)
        else:
            assert isinstance(cfg, TrainConfig)

    check()
    report("config overrides", cases)


config_docs = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), values,
                    max_size=5).map(lambda d: yaml.safe_dump(d).encode()),
    st.text(max_size=200).map(str.encode),
    st.binary(max_size=200),
)  # fmt: skip


def test_fuzz_config_file_raises_only_value_error(tmp_path):
    cases = 0

    @FUZZ
    @given(doc=config_docs)
    def check(doc):
        nonlocal cases
        cases += 1
        path = tmp_path / "fuzz.yaml"
        path.write_bytes(doc)
        try:
            load_train_config(str(path))
        except ValueError as e:
            assert str(e)

    check()
    report("config file", cases)


MODEL = create_model("resnet20", num_classes=4, depth=8)
OWN = {k: v.clone() for k, v in MODEL.state_dict().items()}


def weight_file_bytes(ext: str) -> bytes:
    if ext == ".pt":
        buf = io.BytesIO()
        torch.save({"model": OWN, "step": 1}, buf)
        return buf.getvalue()
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in OWN.items()})


weight_bytes = st.one_of(
    st.binary(max_size=1024),
    st.sampled_from([".pt", ".safetensors"]).map(weight_file_bytes).flatmap(mutations),
)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow/torch on broken files
def test_fuzz_weight_files_raise_only_weights_error(tmp_path):
    cases = 0

    @FUZZ
    @given(ext=st.sampled_from([".pt", ".safetensors", ".pth"]), data=weight_bytes)
    def check(ext, data):
        nonlocal cases
        cases += 1
        path = tmp_path / f"fuzz{ext}"
        path.write_bytes(data)
        try:
            load_weights(create_model("resnet20", num_classes=4, depth=8), path)
        except (WeightsError, ValueError) as e:
            assert str(e)

    check()
    report("weight files", cases)


def tensors_like(shape: tuple[int, ...]) -> st.SearchStrategy[torch.Tensor]:
    shapes = st.one_of(st.just(shape), st.lists(st.integers(0, 3), max_size=4).map(tuple))
    dtypes = st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool])
    return st.tuples(shapes, dtypes).map(lambda sd: torch.zeros(sd[0], dtype=sd[1]))


state_dicts = st.dictionaries(
    st.one_of(
        st.sampled_from(sorted(OWN)),
        st.tuples(st.sampled_from(["module.", "_orig_mod.", "module._orig_mod."]),
                  st.sampled_from(sorted(OWN))).map("".join),
        st.text(max_size=12),
    ),
    st.sampled_from(sorted(OWN)).flatmap(lambda k: tensors_like(tuple(OWN[k].shape))),
    max_size=8,
).map(lambda d: {**(OWN if len(d) % 2 else {}), **d})  # fmt: skip


def test_fuzz_state_dicts_raise_only_weights_error(tmp_path):
    cases = 0

    @FUZZ
    @given(state=state_dicts, ext=st.sampled_from([".pt", ".safetensors"]))
    def check(state, ext):
        nonlocal cases
        cases += 1
        path = tmp_path / f"fuzz{ext}"
        if ext == ".pt":
            torch.save(state, path)
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, path)
        model = create_model("resnet20", num_classes=4, depth=8)
        try:
            loaded = load_weights(model, path)
        except (WeightsError, ValueError) as e:
            assert str(e)
        else:
            assert loaded.complete

    check()
    report("state dicts", cases)


def test_prefixed_state_dicts_load_and_mismatches_name_the_keys(tmp_path):
    for prefix in ("module.", "_orig_mod.", "module._orig_mod."):
        path = tmp_path / "prefixed.safetensors"
        save_file({prefix + k: v.contiguous() for k, v in OWN.items()}, path)
        assert read_weights(path).state_dict.keys() == OWN.keys()
        assert load_weights(create_model("resnet20", num_classes=4, depth=8), path).complete
    bad = dict(OWN, **{"layer1.0.conv1.weight": torch.zeros(16, 16, 1, 1)})
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"layer1\.0\.conv1\.weight: file \(16, 16, 1, 1\) vs "
                       r"model \(16, 16, 3, 3\)"):  # fmt: skip
        load_weights(create_model("resnet20", num_classes=4, depth=8), tmp_path / "bad.pt")


def test_config_errors_name_the_key_and_the_allowed_values(tmp_path):
    cases = {
        "optim.lrr=0.1": r"unknown config key\(s\) optim\.lrr: allowed in optim are .*lr",
        "epochs=three": r"invalid epochs='three': expected an integer",
        "optim.lr=-1": r"invalid optim\.lr=-1\.0: expected a learning rate > 0",
        "optim.weight_decay=.nan": r"optim\.weight_decay=nan: expected a finite number",
        "optim.betas=[0.9]": r"optim\.betas=\(0\.9,\): expected two values in \[0, 1\)",
        "schedule.name=linear": r"schedule\.name='linear': expected one of 'multistep'",
        "precision=fp8": r"precision='fp8': expected one of 'auto', 'fp32'",
        "data.batch_size=0": r"data\.batch_size=0: expected an integer >= 1",
        "threads=0": r"threads=0: expected an integer >= 1",
        "seed=-1": r"seed=-1: expected an integer in \[0, 2\*\*63\)",
        "data=3": r"invalid data=3: expected a mapping",
        "channels_last=maybe": r"channels_last='maybe': expected true or false",
    }
    for text, message in cases.items():
        with pytest.raises(ValueError, match=message):
            load_train_config(None, [text])
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        load_train_config(str(path))
    path.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ValueError, match=r"bad\.yaml must hold a mapping"):
        load_train_config(str(path))
