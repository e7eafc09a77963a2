"""The training engine end to end on tiny data: train, checkpoint, resume, evaluate."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from resnetlab.config import ScheduleConfig, load_train_config
from resnetlab.engine import TrainingError, train
from resnetlab.engine.checkpoint import list_checkpoints, load_checkpoint
from resnetlab.engine.optim import lr_factor
from resnetlab.models import create_model, load_model

TINY = {"model": "resnet20", "model_args": {"depth": 8},
        "data": {"spec": "synthetic:n=256,test=64,size=16,classes=4", "batch_size": 32},
        "optim": {"lr": 0.05}, "precision": "fp32"}  # fmt: skip


def tiny(tmp_path, name="run", **changes):
    cfg = {**TINY, "output": str(tmp_path / name), **changes}
    return cfg


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "resnetlab", *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def make_image_folder(root, classes=("ant", "bee", "cat"), per_class=12, size=20):
    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = (torch.rand(size, size, 3, generator=g) * 80 + 60 * c).clamp(0, 255)
            Image.fromarray(arr.to(torch.uint8).numpy()).save(root / name / f"{i}.png")
    return root


def test_end_to_end_on_image_files(tmp_path):
    data = make_image_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    cli("train", "--model", "resnet20", "--data", f"imagefolder:{data}", "--epochs", "2",
        "--batch-size", "8", "--output", str(run), "--quiet", "data.image_size=16",
        "data.num_workers=0", "data.val_fraction=0.25", "model_args={depth: 8}")  # fmt: skip
    for name in ("config.yaml", "metrics.jsonl", "model.safetensors", "model.json",
                 "curves.png", "confusion.png", "report.md", "summary.json"):  # fmt: skip
        assert (run / name).stat().st_size > 0, name
    assert len(list_checkpoints(run / "checkpoints")) == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and "test_top1" in rows[-1]
    meta = json.loads((run / "model.json").read_text())
    assert (
        meta["class_names"] == ["ant", "bee", "cat"] and meta["preprocessing"]["image_size"] == 16
    )
    out = json.loads(cli("eval", str(run), "--data", f"imagefolder:{data}", "--split", "val",
                         "--json").stdout)  # fmt: skip
    assert {"top1", "top5", "loss", "n"} <= set(out) and out["n"] == 9
    assert (run / "confusion-val.png").exists()
    assert "per-class accuracy" in cli("eval", str(run / "model.safetensors"), "--data",
                                       f"imagefolder:{data}", "--split", "val").stdout  # fmt: skip


def test_training_learns_and_report(tmp_path):
    summary = train(tiny(tmp_path, epochs=4, data={**TINY["data"], "augment": "none"}),
                    progress=False)  # fmt: skip
    assert summary["test_top1"] > 0.6  # 4 classes: chance is 0.25
    # Timing: evaluation is counted apart from the wall time, the first step apart from
    # the steady state; each epoch's row carries the eval-free wall time so far.
    assert 0 < summary["eval_time_s"] < summary["wall_time_s"]
    assert 0 < summary["first_step_s"] < summary["train_time_s"] < summary["wall_time_s"]
    assert summary["steady_img_per_s"] > 0 and summary["train_img_per_s"] > 0
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    walls = [r["wall_s"] for r in rows]
    assert walls == sorted(walls) and walls[-1] <= summary["wall_time_s"] - summary["eval_time_s"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "test_top1" in report and "curves.png" in report
    model = load_model(tmp_path / "run")
    assert model.num_classes == 4 and model.config.layers == (1, 1, 1)


def test_resume_matches_uninterrupted_run(tmp_path):
    # A schedule that does not depend on the total length, so that --epochs can grow.
    sched = {"name": "multistep", "milestones": [1]}
    train(tiny(tmp_path, "full", epochs=2, schedule=sched), progress=False)
    train(tiny(tmp_path, "part", epochs=1, schedule=sched), progress=False)
    train(tiny(tmp_path, "part", epochs=2, schedule=sched), resume=True, progress=False)
    a = load_checkpoint(list_checkpoints(tmp_path / "full" / "checkpoints")[-1])["model"]
    b = load_checkpoint(list_checkpoints(tmp_path / "part" / "checkpoints")[-1])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_resume_refuses_other_settings_and_existing_runs(tmp_path):
    train(tiny(tmp_path, epochs=1), progress=False)
    with pytest.raises(TrainingError, match="already holds a run.*--resume.*--overwrite"):
        train(tiny(tmp_path, epochs=1), progress=False)
    with pytest.raises(TrainingError, match=r"optim\.lr: 0\.05 -> 0\.1"):
        train(tiny(tmp_path, epochs=2, optim={"lr": 0.1}), resume=True, progress=False)
    train(tiny(tmp_path, epochs=1), overwrite=True, progress=False)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny(tmp_path, "empty"), resume=True, progress=False)


def test_all_the_options_run(tmp_path):
    cfg = tiny(tmp_path, epochs=1, label_smoothing=0.1, mixup_alpha=0.2, cutmix_alpha=1.0,
               ema_decay=0.9, save_every_steps=2, keep_last=2, tta_flip=True,
               optim={"name": "adamw", "lr": 1e-3, "grad_clip": 1.0, "no_decay_norm_bias": True},
               schedule={"name": "cosine", "warmup_epochs": 0.5},
               data={**TINY["data"], "random_erasing": 0.5})  # fmt: skip
    summary = train(cfg, progress=False)
    assert summary["steps"] == 8 and summary["test_top1"] is not None
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in kept] == ["ckpt-00000006.pt", "ckpt-00000008.pt"]
    # EMA: the averaged weights differ from the trained ones, and they are what was exported
    state = load_checkpoint(kept[-1])
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items()}
    trained = state["model"]
    assert not torch.equal(ema["fc.weight"], trained["fc.weight"])
    final = load_model(tmp_path / "run" / "model.safetensors")
    assert torch.equal(final.state_dict()["fc.weight"], ema["fc.weight"])
    # test-time flip: averaging with the flipped images changes the logits, hence the loss
    from resnetlab.engine import evaluate_source

    flip = evaluate_source(str(tmp_path / "run"), tta_flip=True, progress=False)
    plain = evaluate_source(str(tmp_path / "run"), tta_flip=False, progress=False)
    assert flip["tta_flip"] and not plain["tta_flip"] and flip["loss"] != plain["loss"]
    assert flip["top1"] == summary["test_top1"]  # the run evaluated with the flip


def test_plain_final_epochs_train_without_augmentation(tmp_path, monkeypatch, capsys):
    from resnetlab.data import InMemoryLoader
    from resnetlab.engine import tasks

    epochs, mixed = [], []
    set_epoch = InMemoryLoader.set_epoch

    def recorded(self, epoch, *, augment=True):
        if self.train:
            epochs.append((epoch, augment))
        set_epoch(self, epoch, augment=augment)

    def mixer(cfg, num_classes):
        def mix(images, labels):
            mixed.append(len(labels))
            return images, labels

        return mix

    monkeypatch.setattr(InMemoryLoader, "set_epoch", recorded)
    monkeypatch.setattr(tasks, "_mixer", mixer)
    cfg = tiny(tmp_path, epochs=3, mixup_alpha=0.2,
               data={**TINY["data"], "plain_final_epochs": 1})  # fmt: skip
    train(cfg, progress=False)
    assert epochs == [(0, True), (1, True), (2, False)]
    assert mixed == [32] * 16  # mixup in the 2 augmented epochs of 8 steps, not in the last
    assert "epoch 3: trains without augmentation" in capsys.readouterr().err


def test_progressive_resizing_grows_the_training_size(tmp_path, monkeypatch, capsys):
    from torchvision.transforms import v2

    from resnetlab.engine import tasks

    sizes = []
    resized = tasks._resized

    def recorded(images, scale):
        out = resized(images, scale)
        sizes.append(tuple(out.shape[-2:]))
        return out

    monkeypatch.setattr(tasks, "_resized", recorded)
    cfg = tiny(tmp_path, epochs=4, data={**TINY["data"], "resize_from": 8, "resize_until": 0.5})
    summary = train(cfg, progress=False)
    # 16 px images, a ramp over the first 2 of 4 epochs: 8 px, then 12, then the full 16
    assert sizes == [(8, 8)] * 8 + [(12, 12)] * 8
    err = capsys.readouterr().err
    assert "epoch 1: trains at 8 px of 16" in err and "epoch 2: trains at 12 px of 16" in err
    assert "epoch 3: trains at" not in err and summary["test_top1"] is not None
    # the resize is torchvision's antialiased bilinear Resize, in the batch's memory format
    x = torch.rand(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    out = resized(x, 0.75)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, v2.Resize((12, 12), antialias=True)(x))


def test_mixup_and_cutmix_train_on_soft_targets():
    from resnetlab.config import TrainConfig, build_config
    from resnetlab.engine.tasks import Classification, _mixer

    images = torch.rand(16, 1, 8, 8)
    labels = torch.arange(16) % 4
    for key in ("mixup_alpha", "cutmix_alpha"):
        cfg = build_config(TrainConfig, {key: 1.0})
        task = Classification(cfg)
        task.mixer = _mixer(cfg, 4)
        seen = []

        def forward(x, seen=seen):
            seen.append(x)
            return torch.zeros(x.shape[0], 4, requires_grad=True)

        torch.manual_seed(0)
        loss, _ = task.loss(forward, images, labels)
        assert not torch.equal(seen[0], images), key  # the images were mixed
        # all-zero logits: the loss is log(4) for any targets, hard or soft
        assert loss.item() == pytest.approx(torch.log(torch.tensor(4.0)).item())
        torch.manual_seed(0)
        mixed, soft = task.mixer(images, labels)
        assert soft.shape == (16, 4) and torch.allclose(soft.sum(1), torch.ones(16))
        assert ((soft > 0) & (soft < 1)).any(), key  # soft, not one-hot


def test_nan_loss_stops_with_clear_message(tmp_path):
    cfg = tiny(tmp_path, epochs=3, optim={"lr": 1e12, "momentum": 0.0}, save_every_steps=1)
    with pytest.raises(TrainingError, match=r"(loss|BN statistics) became (nan|inf|non-fin).*"
                       r"lower optim\.lr.*last good checkpoint is kept"):  # fmt: skip
        train(cfg, progress=False)
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert kept and all(load_checkpoint(p)["step"] >= 1 for p in kept)
    # "kept" is true: every checkpoint left holds finite weights and BN running statistics
    for path in kept:
        tensors = load_checkpoint(path)["model"].values()
        assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()), path.name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "cifar11"], "unknown dataset .cifar11.*did you mean .cifar10"),
        (["--data", "synthetic:n=16", "--batch-size", "64"], "batch_size=64.*16"),
        (["--data", "synthetic", "--lr", "0"], r"optim\.lr=0\.0.*> 0"),
        (["--data", "synthetic", "optim.lrr=1"], r"unknown config key.*optim\.lrr.*allowed"),
        (["--data", "synthetic", "epochs=many"], r"invalid epochs='many': expected an integer"),
        (
            ["--data", "synthetic", "data.plain_final_epochs=-1"],
            r"invalid data\.plain_final_epochs=-1: expected an integer >= 0",
        ),
        (
            ["--data", "synthetic", "data.resize_until=1.5"],
            r"invalid data\.resize_until=1\.5: expected a fraction of the run's epochs in \[0, 1\]",
        ),
        (["--data", "synthetic", "--config", "nope.yaml"], "config file not found"),
        (["--model", "resnet21", "--data", "synthetic"], "unknown model 'resnet21'"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, args, message):
    proc = cli("train", "--output", str(tmp_path / "r"), "--epochs", "1", "--quiet", *args,
               check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    import re

    assert re.search(message, proc.stderr, re.IGNORECASE), proc.stderr


def test_schedules():
    kw = dict(steps_per_epoch=100, total_steps=64000)
    paper = ScheduleConfig(name="multistep", milestones=(32000, 48000), milestone_unit="iter",
                           constant_warmup_iters=400)  # fmt: skip
    assert lr_factor(0, paper, **kw) == pytest.approx(0.1)
    assert lr_factor(400, paper, **kw) == 1.0
    assert lr_factor(32000, paper, **kw) == pytest.approx(0.1)
    assert lr_factor(48000, paper, **kw) == pytest.approx(0.01)
    by_epoch = ScheduleConfig(name="multistep", milestones=(2,), warmup_epochs=1)
    assert lr_factor(0, by_epoch, **kw) == pytest.approx(0.1)
    assert lr_factor(50, by_epoch, **kw) == pytest.approx(0.55)
    assert lr_factor(199, by_epoch, **kw) == 1.0 and lr_factor(200, by_epoch, **kw) == 0.1
    one = ScheduleConfig(name="onecycle", pct_start=0.25)
    kw = dict(steps_per_epoch=10, total_steps=1000)
    assert lr_factor(250, one, **kw) == pytest.approx(1.0)
    assert lr_factor(0, one, **kw) == pytest.approx(1 / 25)
    assert lr_factor(1000, one, **kw) < 1e-4
    cos = ScheduleConfig(name="cosine")
    assert lr_factor(0, cos, **kw) == 1.0 and lr_factor(500, cos, **kw) == pytest.approx(0.5)


def test_presets_load_and_overrides_apply():
    from pathlib import Path

    presets = sorted(Path("configs").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"cifar_resnet_paper", "cifar_preact_paper",
                                         "cifar_resnext", "imagenet_paper", "imagenet_modern",
                                         "fashion_mnist_fast", "fashion_mnist_quality"}  # fmt: skip
    for p in presets:
        cfg = load_train_config(str(p))
        create_model(cfg.model, **cfg.model_args)  # every preset names a buildable model
    cfg = load_train_config("configs/cifar_resnet_paper.yaml", ["optim.lr=0.05", "model=resnet56"])
    assert cfg.optim.lr == 0.05 and cfg.model == "resnet56" and cfg.max_iters == 64000
    assert cfg.schedule.milestones == (32000, 48000)
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        load_train_config(None, ["lr"])
    with pytest.raises(ValueError, match=r"schedule\.name='linear'"):
        load_train_config(None, ["schedule.name=linear"])


FAULTS_SCRIPT = """
import resource, sys, torch
import torch.nn.functional as F
from resnetlab import create_model
from resnetlab.device import keep_freed_host_memory

torch.set_num_threads(1)
if sys.argv[1] == "kept":
    assert keep_freed_host_memory()
model = create_model("resnet8_pool", in_chans=1).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (64,))
for i in range(13):
    if i == 3:  # after warm-up
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_kept_host_memory_stops_page_faults_on_every_step():
    def faults_per_step(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True,
                             text=True, check=True)  # fmt: skip
        return float(out.stdout)

    default, kept = faults_per_step("default"), faults_per_step("kept")
    # Without it every step faults its activations back in (hundreds of pages here).
    assert default > 200 and kept < default / 5, (default, kept)


def test_a_failed_start_can_be_run_again_in_place(tmp_path):
    bad = tiny(tmp_path, data={"spec": f"imagefolder:{tmp_path / 'nowhere'}", "batch_size": 8})
    with pytest.raises(RuntimeError, match="is not a folder"):
        train(bad, progress=False)
    assert (tmp_path / "run" / "config.yaml").exists()  # the set-up files it left
    summary = train(tiny(tmp_path, max_iters=2, eval_every=0), progress=False)  # no --overwrite
    assert summary["steps"] == 2
    (tmp_path / "run" / "notes.txt").write_text("mine")  # not a set-up file: a run is refused
    with pytest.raises(TrainingError, match="already holds a run"):
        train(tiny(tmp_path, max_iters=2), progress=False)
