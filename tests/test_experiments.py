"""The paper experiments on tiny data: their files, their claim checks, and the CLI."""

import json
import subprocess
import sys

import pytest
import torch

from resnetlab.cli import main
from resnetlab.experiments import (
    ExperimentError,
    cardinality_variants,
    check_cardinality,
    check_degradation,
    conv_gradient_norms,
    resolve_model,
    run_cardinality,
    run_degradation,
    run_gradients,
    spread,
    train_tracked,
)
from resnetlab.experiments.gradients import main_path_convs, step_memory
from resnetlab.models import create_model
from resnetlab.models.summary import figure_matches, paper_table

TINY = "synthetic:n=256,test=64,size=16,classes=4,channels=1"
TINY10 = "synthetic:n=512,test=64,size=16,classes=10,channels=1"
PNG = b"\x89PNG\r\n\x1a\n"


def fake(errors: dict[str, float]) -> dict[str, dict]:
    return {k: {"train_error": v, "test_error": v, "curve": []} for k, v in errors.items()}


# --------------------------------------------------------------------------------------
# Degradation


def test_claim_check_held():
    claim = check_degradation(
        fake({"plain20": 0.05, "plain56": 0.09, "resnet20": 0.05, "resnet56": 0.03}),
        num_classes=10,
        sample_size=10000,
    )
    assert claim["held"] and claim["plain_degrades"] and claim["residual_no_degradation"]
    assert claim["verdict"] == "held" and not claim["reasons"]
    assert (claim["shallow"], claim["deep"]) == (20, 56)
    assert all(line.startswith("✓") for line in claim["lines"])


def test_claim_check_not_held_both_ways():
    # The deeper plain net trains better: the first half fails.
    claim = check_degradation(
        fake({"plain20": 0.09, "plain56": 0.05, "resnet20": 0.05, "resnet56": 0.03})
    )
    assert not claim["held"] and not claim["plain_degrades"] and claim["residual_no_degradation"]
    # The deeper residual net trains worse beyond the tolerance: the second half fails...
    results = fake({"plain20": 0.05, "plain56": 0.09, "resnet20": 0.05, "resnet56": 0.07})
    claim = check_degradation(results, tolerance=0.01)
    assert not claim["held"] and claim["plain_degrades"] and not claim["residual_no_degradation"]
    assert claim["lines"][1].startswith("✗")
    # ... but within a looser tolerance it holds.
    assert check_degradation(results, tolerance=0.03)["held"]


def test_claim_check_inconclusive_at_chance():
    # 20 iterations on 10 classes: every net still guesses (~90% error). The deeper plain
    # net's error is higher and the deeper ResNet's lower, as the paper says, but by chance.
    errors = {"plain20": 0.88, "plain56": 0.91, "resnet20": 0.89, "resnet56": 0.885}
    claim = check_degradation(fake(errors), num_classes=10, sample_size=10000)
    assert claim["plain_degrades"] and claim["residual_no_degradation"]  # the raw comparison
    assert not claim["held"] and claim["verdict"] == "inconclusive"
    assert claim["plain_status"] == claim["residual_status"] == "inconclusive"
    assert len(claim["reasons"]) == 2 and all("at chance" in r for r in claim["reasons"])
    assert all(line.startswith("? ") for line in claim["lines"])
    # Without the class count the check cannot tell: the old verdict.
    assert check_degradation(fake(errors))["verdict"] == "held"


def test_claim_check_inconclusive_within_noise():
    errors = {"plain20": 0.200, "plain56": 0.205, "resnet20": 0.15, "resnet56": 0.14}
    claim = check_degradation(fake(errors), num_classes=10, sample_size=2000)
    assert claim["plain_status"] == "inconclusive" and claim["residual_status"] == "held"
    assert claim["verdict"] == "inconclusive" and not claim["held"]
    assert "two standard errors of the 2000-image sample" in claim["reasons"][0]
    assert check_degradation(fake(errors), sample_size=200_000)["verdict"] == "held"
    # The deeper ResNet 2 points worse: 1 point beyond the tolerance, within the noise of
    # 2000 images (inconclusive), beyond that of 200,000 (did not hold).
    errors = {"plain20": 0.05, "plain56": 0.09, "resnet20": 0.05, "resnet56": 0.07}
    claim = check_degradation(fake(errors), sample_size=2000)
    assert claim["residual_status"] == "inconclusive" and claim["plain_status"] == "held"
    claim = check_degradation(fake(errors), sample_size=200_000)
    assert claim["residual_status"] == "did not hold" and claim["verdict"] == "held only in part"


def test_degradation_report_says_inconclusive_at_chance(tmp_path):
    # A learning rate too small to learn anything: every net stays at chance.
    result = run_degradation(tmp_path, dataset=TINY10, depths=(8, 14), iters=2, lr=1e-9,
                             batch_size=32, train_eval_size=256, progress=False)  # fmt: skip
    assert result["claim"]["verdict"] == "inconclusive" and not result["claim"]["held"]
    report = (tmp_path / "report.md").read_text()
    assert "**Inconclusive** on this run: " in report and "at chance" in report
    assert "claim held" not in report and "Inconclusive on this run" in result["summary"]
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["claim"]["verdict"] == "inconclusive"


def test_claim_check_needs_both_depths():
    with pytest.raises(ValueError, match="resnet56"):
        check_degradation(fake({"plain20": 0.1, "plain56": 0.2, "resnet20": 0.1}), (20, 56))
    with pytest.raises(ValueError, match="at least two"):
        check_degradation(fake({"plain20": 0.1, "resnet20": 0.1}))


def test_degradation_writes_results_figure_report(tmp_path):
    out = tmp_path / "deg"
    kwargs = dict(dataset=TINY, depths=(8, 14), iters=4, eval_every=2, batch_size=32,
                  train_eval_size=64, progress=False)  # fmt: skip
    result = run_degradation(out, **kwargs)
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"plain8", "plain14", "resnet8", "resnet14"}
    for entry in results.values():
        assert 0.0 <= entry["train_error"] <= 1.0 and 0.0 <= entry["test_error"] <= 1.0
        assert [p["iter"] for p in entry["curve"]] == [0, 2, 4]
        assert entry["curve"][-1]["train_error"] == entry["train_error"]
        assert entry["complete"] and len(entry["losses"]) == 4
    assert (out / "degradation.png").read_bytes().startswith(PNG)
    report = (out / "report.md").read_text()
    assert "## The claim" in report and "plain-14" in report and "degradation.png" in report
    assert result["claim"]["held"] in (True, False) and "plain8" in result["summary"]

    # The same settings again: finished nets are kept, not retrained.
    again = run_degradation(out, **kwargs)
    assert again["results"]["plain8"]["curve"] == results["plain8"]["curve"]
    # Other settings: refused unless overwrite.
    with pytest.raises(ExperimentError, match="other settings.*iters"):
        run_degradation(out, **{**kwargs, "iters": 2})
    run_degradation(out, **{**kwargs, "iters": 2, "eval_every": 0}, overwrite=True)
    assert [
        p["iter"] for p in json.loads((out / "results.json").read_text())["plain8"]["curve"]
    ] == [2]


def test_degradation_zero_init_changes_only_the_residual_nets(tmp_path):
    kwargs = dict(dataset=TINY, depths=(8, 14), iters=1, batch_size=32, train_eval_size=64,
                  progress=False)  # fmt: skip
    off = run_degradation(tmp_path / "off", zero_init=False, **kwargs)["results"]
    on = run_degradation(tmp_path / "on", zero_init=True, **kwargs)["results"]
    # Same seed and data: a plain net has no branch to zero, a residual net starts elsewhere.
    assert on["plain14"]["losses"] == off["plain14"]["losses"]
    assert on["resnet14"]["losses"] != off["resnet14"]["losses"]
    settings = json.loads((tmp_path / "on" / "settings.json").read_text())["settings"]
    assert settings["zero_init_last"] is True
    assert "zero-initialised" in (tmp_path / "on" / "report.md").read_text()
    assert "no zero-init" in (tmp_path / "off" / "report.md").read_text()


def test_degradation_bad_input(tmp_path):
    with pytest.raises(ValueError, match="6n\\+2"):
        run_degradation(tmp_path, dataset=TINY, depths=(8, 15), iters=1, progress=False)
    with pytest.raises(ValueError, match="at least two depths"):
        run_degradation(tmp_path, dataset=TINY, depths=(8,), iters=1, progress=False)
    with pytest.raises(ValueError, match="unknown dataset"):
        run_degradation(tmp_path, dataset="fashion", depths=(8, 14), iters=1, progress=False)


# --------------------------------------------------------------------------------------
# Gradients


def test_resolve_model_names():
    assert resolve_model("resnet56").depth == 56
    v2 = resolve_model("resnet56_v2")
    assert v2.depth == 56 and v2.is_preact
    assert resolve_model("plain38").shortcut == "none"
    with pytest.raises(ValueError, match="did you mean"):
        resolve_model("resnt56")
    with pytest.raises(ValueError, match="6n\\+2"):
        resolve_model("plain57")


def _norms(name: str, seed: int) -> list[float]:
    torch.manual_seed(seed)
    model = create_model(resolve_model(name), num_classes=4, in_chans=1, zero_init_last=False)
    g = torch.Generator().manual_seed(100 + seed)
    images, labels = (
        torch.randn(32, 1, 16, 16, generator=g),
        torch.randint(0, 4, (32,), generator=g),
    )
    return conv_gradient_norms(model, images, labels)["grad_norm"]


@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_flow_plain_vs_residual(seed):
    plain, resnet, v2 = (_norms(n, seed) for n in ("plain56", "resnet56", "resnet56_v2"))
    # One norm per main-path conv: the stem and two per basic block (shortcuts left out).
    assert len(plain) == len(resnet) == len(v2) == 55
    assert all(x > 0 and x == x and x < float("inf") for x in plain + resnet + v2)
    # With BN, a plain net's gradient does not vanish towards the input: it is amplified
    # layer after layer (first conv ~100x its residual twin's), while identity shortcuts
    # keep every layer's gradient within about an order of magnitude of the others.
    assert plain[0] > 10 * resnet[0]
    assert spread(plain)["first_over_last"] > 100
    assert spread(resnet)["max_over_min"] < 30 and spread(v2)["max_over_min"] < 100
    assert spread(plain)["first_over_last"] > 10 * spread(resnet)["first_over_last"]


def test_main_path_leaves_out_projections():
    model = create_model(resolve_model("resnet20_v2"))  # projection shortcuts (option B)
    names = [n for n, _ in main_path_convs(model)]
    assert len(names) == 19 and not any("downsample" in n for n in names)


def test_gradients_experiment_files(tmp_path):
    out = tmp_path / "grad"
    result = run_gradients(
        out, dataset=TINY, models=("plain8", "resnet8"), steps=2, batch_size=32, probe_size=32,
        deep_models=("resnet14",), deep_steps=3, deep_batch_size=8, deep_train_size=64,
        memory=False, progress=False,
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert set(results["flow"]) == {"plain8", "resnet8"}
    flow = results["flow"]["plain8"]
    assert len(flow["init"]["grad_norm"]) == len(flow["after"]["grad_norm"]) == 7
    deep = results["deep"]["resnet14"]
    assert len(deep["losses"]) == 3 and deep["layers"] == 14
    # the probe hook: the gradient norms of the training batches, at every step
    during = flow["during"]
    assert len(during["first"]) == len(during["last"]) == len(during["max_over_min"]) == 2
    assert all(x > 0 for x in during["first"] + during["last"])
    for name in ("gradients.png", "deep.png"):
        assert (out / name).read_bytes().startswith(PNG)
    assert "## What it shows" in (out / "report.md").read_text()
    assert "plain8" in result["summary"]


def test_gradients_deep_nets_only(tmp_path):
    out = tmp_path / "deep"
    result = run_gradients(
        out, dataset=TINY, models=(), deep_models=("resnet14",), deep_steps=2, deep_batch_size=8,
        deep_train_size=32, memory=False, progress=False,
    )  # fmt: skip
    assert set(result["results"]["deep"]) == {"resnet14"} and not result["results"]["flow"]
    assert (out / "deep.png").exists() and not (out / "gradients.png").exists()
    report = (out / "report.md").read_text()
    assert report.startswith("# More than 1000 layers") and "## What it shows" not in report
    with pytest.raises(ValueError, match="nothing to run"):
        run_gradients(tmp_path / "none", dataset=TINY, models=(), deep_models=())


@pytest.mark.slow
def test_checkpointing_saves_step_memory():
    kwargs = dict(batch_size=32, image_size=16, in_chans=1, num_classes=4,
                  device=torch.device("cpu"))  # fmt: skip
    without = step_memory("resnet110", checkpointing=False, **kwargs)
    with_ = step_memory("resnet110", checkpointing=True, **kwargs)
    assert without["saved_tensors_mb"] > 20
    assert with_["step_mb"] < 0.8 * without["step_mb"]


# --------------------------------------------------------------------------------------
# Cardinality


def test_matched_macs_variants():
    variants = cardinality_variants((1, 16, 16), depths=(11,), cardinalities=(2, 4))
    roles = {v["key"]: v["role"] for v in variants}
    assert roles["resnet29_1x16d"] == "baseline"
    assert {r for r in roles.values()} == {"baseline", "shallower", "cardinality"}
    assert sorted(v["config"].groups for v in variants) == [1, 1, 2, 4]
    assert all(abs(v["macs_diff"]) < 0.03 for v in variants)


def test_cardinality_check_both_ways():
    def entry(groups, err, role="cardinality"):
        return dict(groups=groups, test_error=err, label=f"C={groups}", role=role,
                    test_n=10000, complete=True)  # fmt: skip

    results = {"a": entry(1, 0.10, "baseline"), "b": entry(2, 0.08), "c": entry(4, 0.09)}
    claim = check_cardinality(results)
    assert claim["held"] and claim["significant"] and claim["best_resnext"] == "b"
    assert claim["ranking"] == ["b", "c", "a"]
    assert claim["equal_depth"] is None and len(claim["lines"]) == 1  # a is the baseline
    results["a"]["test_error"] = 0.0795  # C=1 best, by less than the noise
    claim = check_cardinality(results)
    assert not claim["held"] and not claim["significant"]
    # A shallower C=1 net best overall; the best C>1 net still beats its own depth's C=1 net.
    results["a"]["test_error"] = 0.10
    results["s"] = entry(1, 0.079, "shallower")
    claim = check_cardinality(results)
    assert not claim["held"] and claim["best_resnet"] == "s"
    assert claim["equal_depth"]["held"] and claim["equal_depth"]["significant"]
    # 0.1 points apart on 10,000 images: neither held nor refuted.
    assert claim["verdict"] == "inconclusive" and "two standard errors" in claim["reasons"][0]
    assert claim["lines"][0].startswith("? ") and "(inconclusive;" in claim["lines"][0]
    assert claim["lines"][1].startswith("✓ at equal depth")
    # A C=1 net better by far more than the noise: the claim did not hold.
    results["s"]["test_error"] = 0.05
    claim = check_cardinality(results)
    assert claim["verdict"] == "did not hold" and claim["lines"][0].startswith("✗")


def test_cardinality_check_inconclusive_at_chance():
    def entry(groups, err, role="cardinality"):
        return dict(groups=groups, test_error=err, label=f"C={groups}", role=role,
                    test_n=10000, complete=True, config={"num_classes": 4})  # fmt: skip

    # 3 points apart, well beyond the noise of 10,000 images, but both guess (chance: 75%).
    results = {"a": entry(1, 0.74, "baseline"), "b": entry(2, 0.71)}
    claim = check_cardinality(results)
    assert claim["significant"] and not claim["held"] and claim["verdict"] == "inconclusive"
    assert "at chance" in claim["reasons"][0] and "25.0% on 4 classes" in claim["reasons"][0]
    # The same margin once the nets have learned something holds.
    results["a"]["test_error"], results["b"]["test_error"] = 0.30, 0.27
    assert check_cardinality(results)["verdict"] == "held"


def test_cardinality_experiment_files(tmp_path):
    out = tmp_path / "card"
    run_cardinality(out, dataset=TINY, depths=(11,), cardinalities=(2,), iters=2, eval_every=1,
                    batch_size=32, train_eval_size=64, progress=False)  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"resnet11_1x31d", "resnet29_1x16d", "resnext29_2x10d"}
    assert all(len(r["curve"]) == 3 and abs(r["macs_diff"]) < 0.03 for r in results.values())
    assert (out / "cardinality.png").read_bytes().startswith(PNG)
    report = (out / "report.md").read_text()
    assert "ResNeXt-29 2×10d" in report and "69,632" in report  # the paper's ~70k block


# --------------------------------------------------------------------------------------
# Training through the engine: its step, precision, clipping; divergence; the configs


def _tiny_data():
    from resnetlab.experiments.common import subset_data

    return subset_data(TINY, batch_size=32, train_eval_size=64)


def _tiny_net(data):
    from resnetlab.experiments.common import build

    torch.manual_seed(0)
    return build(resolve_model("plain8"), data.info)


def test_tracked_training_steps_through_the_engine(monkeypatch):
    from resnetlab.engine import trainer
    from resnetlab.engine.hooks import Hook
    from resnetlab.experiments.common import Recipe

    calls = []
    step = trainer.train_step

    def counted(job, st, images, targets):
        calls.append(job.precision.name)
        return step(job, st, images, targets)

    class Seen(Hook):
        def __init__(self):
            self.dtypes, self.backward = [], 0

        def after_backward(self, job, st):
            self.backward += 1

        def after_step(self, job, st):
            self.dtypes.append(st.last.output.dtype)

    monkeypatch.setattr(trainer, "train_step", counted)
    data, seen = _tiny_data(), Seen()
    run = train_tracked(_tiny_net(data), data, Recipe(iters=3, eval_every=2, precision="bf16"),
                        device=torch.device("cpu"), progress=False, hooks=[seen])  # fmt: skip
    # every step is the engine's, under its autocast, with the hooks around it
    assert calls == ["bf16"] * 3 and seen.backward == 3
    assert seen.dtypes == [torch.bfloat16] * 3
    assert [p["iter"] for p in run["curve"]] == [0, 2, 3] and len(run["losses"]) == 3
    assert run["iters"] == 3 and run["diverged_at"] is None


def test_tracked_training_clips_gradients():
    from resnetlab.experiments.common import Recipe

    data = _tiny_data()

    def moved(grad_clip):
        model = _tiny_net(data)
        before = [p.detach().clone() for p in model.parameters()]
        recipe = Recipe(iters=3, weight_decay=0.0, milestones=(), grad_clip=grad_clip)
        train_tracked(model, data, recipe, device=torch.device("cpu"), progress=False)
        return sum(
            (p.detach() - b).norm().item() for p, b in zip(model.parameters(), before, strict=True)
        )

    # lr 0.1 on gradients of global norm at most 1e-6: the weights all but stay put
    assert moved(1e-6) < 1e-5 < 1e-2 < moved(0.0)


def test_divergence_is_reported_not_raised():
    from resnetlab.experiments.common import Recipe

    data = _tiny_data()
    run = train_tracked(_tiny_net(data), data, Recipe(iters=6, lr=1e8, milestones=()),
                        device=torch.device("cpu"), progress=False)  # fmt: skip
    assert run["diverged_at"] is not None and run["diverged_at"] < 6
    assert run["iters"] == run["diverged_at"] == len(run["losses"])
    assert run["curve"][-1]["iter"] == run["diverged_at"]


def test_experiment_configs_presets_and_checks():
    from resnetlab.errors import ConfigError
    from resnetlab.experiments import (
        CardinalityConfig,
        DegradationConfig,
        GradientsConfig,
        experiment_fields,
    )

    # the presets: the paper's setting by default, the quick one declared beside it
    full, quick = DegradationConfig(), DegradationConfig.resolve(quick=True)
    assert (full.iters, full.train_size, full.train_eval_size, full.zero_init) == (
        64000, None, 10000, False)  # fmt: skip
    assert (quick.iters, quick.train_size, quick.train_eval_size, quick.test_size,
            quick.eval_every, quick.zero_init) == (200, 10000, 2000, 1000, 40, True)  # fmt: skip
    assert quick.setting_name == "Quick setting" and full.setting_name == "Full setting"
    assert GradientsConfig.resolve(quick=True).steps == 50 and GradientsConfig().steps == 200
    assert CardinalityConfig.resolve(quick=True).iters == 60
    # keyword values, then KEY=VALUE overrides (YAML: null is None)
    cfg = DegradationConfig.resolve(quick=True, iters=5, overrides=["iters=7", "train_size=null",
                                                                    "depths=[56, 20, 20]"])  # fmt: skip
    assert (cfg.iters, cfg.train_size, cfg.depths) == (7, None, (20, 56))
    assert cfg.setting_name == "Quick setting with iters, train_size changed"
    assert DegradationConfig.resolve(overrides=["quick=true"]).iters == 200
    with pytest.raises(ConfigError, match=r"invalid iters=0: expected a positive number"):
        DegradationConfig(iters=0)
    with pytest.raises(ConfigError, match="invalid precision='fp8': expected one of"):
        DegradationConfig.resolve(overrides=["precision=fp8"])
    with pytest.raises(ConfigError, match="unknown config key.*itres"):
        DegradationConfig.resolve(itres=3)
    with pytest.raises(ValueError, match="9n\\+2"):
        CardinalityConfig(depths=(21,))
    rows = {r["key"]: r for r in experiment_fields("degradation")}
    assert rows["iters"]["default"] == "64000" and rows["iters"]["quick"] == "200"
    assert rows["precision"]["allowed"] == "auto, fp32, bf16, fp16"


def test_degradation_overrides_and_precision(tmp_path):
    from resnetlab.experiments import run_experiment

    out = tmp_path / "bf16"
    overrides = [f"dataset={TINY}", "depths=[8, 14]", "iters=2", "batch_size=32",
                 "train_eval_size=64", "precision=bf16"]  # fmt: skip
    result = run_experiment("degradation", output=out, overrides=overrides, progress=False)
    settings = json.loads((out / "settings.json").read_text())["settings"]
    assert settings["precision"] == "bf16" and settings["iters"] == 2
    assert "bf16 autocast" in (out / "report.md").read_text()
    fp32 = run_degradation(tmp_path / "fp32", dataset=TINY, depths=(8, 14), iters=2,
                           batch_size=32, train_eval_size=64, progress=False)  # fmt: skip
    assert "precision" not in json.loads((tmp_path / "fp32" / "settings.json").read_text())[
        "settings"]  # fmt: skip
    assert result["results"]["plain8"]["losses"] != fp32["results"]["plain8"]["losses"]
    with pytest.raises(ExperimentError, match="other settings.*precision"):
        run_experiment("degradation", output=out, overrides=overrides[:-1], progress=False)


# --------------------------------------------------------------------------------------
# Published figures and the command line


def test_figure_matching_rules():
    assert figure_matches(10_178_480, 10.2e6, exact=False, quantity="weights")
    assert not figure_matches(10_327_706, 10.2e6, exact=False, quantity="params")
    assert figure_matches(4.0890, 4.089, exact=False, quantity="gmacs")
    assert not figure_matches(3.664, 3.6, exact=False, quantity="gmacs")
    assert figure_matches(269_722, 269_722, exact=True, quantity="params")
    assert not figure_matches(269_723, 269_722, exact=True, quantity="params")


def test_paper_table_marks_known_mismatch():
    rows = {(r["model"], r["quantity"]): r for r in paper_table("resnet1001_v2")}
    assert rows[("resnet1001_v2", "params")]["mark"] == "✗ +1.3%"
    assert rows[("resnet1001_v2", "weights")]["mark"] == "✓"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "resnetlab", *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_cli_experiment_subprocess(tmp_path):
    proc = run_cli("experiment", "degradation", "--dataset", TINY, "--depths", "8", "14",
                   "--iters", "2", "--eval-every", "1", "--batch-size", "32", "--quiet",
                   "--quick", "--no-zero-init", "--output", str(tmp_path / "d"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    settings = json.loads((tmp_path / "d" / "settings.json").read_text())["settings"]
    assert settings["zero_init_last"] is False and "zero_init" in settings["setting"]
    assert "plain14" in proc.stdout and "report:" in proc.stdout
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert [p["iter"] for p in results["resnet14"]["curve"]] == [0, 1, 2]


def test_cli_bad_input_and_help(tmp_path, capsys):
    assert main(["experiment", "degradation", "--depths", "20", "57", "--output",
                 str(tmp_path / "bad")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "6n+2" in err and err.strip().count("\n") == 0
    assert main(["experiment", "gradients", "--models", "resnt56"]) == 2
    assert "did you mean resnet56" in capsys.readouterr().err
    assert main(["experiment", "gradients", "--models", "--deep-models"]) == 2
    assert "nothing to run" in capsys.readouterr().err
    for sub in ("degradation", "gradients", "cardinality"):
        with pytest.raises(SystemExit):
            main(["experiment", sub, "--help"])
        out = capsys.readouterr().out
        assert "examples:" in out
        # every setting listed, with its default, quick value and what it allows
        assert "settings (KEY=VALUE" in out and "precision        fp32" in out
    assert main(["experiment", "degradation", "iters=0", "--output", str(tmp_path / "z")]) == 2
    assert "invalid iters=0: expected a positive number of iterations" in capsys.readouterr().err


def test_cli_experiment_key_value_settings(tmp_path, capsys):
    out = tmp_path / "kv"
    assert main(["experiment", "degradation", "--depths", "8", "14", "iters=2",
                 f"dataset={TINY}", "--batch-size", "32", "eval_every=1", "--quiet",
                 "train_eval_size=64", "--output", str(out)]) == 0  # fmt: skip
    settings = json.loads((out / "settings.json").read_text())["settings"]
    assert (settings["depths"], settings["iters"], settings["eval_every"]) == ([8, 14], 2, 1)
    assert "plain14" in capsys.readouterr().out


def test_cli_models_paper(capsys):
    assert main(["models", "--paper", "resnet34"]) == 0
    out = capsys.readouterr().out
    # The 2015 paper's 3.6 GFLOPs for ResNet-34 is 3.664 GMACs measured (torchvision's too).
    assert "✗ +1.8%" in out and "✓" in out and "mismatches: resnet34 GMACs" in out
    assert main(["models", "--paper", "resnet20", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(r["match"] for r in rows)
    assert main(["models", "resnet20"]) == 0  # without --paper: the usual table
    assert "| 270K " in capsys.readouterr().out
