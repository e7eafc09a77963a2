"""Training configs: numbers as people write them, errors at the config boundary, every key."""

import dataclasses
import json
import re

import pytest

from resnetlab.cli import main
from resnetlab.config import (
    ModelConfig,
    OptimConfig,
    TrainConfig,
    config_keys,
    load_train_config,
    parse_number,
    read_yaml,
)
from resnetlab.errors import ConfigError

# --------------------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize(
    ("text", "lr"),
    [("1e-3", 1e-3), ("1E3", 1e3), ("1_000", 1000.0), (".5", 0.5), ("5.", 5.0),
     ("2.5e-4", 2.5e-4), ("+1e-2", 1e-2), ('"1e-3"', 1e-3)],
)  # fmt: skip
def test_float_fields_take_every_written_number(text, lr):
    cfg = load_train_config(None, [f"optim.lr={text}"])
    assert cfg.optim.lr == lr and isinstance(cfg.optim.lr, float)


def test_negative_and_tuple_numbers():
    cfg = load_train_config(None, ["optim.weight_decay=0", "schedule.milestones=[1e3, 2_000]"])
    assert cfg.schedule.milestones == (1000.0, 2000)
    # a negative exponent-only number is read, then refused by the field's own rule
    with pytest.raises(ConfigError, match=r"optim\.weight_decay=-0\.0002: expected a value >= 0"):
        load_train_config(None, ["optim.weight_decay=-2e-4"])


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", ".inf", "1e400"])
def test_non_finite_numbers_are_refused_with_a_clear_message(text):
    with pytest.raises(ConfigError, match=r"optim\.lr=.*expected a finite number"):
        load_train_config(None, [f"optim.lr={text}"])


@pytest.mark.parametrize(
    ("text", "value"), [("1e3", 1000), ("1E3", 1000), ("1_000", 1000), ("2.0e1", 20), ("010", 10)]
)
def test_int_fields_take_whole_numbers(text, value):
    cfg = load_train_config(None, [f"max_iters={text}", f"seed={text}"])
    assert cfg.max_iters == value and cfg.seed == value and isinstance(cfg.max_iters, int)


@pytest.mark.parametrize("text", ["1.5", "2.5e0", "1e-3", "inf", "abc"])
def test_int_fields_refuse_fractions(text):
    with pytest.raises(ConfigError, match=r"invalid max_iters=.*expected an integer"):
        load_train_config(None, [f"max_iters={text}"])


def test_yaml_files_read_numbers_as_written(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text(
        "optim: {lr: 1e-3, weight_decay: 5E-4}\nmax_iters: 1e3\nseed: 010\n"
        "schedule: {name: multistep, milestones: [5e2, 8e2], milestone_unit: iter}\n"
        "model_args: {drop_path_rate: 1e-1}\n"
    )
    cfg = load_train_config(str(path))
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-3, 5e-4)
    assert cfg.max_iters == 1000 and cfg.seed == 10  # YAML 1.1 would read 010 as octal 8
    assert cfg.schedule.milestones == (500.0, 800.0)
    assert cfg.model_args == {"drop_path_rate": 0.1}


def test_read_yaml_numbers_and_parse_number():
    # YAML 1.2's integers; 1e-3 stays text for the field to read (a string field keeps it).
    assert read_yaml("[010, 0x10, 1_000, -3, .5, 5., 1.0e-3, .inf, true, 1:30, 1e-3]") == [
        10, 16, 1000, -3, 0.5, 5.0, 1e-3, float("inf"), True, "1:30", "1e-3"]  # fmt: skip
    assert load_train_config(None, ["output=1e3"]).output == "1e3"
    assert parse_number("1_000") == 1000 and parse_number("-2e-4") == -2e-4
    assert parse_number("1e3") == 1000.0 and parse_number("1.2.3") is None
    assert parse_number("1__0") is None and parse_number("e3") is None


def test_python_construction_coerces_too():
    assert OptimConfig(lr="1e-3").lr == 1e-3
    cfg = ModelConfig(layers=[1.0, 2, 2, 2], stem_width=16.0)
    assert cfg.layers == (1, 2, 2, 2) and cfg.stem_width == 16 and isinstance(cfg.stem_width, int)
    with pytest.raises(ConfigError, match=r"invalid drop_path_rate='abc': expected a number"):
        ModelConfig(drop_path_rate="abc")


# --------------------------------------------------------------------------------------
# Errors at the config boundary


def test_config_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"is a directory: expected a YAML file"):
        load_train_config(str(tmp_path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model_args.num_classes=5", r"model_args\.num_classes=5: the classifier's size comes "
                                     r"from the data"),
        ("model_args.drop_path_rate=abc", r"model_args\.drop_path_rate='abc': expected a number"),
        ("model_args.drop_path_rate=1.5", r"model_args\.drop_path_rate=1\.5: expected a "
                                          r"probability in \[0, 1\)"),
        ("model_args.foo=1", r"unknown model option model_args\.foo: allowed are base_width, "
                             r"block, depth, drop_path_rate"),
        ("model_args.block=weird", r"model_args\.block='weird': expected one of 'basic'"),
        ("model_args.depth=0", r"model_args\.depth=0: expected an integer >= 1"),
        ("model_args.weights=x", r"model_args\.weights='x': give pretrained weights as "
                                 r"weights=SOURCE"),
    ],
)  # fmt: skip
def test_model_args_are_checked_at_the_config_boundary(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, [override])


def test_model_args_are_coerced():
    cfg = load_train_config(None, ["model_args={depth: 8, drop_path_rate: '5e-2', layers: [1, 1]}"])
    assert cfg.model_args == {"depth": 8, "drop_path_rate": 0.05, "layers": (1, 1)}
    assert cfg.to_dict()["model_args"]["layers"] == [1, 1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "{tmp}"], "is a directory"),
        (["model_args.num_classes=5"], "model_args.num_classes=5"),
        (["model_args.drop_path_rate=abc"], "model_args.drop_path_rate='abc'"),
        (["model_args.nope=1"], "unknown model option model_args.nope"),
    ],
)
def test_cli_config_errors_are_one_line(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = main(["train", "--model", "resnet8_pool", "--data", "synthetic:n=64,size=16",
                 "--max-iters", "1", "--output", str(tmp_path / "run"), "--quiet", *args])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()  # refused before anything was written


# --------------------------------------------------------------------------------------
# Every key


def _field_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory if callable(f.default_factory) else None):
            keys += _field_keys(f.default_factory, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def test_config_keys_list_every_field_with_type_default_and_choices():
    rows = {r["key"]: r for r in config_keys()}
    assert set(_field_keys(TrainConfig)) <= set(rows)
    model_keys = {f"model_args.{f.name}" for f in dataclasses.fields(ModelConfig)}
    assert model_keys - {"model_args.num_classes"} <= set(rows)
    assert "model_args.num_classes" not in rows and "model_args.depth" in rows
    assert rows["precision"]["allowed"] == "auto, fp32, bf16, fp16"
    assert rows["optim.lr"] == dict(key="optim.lr", type="float", default="0.1",
                                    allowed="a learning rate > 0")  # fmt: skip
    assert rows["max_iters"]["type"] == "int or null" and rows["max_iters"]["default"] == "null"
    assert rows["optim.betas"]["default"] == "[0.9, 0.999]"
    assert rows["model_args.block"]["allowed"].startswith("basic, bottleneck")
    assert rows["channels_last"]["allowed"] == "true, false"
    assert [r["key"] for r in config_keys("schedule.*")][0] == "schedule.name"


def test_cli_config_command(capsys):
    assert main(["config", "optim.*"]) == 0
    out = capsys.readouterr().out
    assert "| optim.lr " in out and "a learning rate > 0" in out and "sgd, adamw" in out
    assert "epochs" not in out
    assert main(["config", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"key": "epochs", "type": "int", "default": "10", "allowed": "an integer >= 1"} in rows
    assert main(["config", "nothing.*"]) == 2
    assert "no config key matches" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "resnetlab config" in capsys.readouterr().out


@pytest.mark.parametrize("text, key", [("?", "None"), ("1: 2", "1"), ("optim: {3: x}", "optim.3")])
def test_config_file_keys_that_are_not_text_are_named(tmp_path, text, key):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"unknown config key\(s\) {re.escape(key)}:"):
        load_train_config(str(path))


# --------------------------------------------------------------------------------------
# Layers merged by OmegaConf onto the structured config


def test_layers_merge_in_order_and_sections_merge_key_by_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 4\noptim: {lr: 0.2, momentum: 0.8}\nmodel_args: {block: basic}\n")
    cfg = load_train_config(
        str(path), ["optim.lr=0.05", "model_args.stem_width=8"], epochs=6, optim={"nesterov": True}
    )
    assert cfg.epochs == 6  # a flag over the file
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov) == (0.05, 0.8, True)
    assert cfg.model_args == {"block": "basic", "stem_width": 8}
    assert isinstance(cfg.optim, OptimConfig) and isinstance(cfg.optim.betas, tuple)


def test_interpolations_resolve_and_are_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: resnet32\noutput: runs/${model}\n"
        "data: {batch_size: 64, eval_batch_size: '${data.batch_size}'}\n"
    )
    cfg = load_train_config(str(path))
    assert (cfg.output, cfg.data.eval_batch_size) == ("runs/resnet32", 64)
    with pytest.raises(ConfigError, match=r"invalid data\.eval_batch_size: .*'nope' not found"):
        load_train_config(str(path), ["data.eval_batch_size=${nope}"])
    with pytest.raises(ConfigError, match=r"invalid epochs: .*'\$\{model\}'"):
        load_train_config(str(path), ["epochs=${model}"])
    # An interpolated value meets the field's own check too.
    with pytest.raises(ConfigError, match=r"invalid epochs=0: expected an integer >= 1"):
        load_train_config(str(path), ["data.num_workers=0", "epochs=${data.num_workers}"])


def test_unknown_keys_suggest_the_nearest():
    with pytest.raises(ConfigError, match=r"optim\.lrr: .* \(did you mean optim\.lr\?\)"):
        load_train_config(None, ["optim.lrr=1"])


def test_a_field_type_without_a_reading_is_a_programming_error():
    from resnetlab.config import build_config

    @dataclasses.dataclass(frozen=True)
    class Odd:
        values: list = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="have no reading"):
        build_config(Odd, {"values": [1]})


@pytest.mark.parametrize("amx", [True, False])
def test_if_bf16_follows_the_precision_the_run_trains_in(amx, monkeypatch, tmp_path):
    import resnetlab.device

    monkeypatch.setattr(resnetlab.device, "cpu_bf16_is_fast", lambda: amx)
    preset = "configs/fashion_mnist_fast.yaml"
    widths = lambda *o: load_train_config(preset, list(o), device="cpu").model_args  # noqa: E731
    fp32 = {"widths": (24, 48, 96), "stem_width": 24}
    bf16 = {"widths": (32, 64, 128), "stem_width": 32}
    assert widths() == (bf16 if amx else fp32)  # auto: bf16 only where the CPU has AMX
    assert widths("precision=fp32") == fp32 and widths("precision=bf16") == bf16
    assert widths("model_args.widths=[16,32,64]")["widths"] == (16, 32, 64)  # overridable
    p = tmp_path / "p.yaml"
    p.write_text("epochs: '${if_bf16:2,3}'\n")
    assert load_train_config(str(p), ["precision=bf16"]).epochs == 3
    assert load_train_config(str(p), ["precision=fp32"]).epochs == 2
    # detection keeps fp32 under auto on a CPU (config.AUTO_FP32_ON_CPU): so does its A branch
    assert load_train_config(str(p), ["task=detection"], device="cpu").epochs == 2
    assert load_train_config(str(p), ["task=detection", "precision=bf16"]).epochs == 3
    p.write_text("epochs: '${if_bf16:2}'\n")  # one value where two are needed
    with pytest.raises(ConfigError, match=r"invalid epochs.*if_bf16"):
        load_train_config(str(p))
