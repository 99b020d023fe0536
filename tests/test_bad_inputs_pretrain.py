"""tools/pretrain.py under hostile but honest input (issue #11, the pretraining share).

Every bad-input case runs the tool's own ``main`` in-process through ``pretrain.cli.run`` (what
its ``__main__`` does) and asserts, through tests/bad_input_helpers.py: the exit status, exactly
one line on stderr, no traceback, the output folder unchanged (or still absent). Then the
failures that are not bad input: a diverging run (exit 3, the last good checkpoint kept
bit-identical), resume checks (refusal, ``--resume-changed`` and its history), logs without
duplicate iterations after a resume, stale temp files removed, and SIGTERM/SIGINT of a real
process (the only two subprocess cases).
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bad_input_helpers import call_main, check_one_line, interruptible
from pretrain import cli
from pretrain import checkpoint as ckpt_io
from pretrain.config import DEFAULTS, load_config, resolve
from pretrain.schema import RULES, leaf_keys

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "pretrain" / "demo.yaml"
PROG = "pretrain.py"

_spec = importlib.util.spec_from_file_location("pretrain_tool", ROOT / "tools" / "pretrain.py")
TOOL = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(TOOL)

# About a tenth of a second per iteration on 2 CPU cores.
TINY = ["--no-progress", "model.arch=resnet18", "model.stem=cifar", "data.image_size=8",
        "data.batch_size=8", "data.num_workers=0", "data.synthetic.train_size=32",
        "data.synthetic.val_size=0", "heads.projector.hidden=32", "heads.projector.out=16",
        "heads.predictor.hidden=16", "heads.distill_head.hidden=32", "schedule.iters=4",
        "optim.lr=0.05", "optim.warmup_epochs=0.5", "monitor.knn_every=0", "monitor.log_every=1",
        "monitor.tensorboard=false", "checkpoint.every_iters=1"]


def bad(capsys, argv, must_mention=(), unchanged=None, want_code=cli.EXIT_BAD_INPUT):
    return call_main(TOOL.main, argv, PROG, capsys, want_code=want_code,
                     must_mention=must_mention, unchanged=unchanged)


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------ the schema covers every key
def test_schema_has_a_rule_for_every_default_key():
    """A key added to DEFAULTS without a rule in pretrain/schema.py RULES fails here (and
    validate() refuses it at run time), so no future key skips the check."""
    keys = set(leaf_keys(DEFAULTS))
    assert keys - set(RULES) == set(), "DEFAULTS keys without a schema rule"
    assert set(RULES) - keys == set(), "schema rules for keys DEFAULTS does not have"


def test_resolve_is_idempotent_and_converts_yaml_number_strings():
    """A resolved config (what config.yaml and the checkpoint hold) resolves to itself; YAML 1.1
    reads 1e-3 as a string: the schema makes it the number it means."""
    cfg = load_config(DEMO, ["optim.lr=1e-3", "regularization.lam=5e-5"])
    assert cfg["optim"]["lr"] == 1e-3 and isinstance(cfg["regularization"]["lam"], float)
    assert resolve(cfg) == cfg
    for path in sorted((ROOT / "configs" / "pretrain").glob("[!_]*.yaml")):
        cfg = load_config(path)
        assert resolve(cfg) == cfg, path


# ------------------------------------------------------------------ config values (schema)
CONFIG_CASES = {
    # the cases
    "batch_size abc": (["data.batch_size=abc"], ["'data.batch_size'", "integer", "'abc'"]),
    "iters abc": (["schedule.iters=abc"], ["'schedule.iters'", "integer"]),
    "lr abc": (["optim.lr=abc"], ["config key 'optim.lr': expected a finite number > 0, "
                                  "got 'abc'"]),
    "seed abc": (["seed=abc"], ["'seed'", "integer"]),
    "batch_size 8.5": (["data.batch_size=8.5"], ["'data.batch_size'", "8.5"]),
    "lr negative": (["optim.lr=-1"], ["'optim.lr'", "> 0", "-1"]),
    "num_workers negative": (["data.num_workers=-1"], ["'data.num_workers'", ">= 0"]),
    "iters 0": (["schedule.iters=0"], ["'schedule.iters'", ">= 1"]),
    # finiteness
    "lr nan": (["optim.lr=nan"], ["'optim.lr'", "finite"]),
    "lr .nan": (["optim.lr=.nan"], ["'optim.lr'", "finite"]),
    "lr inf": (["optim.lr=.inf"], ["'optim.lr'", "finite"]),
    "weight_decay -inf": (["optim.weight_decay=-.inf"], ["'optim.weight_decay'"]),
    # ranges and types
    "epochs 0": (["schedule.iters=null", "schedule.epochs=0"], ["'schedule.epochs'", ">= 1"]),
    "seed negative": (["seed=-1"], ["'seed'"]),
    "batch_size 1": (["data.batch_size=1"], ["'data.batch_size'", ">= 2"]),
    "image_size 4": (["data.image_size=4"], ["'data.image_size'", ">= 8"]),
    "every_iters negative": (["checkpoint.every_iters=-1"], ["'checkpoint.every_iters'"]),
    "log_every 0": (["monitor.log_every=0"], ["'monitor.log_every'"]),
    "temperature 0": (["method.temperature=0"], ["'method.temperature'", "> 0"]),
    "momentum 1.5": (["method.momentum=1.5"], ["'method.momentum'", "<= 1"]),
    "optim momentum 1": (["optim.momentum=1"], ["'optim.momentum'", "< 1"]),
    "num_random negative": (["sampling.num_random=-1"], ["'sampling.num_random'"]),
    "min_width 0.1": (["sampling.min_width=0.1"], ["'sampling.min_width'", ">= 0.25"]),
    "fixed_width 2": (["sampling.fixed_width=2"], ["'sampling.fixed_width'"]),
    "projector out 0": (["heads.projector.out=0"], ["'heads.projector.out'"]),
    "table7_case 18": (["method.table7_case=18"], ["'method.table7_case'", "<= 17"]),
    "queue_size text": (["method.queue_size=big"], ["'method.queue_size'"]),
    # booleans given something else
    "amp string": (["amp=maybe"], ["'amp'", "true or false"]),
    "tensorboard 1": (["monitor.tensorboard=1"], ["'monitor.tensorboard'", "true or false"]),
    "verify_md5 string": (["data.verify_md5=yes please"], ["'data.verify_md5'"]),
    "gather_negatives": (["method.gather_negatives=sometimes"], ["'method.gather_negatives'"]),
    # lists
    "knn_widths item": (["monitor.knn_widths=[1.0, 0.1]"], ["'monitor.knn_widths'"]),
    "knn_widths empty": (["monitor.knn_widths=[]"], ["'monitor.knn_widths'", "list"]),
    "knn_widths scalar": (["monitor.knn_widths=0.5"], ["'monitor.knn_widths'", "list"]),
    "betas length": (["optim.betas=[0.9]"], ["'optim.betas'", "list of 2"]),
    "betas type": (["optim.betas=[0.9, abc]"], ["'optim.betas'"]),
    # choices
    "optim name": (["optim.name=rmsprop"], ["'optim.name'", "sgd"]),
    "data name": (["data.name=imagenet"], ["'data.name'", "folder"]),
    "method name": (["method.name=dino"], ["'method.name'", "us3l"]),
    "distill_loss": (["method.distill_loss=kl"], ["'method.distill_loss'"]),
    "augment": (["data.augment=autoaugment"], ["'data.augment'"]),
    "dist backend": (["dist.backend=tcp"], ["'dist.backend'", "nccl"]),
    "data root list": (["data.root=[a, b]"], ["'data.root'", "string"]),
    "output dir empty": (["output.dir="], ["'output.dir'"]),
    # relations between keys
    "min above max": (["sampling.min_width=0.75", "sampling.max_width=0.5"],
                      ["min_width", "max_width"]),
    "alpha too large": (["regularization.alpha=0.5"], ["regularization.alpha", "groups"]),
    "queue without momentum": (["method.name=simclr", "method.queue_size=16"],
                               ["queue_size"]),
    "min_lr above lr": (["optim.min_lr=0.5"], ["optim.min_lr", "optim.lr"]),
    # the open model section: builder options checked as one line
    "unknown arch": (["model.arch=resnet34"], ["'model.arch'", "resnet18"]),
    "unknown stem": (["model.stem=tiny"], ["'model.stem'", "cifar"]),
    "option arch lacks": (["model.depth=3"], ["'model.depth'", "takes no option"]),
    "vit image size": (["model.arch=vit_tiny", "data.image_size=16"],
                       ["model.image_size", "data.image_size"]),
    "vit patch": (["model.arch=vit_tiny", "model.image_size=16", "data.image_size=16",
                   "model.patch_size=5"], ["patch_size"]),
    "vit depth text": (["model.arch=vit_tiny", "model.depth=deep"], ["'model.depth'"]),
    # structure
    "unknown key": (["optim.lrr=1"], ["unknown config key 'optim.lrr'"]),
    "section given a value": (["data=5"], ["'data'", "section"]),
    "section given null": (["data.synthetic=null"], ["'data.synthetic'", "section"]),
    "not key=value": (["optim.lr"], ["key=value"]),
    "empty key": (["=3"], ["empty key"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_value_is_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    overrides, words = CONFIG_CASES[case]
    out = tmp_path / "run"
    bad(capsys, [*TINY, f"output.dir={out}", *overrides], words, unchanged=out)


# ------------------------------------------------------------------ command line and files
def _config_files(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    (tmp / "invalid.yaml").write_text("data: {name: [synthetic\n")
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "bad_base.yaml").write_text("_base_: 5\n")
    (tmp / "loop.yaml").write_text("_base_: loop.yaml\n")
    (tmp / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    (tmp / "typo.yaml").write_text("monitor: {knn_k: many}\n")
    return {
        "missing config": (["--config", str(tmp / "absent.yaml")], ["does not exist"]),
        "config is a folder": (["--config", str(tmp)], ["folder"]),
        "invalid yaml": (["--config", str(tmp / "invalid.yaml")], ["not valid YAML"]),
        "yaml list": (["--config", str(tmp / "list.yaml")], ["mapping"]),
        "bad _base_": (["--config", str(tmp / "bad_base.yaml")], ["_base_"]),
        "_base_ loop": (["--config", str(tmp / "loop.yaml")], ["inherits from itself"]),
        "binary config": (["--config", str(tmp / "binary.yaml")], ["cannot be read"]),
        "bad value in file": (["--config", str(tmp / "typo.yaml")], ["'monitor.knn_k'", "'many'"]),
        "stop-after 0": (["--stop-after", "0"], ["--stop-after", "minimum 1"]),
        "stop-after text": (["--stop-after", "abc"], ["--stop-after", "integer"]),
        "unknown option": (["--bogus"], ["--bogus"]),
        "resume-changed alone": (["--resume-changed"], ["--resume-changed", "--resume"]),
    }


CLI_CASES = ["missing config", "config is a folder", "invalid yaml", "yaml list", "bad _base_",
             "_base_ loop", "binary config", "bad value in file", "stop-after 0",
             "stop-after text", "unknown option", "resume-changed alone"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_bad_command_line_or_config_file(case, tmp_path, capsys):
    argv, words = _config_files(tmp_path)[case]
    out = tmp_path / "run"
    bad(capsys, [*argv, *TINY, f"output.dir={out}"], words, unchanged=out)


def test_output_under_a_regular_file_names_the_path(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder\n")
    line = bad(capsys, [*TINY, f"output.dir={blocker / 'run'}"], ["output.dir", str(blocker)],
               unchanged=tmp_path)
    assert "is a file" in line
    bad(capsys, [*TINY, f"output.dir={blocker}"], ["output.dir", "is a file"], unchanged=tmp_path)


def test_unwritable_output_path_is_one_line(tmp_path, capsys):
    """A path no one can create (under /proc, even as root): one line naming it, exit 2."""
    target = Path("/proc") / f"us3l-{os.getpid()}" / "run"
    bad(capsys, [*TINY, f"output.dir={target}"], [str(target.parent)], unchanged=tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        bad(capsys, [*TINY, f"output.dir={folder / 'run'}"], ["not writable"], unchanged=folder)
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("device,words", [("bogus", ["US3L_DEVICE", "not a device"]),
                                          ("cuda:7", ["cuda:7", "US3L_DEVICE=cpu"])],
                         ids=["unknown device", "absent GPU"])
def test_unusable_device_is_one_line(device, words, tmp_path, capsys, monkeypatch):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU 7")
    monkeypatch.setenv("US3L_DEVICE", device)
    out = tmp_path / "run"
    bad(capsys, [*TINY, f"output.dir={out}"], words, unchanged=out)


# ------------------------------------------------------------------ data
def _image_folder(root: Path, corrupt: dict[str, bytes] | None = None) -> Path:
    from PIL import Image
    for cls, colour in (("cat", (200, 10, 10)), ("dog", (10, 200, 10))):
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            Image.new("RGB", (12, 12), colour).save(root / "train" / cls / f"{i}.png")
    for name, blob in (corrupt or {}).items():
        (root / "train" / "dog" / name).write_bytes(blob)
    return root


def _truncated_jpeg() -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, "JPEG")
    return buf.getvalue()[:200]


@pytest.mark.parametrize("kind", ["garbage jpeg", "truncated jpeg", "empty file"])
def test_corrupt_image_in_folder_names_the_file(kind, tmp_path, capsys):
    blob = {"garbage jpeg": b"not a jpeg at all" * 8, "truncated jpeg": _truncated_jpeg(),
            "empty file": b""}[kind]
    root = _image_folder(tmp_path / "imgs", {"broken.jpg": blob})
    out = tmp_path / "run"
    bad(capsys, [*TINY, "data.name=folder", f"data.root={root}", f"output.dir={out}"],
        ["broken.jpg", "remove or replace"], unchanged=out)


def test_corrupt_image_found_while_training_in_a_worker(tmp_path, capsys, monkeypatch):
    """A set too large for the up-front check (here: a limit of 0): the image that fails to
    decode inside a DataLoader worker is still one line naming it (not the worker's traceback)."""
    from pretrain import data as data_mod
    monkeypatch.setattr(data_mod, "PRECHECK_MAX", 0)
    root = _image_folder(tmp_path / "imgs", {f"broken{i}.jpg": b"garbage" for i in range(16)})
    out = tmp_path / "run"
    line = bad(capsys, [*TINY, "data.name=folder", f"data.root={root}", "data.num_workers=1",
                        f"output.dir={out}"], ["broken", "cannot be read"])
    assert "DataLoader worker" not in line
    assert (out / "config.yaml").is_file()          # found while training, not up front
    assert not (out / "checkpoint.pth").exists()


DATA_CASES = {
    "folder missing": (["data.name=folder", "data.root={tmp}/absent"], ["does not exist"]),
    "folder without images": (["data.name=folder", "data.root={tmp}/empty"], ["unusable"]),
    "cifar10 missing": (["data.name=cifar10", "data.root={tmp}"], ["cifar-10-batches-py"]),
    "cifar100 missing": (["data.name=cifar100", "data.root={tmp}"], ["cifar-100-python"]),
    "fewer images than a batch": (["data.synthetic.train_size=4"], ["fewer than one batch"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_unusable_data_is_one_line(case, tmp_path, capsys):
    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    overrides, words = DATA_CASES[case]
    out = tmp_path / "run"
    bad(capsys, [*TINY, *[o.format(tmp=tmp_path) for o in overrides], f"output.dir={out}"],
        words, unchanged=out)


# ------------------------------------------------------------------ resume: a real checkpoint
@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """TINY stopped after iteration 2 of 4 (checkpoint at 2), and a copy of its checkpoint."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    code = cli.run(TOOL.main, PROG, [*TINY, f"output.dir={run}", "--stop-after", "2"])
    assert code == 0
    return run


@pytest.fixture
def run_copy(stopped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    return run


def _edited_checkpoint(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


class _Payload:
    """A pickle that would run a command when loaded with plain pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _resume_files(run: Path, tmp: Path) -> dict[str, Path]:
    good = run / "checkpoint.pth"
    (tmp / "notes.pth").write_text("not a checkpoint\n")
    blob = good.read_bytes()
    (tmp / "truncated.pth").write_bytes(blob[: len(blob) // 2])
    torch.save({"weights": torch.zeros(3)}, tmp / "plain.pth")
    torch.save({"format": "us3l-checkpoint", "x": _Payload(tmp / "RAN")}, tmp / "evil.pth")

    def nan(c):
        c["state"]["backbone"]["conv1.weight"][0, 0, 0, 0] = float("nan")

    def no_rng(c):
        c["train_state"].pop("rng")
        c["train_state"].pop("rng_per_rank")

    def no_optimizer(c):
        c["train_state"].pop("optimizer")

    def other_arch(c):
        c["config"]["model"] = {"arch": "mobilenetv2", "stem": "cifar"}

    def future(c):
        c["format_version"] = 99

    def bad_part(c):
        c["state"]["projector"] = {"0.weight": "not a tensor"}

    edits = {"nan": nan, "no_rng": no_rng, "no_optimizer": no_optimizer,
             "other_arch": other_arch, "future": future, "bad_part": bad_part}
    files = {name: _edited_checkpoint(good, tmp / f"{name}.pth", fn) for name, fn in edits.items()}
    files.update({name: tmp / f"{name}.pth" for name in ("notes", "truncated", "plain", "evil")})
    return files


RESUME_CASES = {
    "text file": ("notes", [], ["not a readable US3L checkpoint"]),
    "truncated": ("truncated", [], ["not a readable US3L checkpoint"]),
    "torch file, not a checkpoint": ("plain", [], ["not a US3L checkpoint"]),
    "pickled code": ("evil", [], ["nothing from it ran"]),
    "NaN weights": ("nan", [], ["NaN or Inf", "conv1.weight"]),
    "no RNG state": ("no_rng", [], ["no RNG state"]),
    "no training state": ("no_optimizer", [], ["no training state", "optimizer"]),
    "arch other than its weights": ("other_arch", ["model.arch=mobilenetv2", "model.stem=cifar"],
                                    ["do not match", "mobilenetv2"]),
    "newer format": ("future", [], ["format version 99"]),
    "state part not tensors": ("bad_part", [], ["projector", "not a mapping of tensors"]),
}


@pytest.fixture(scope="module")
def resume_files(stopped_run, tmp_path_factory):
    """The stopped run's checkpoint, broken every way (read only by the tests)."""
    folder = tmp_path_factory.mktemp("broken")
    return folder, _resume_files(stopped_run, folder)


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_unusable_resume_checkpoint_is_one_line(case, resume_files, tmp_path, capsys):
    name, extra, words = RESUME_CASES[case]
    folder, files = resume_files
    out = tmp_path / "fresh"
    bad(capsys, [*TINY, f"output.dir={out}", *extra, "--resume", str(files[name])], words,
        unchanged=out)
    assert not (folder / "RAN").exists()            # the pickled payload never ran


def test_resume_without_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    bad(capsys, [*TINY, f"output.dir={out}", "--resume"], ["checkpoint.pth", "does not exist"],
        unchanged=out)


CHANGED = {
    "lr": (["optim.lr=0.1"], ["optim.lr 0.05 -> 0.1"]),
    "data seed and batch": (["data.batch_size=16", "data.synthetic.seed=3"],
                            ["data.batch_size 8 -> 16", "data.synthetic.seed 0 -> 3"]),
    "seed": (["seed=7"], ["seed 0 -> 7"]),
    "schedule": (["schedule.iters=6"], ["schedule.iters 4 -> 6"]),
    "method": (["method.table7_case=1"], ["method.base_loss 'infonce' -> 'mse'", "1 more"]),
    "model": (["model.arch=mobilenetv2"], ["model.arch 'resnet18' -> 'mobilenetv2'"]),
    "sampling": (["sampling.dynamic=false"], ["sampling.dynamic True -> False"]),
    "regularization": (["regularization.lam=1.0e-4"], ["regularization.lam"]),
    "heads": (["heads.projector.out=8"], ["heads.projector.out 16 -> 8"]),
}


@pytest.mark.parametrize("case", list(CHANGED))
def test_resume_with_a_changed_meaning_is_refused(case, run_copy, capsys):
    overrides, words = CHANGED[case]
    bad(capsys, [*TINY, f"output.dir={run_copy}", *overrides, "--resume"],
        ["cannot resume", "--resume-changed", *words], unchanged=run_copy)


def test_resume_with_changed_workers_and_logging_continues(run_copy, capsys):
    """Keys that do not change what the run means (data.num_workers, monitor, checkpoint)."""
    code = cli.run(TOOL.main, PROG, [*TINY, f"output.dir={run_copy}", "data.num_workers=1",
                                     "monitor.log_every=2", "--resume"])
    assert code == 0, capsys.readouterr().err
    assert ckpt_io.load_checkpoint(run_copy / "checkpoint.pth")["history"] == []


def test_resume_changed_continues_and_records_the_change(run_copy, capsys):
    capsys.readouterr()
    code = cli.run(TOOL.main, PROG, [*TINY, f"output.dir={run_copy}", "optim.lr=0.02",
                                     "--resume", "--resume-changed"])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    assert "optim.lr 0.05 -> 0.02" in out and "done: 4/4 iterations" in out
    ckpt = ckpt_io.load_checkpoint(run_copy / "checkpoint.pth")
    assert ckpt["train_state"]["iteration"] == 4 and ckpt["config"]["optim"]["lr"] == 0.02
    assert ckpt["history"] == [{"iteration": 2, "changes": [
        {"key": "optim.lr", "old": 0.05, "new": 0.02}]}]
    rows = list(csv.DictReader(open(run_copy / "train.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    # the new lr took effect at the resumed step of the schedule (warm-up 2, cosine over 2)
    assert [float(r["lr"]) for r in rows[2:]] == pytest.approx([0.02, 0.01], rel=1e-5)


# ------------------------------------------------------------------ divergence: exit 3
def test_lr_1e30_on_the_demo_config_stops_with_exit_3(tmp_path, capsys):
    """The issue's case: a loss or weight goes NaN/Inf; one line naming the iteration, exit 3;
    no checkpoint holding NaN/Inf is ever written."""
    out = tmp_path / "run"
    line = bad(capsys, ["--config", str(DEMO), *TINY, f"output.dir={out}", "optim.lr=1e30",
                        "schedule.iters=8"], ["became", "at iteration", "lower optim.lr"],
               want_code=cli.EXIT_DIVERGED)
    assert "NaN" in line or "Inf" in line
    if (out / "checkpoint.pth").exists():           # saved before it diverged: finite
        ckpt_io.load_checkpoint(out / "checkpoint.pth")
        assert "last good checkpoint is kept" in line
    else:
        assert "no checkpoint was saved" in line


def test_divergence_keeps_the_last_good_checkpoint_bit_identical(run_copy, capsys):
    """Resumed at iteration 2 with lr 1e30 and no periodic save: the run diverges at iteration
    3 or 4 (the group regularization of weights scaled by ~1e26 overflows), stops with exit 3,
    and the iteration-2 checkpoint is the same bytes."""
    before = sha(run_copy / "checkpoint.pth")
    line = bad(capsys, [*TINY, f"output.dir={run_copy}", "optim.lr=1e30",
                        "checkpoint.every_iters=0", "--resume", "--resume-changed"],
               ["at iteration", "last good checkpoint is kept", "(iteration 2)"],
               want_code=cli.EXIT_DIVERGED)
    assert any(f"at iteration {i} " in line for i in (3, 4)), line
    assert sha(run_copy / "checkpoint.pth") == before
    assert not [p for p in run_copy.iterdir() if p.name.endswith(".tmp")]


def test_nan_weights_are_never_saved_nor_loaded(stopped_run, tmp_path):
    ckpt = ckpt_io.load_checkpoint(stopped_run / "checkpoint.pth")
    ckpt["state"]["backbone"]["conv1.weight"][0].fill_(float("inf"))
    with pytest.raises(ckpt_io.NonFiniteWeights, match="conv1.weight"):
        ckpt_io.save_checkpoint(tmp_path / "c.pth", config=ckpt["config"], state=ckpt["state"])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ckpt_io.CheckpointError, match="NaN or Inf"):
        ckpt_io.load_backbone(ckpt)


# ------------------------------------------------------------------ consistent logs, no leftovers
def test_logs_have_no_duplicate_iterations_after_a_kill_and_resume(run_copy, capsys):
    """The run logged iterations 3-4 after its checkpoint at 2, then 'died' before saving again
    (the iteration-2 checkpoint put back): the resumed run logs 3-4 once, not twice."""
    saved = run_copy / "ckpt2.pth.bak"
    shutil.copy(run_copy / "checkpoint.pth", saved)
    argv = [*TINY, f"output.dir={run_copy}", "checkpoint.every_iters=0"]
    assert cli.run(TOOL.main, PROG, [*argv, "--resume"]) == 0
    with open(run_copy / "train.csv", "a") as fh:
        fh.write("5,1,0.0")                         # a half-written row of a killed writer
    os.replace(saved, run_copy / "checkpoint.pth")
    assert cli.run(TOOL.main, PROG, [*argv, "--resume"]) == 0
    rows = list(csv.DictReader(open(run_copy / "train.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    widths = [int(r["iteration"]) for r in csv.DictReader(open(run_copy / "widths.csv"))]
    assert sorted(set(widths)) == [1, 2, 3, 4] and widths == sorted(widths)
    capsys.readouterr()


def test_stale_temp_files_of_killed_saves_are_removed(run_copy, capsys):
    dead = 4_194_303  # above Linux's pid_max: no such process
    stale = [run_copy / f".checkpoint.pth.{dead}.abc.tmp", run_copy / f".config.yaml.{dead}.x.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 1024)
    other = run_copy / ".notes.tmp"
    other.write_text("not ours")
    assert cli.run(TOOL.main, PROG, [*TINY, f"output.dir={run_copy}", "--resume"]) == 0
    assert not any(p.exists() for p in stale) and other.exists()
    capsys.readouterr()


# ------------------------------------------------------------------ signals (real processes)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_with_one_line_no_temp_files_checkpoint_intact(sig, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "US3L_DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "pretrain.py"), *TINY,
                             "schedule.iters=100000", "data.num_workers=1",
                             f"output.dir={out}"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=interruptible)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pth").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.2)
        time.sleep(0.5)                               # somewhere in the next iterations/saves
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    check_one_line(err, proc.returncode, 128 + int(sig), ["interrupted", sig.name])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    ckpt = ckpt_io.load_checkpoint(out / "checkpoint.pth")
    assert ckpt["train_state"]["iteration"] >= 1
