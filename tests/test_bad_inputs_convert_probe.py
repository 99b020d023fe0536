"""tools/convert_width.py and tools/linear_probe.py under hostile but honest input (issue #11,
the converter's and the probe's share).

Every bad-input case runs the tool's own ``main`` in-process through ``pretrain.cli.run`` (what
its ``__main__`` does) and asserts, through tests/bad_input_helpers.py: the exit status, exactly
one line on stderr, no traceback, the output folder unchanged (or still absent). Then what is not
bad input: width ranges de-duplicated by channel plan, a diverging SGD probe (exit 3), and the
converter killed mid-width by SIGTERM/SIGINT (one line, exit 143/130, no temp folder, finished
widths kept) and by SIGKILL (its hidden temp folder ignored by the probe, removed by the next run):
the only subprocess cases.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bad_input_helpers import ROOT, call_main, check_one_line, interruptible, run_cmd, snapshot
from export_helpers import make_checkpoint
from pretrain import cli, slim
from pretrain.models import build_backbone
from transfer import fixtures
from transfer.export import convert

sys.path.insert(0, str(ROOT / "tools"))
import linear_probe  # noqa: E402

CONVERT, PROBE = "convert_width.py", "linear_probe.py"
FAST = ["--calib-batches", "2", "--calib-batch-size", "4", "--calib-size", "32", "--quiet"]
PROBE_FAST = ["--image-size", "16", "--grid", "1e-2", "1e2", "3", "--max-iter", "20",
              "--calib-batches", "2", "--calib-batch-size", "4"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Payload:
    """Unpickling this runs a shell command: every file holding it must be refused first."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def poisoned(src: Path, dst: Path, value: float) -> Path:
    """A copy of checkpoint ``src`` with one backbone weight set to ``value`` (NaN/Inf), written
    with plain torch.save (the project's save_checkpoint refuses such weights)."""
    ckpt = torch.load(src, weights_only=True)
    key = next(k for k, v in ckpt["state"]["backbone"].items() if v.is_floating_point())
    ckpt["state"]["backbone"][key].view(-1)[0] = value
    torch.save(ckpt, dst)
    return dst


def corrupt_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 4)
    return path


def good_jpegs(folder: Path, count: int, size: int = 16) -> None:
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            folder / f"img{i:03d}.jpg")


def unwritable_path() -> Path | None:
    """A path under a folder this process cannot write (root writes anywhere except /proc)."""
    for folder in (Path("/proc/self"),):
        if folder.is_dir() and not os.access(folder, os.W_OK):
            return folder / "us3l-out"
    return None


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints, exports and hostile files shared by every case (each made once)."""
    d = tmp_path_factory.mktemp("inputs")
    f = {"dir": d,
         "r18": make_checkpoint(d / "r18.pth", "resnet18", data={"name": "synthetic",
                                                                 "image_size": 32}),
         "r18c": make_checkpoint(d / "r18c.pth", "resnet18", stem="cifar",
                                 data={"name": "synthetic", "image_size": 16}),
         "narrow": make_checkpoint(d / "narrow.pth", "resnet18", width_range=(0.5, 1.0))}
    f["nan"] = poisoned(f["r18"], d / "nan.pth", float("nan"))
    f["inf"] = poisoned(f["r18"], d / "inf.pth", float("inf"))
    blob = Path(f["r18"]).read_bytes()
    (d / "truncated.pth").write_bytes(blob[: len(blob) // 3])
    f["truncated"] = d / "truncated.pth"
    (d / "notes.pth").write_text("not a checkpoint\n")
    f["text"] = d / "notes.pth"
    f["marker"] = d / "payload-ran"
    torch.save({"format": "us3l-checkpoint", "state": Payload(f["marker"])}, d / "hostile.pth")
    f["hostile"] = d / "hostile.pth"
    vit = build_backbone({"arch": "vit_tiny", "image_size": 32})
    from pretrain.checkpoint import save_checkpoint
    f["vit"] = save_checkpoint(d / "vit.pth", config={"model": {"arch": "vit_tiny",
                                                                "image_size": 32},
                                                      "data": {"name": "synthetic",
                                                               "image_size": 32}},
                               state={"backbone": vit.state_dict()})
    f["file"] = d / "a-file"
    f["file"].write_text("x\n")
    # calibration folders: flat with a corrupt JPEG, class tree with one, too few images, empty
    good_jpegs(d / "flat_bad", 8)
    f["flat_bad_jpg"] = corrupt_jpeg(d / "flat_bad" / "img003.jpg")
    good_jpegs(d / "tree_bad" / "cat", 8)
    f["tree_bad_jpg"] = corrupt_jpeg(d / "tree_bad" / "cat" / "img005.jpg")
    good_jpegs(d / "few", 3)
    (d / "empty").mkdir()
    # the probe's export: two widths of a CIFAR-stem ResNet-18
    export = d / "export"
    assert convert.main([str(f["r18c"]), "--out", str(export), "--widths", "0.25", "0.5",
                         "--formats", "torchvision", *FAST]) == 0
    f["export"] = export
    return f


def bad_convert(capsys, argv, must_mention=(), out=None, want_code=cli.EXIT_BAD_INPUT):
    return call_main(convert.main, [str(a) for a in argv], CONVERT, capsys,
                     want_code=want_code, must_mention=must_mention, unchanged=out)


def bad_probe(capsys, argv, must_mention=(), out=None, want_code=cli.EXIT_BAD_INPUT):
    return call_main(linear_probe.main, [str(a) for a in argv], PROBE, capsys,
                     want_code=want_code, must_mention=must_mention, unchanged=out)


# ----------------------------------------------------------------------------------- converter
# (label, extra argv, words the one line must hold); checkpoint r18 and --out DIR/out are added
CONVERT_OPTIONS = [
    ("widths nan", ["--widths", "nan"], ["width nan", "outside"]),
    ("widths inf", ["--widths", "inf"], ["width inf", "outside"]),
    ("widths word", ["--widths", "half"], ["'half' is not a number"]),
    ("widths below 0.25", ["--widths", "0.2"], ["outside [0.25, 1.0]"]),
    ("widths above 1", ["--widths", "1.1"], ["outside [0.25, 1.0]"]),
    ("widths negative", ["--widths", "-0.5"], ["outside [0.25, 1.0]"]),
    ("range nan low", ["--widths-range", "nan:1:0.25"], ["LOW is not a finite number"]),
    ("range inf high", ["--widths-range", "0.25:inf:0.25"], ["HIGH is not a finite number"]),
    ("range nan step", ["--widths-range", "0.25:1:nan"], ["STEP is not a finite number"]),
    ("range zero step", ["--widths-range", "0.25:1:0"], ["STEP 0 is below 1e-06"]),
    ("range negative step", ["--widths-range", "0.25:1:-0.25"], ["STEP -0.25 is below"]),
    ("range tiny step", ["--widths-range", "0.25:1:1e-9"], ["STEP 1e-09 is below 1e-06"]),
    ("range reversed", ["--widths-range", "1:0.25:0.25"], ["LOW 1 is above HIGH 0.25"]),
    ("range two parts", ["--widths-range", "0.25:1"], ["not LOW:HIGH:STEP"]),
    ("range words", ["--widths-range", "a:b:c"], ["not LOW:HIGH:STEP"]),
    ("range beyond 1", ["--widths-range", "0.25:1.25:0.5"], ["outside [0.25, 1.0]"]),
    ("range below 0.25", ["--widths-range", "0.1:0.5:0.1"], ["outside [0.25, 1.0]"]),
    ("calib-size 0", ["--calib-size", "0"], ["--calib-size", "below the minimum 8"]),
    ("calib-size -5", ["--calib-size", "-5"], ["--calib-size", "below the minimum"]),
    ("calib-size word", ["--calib-size", "big"], ["--calib-size", "not an integer"]),
    ("calib-size float", ["--calib-size", "32.5"], ["--calib-size", "not an integer"]),
    ("calib-batches 0", ["--calib-batches", "0"], ["--calib-batches", "below the minimum 1"]),
    ("calib-batch-size 1", ["--calib-batch-size", "1"], ["--calib-batch-size", "minimum 2"]),
    ("verify-images 0", ["--verify-images", "0"], ["--verify-images", "below the minimum 1"]),
    ("device bogus", ["--device", "bogus"], ["'bogus' is not a device"]),
    ("device meta", ["--device", "meta"], ["not a device this tool runs on"]),
    ("device cuda:99", ["--device", "cuda:99"], ["cuda:99 was asked for"]),
    ("formats bogus", ["--formats", "tflite"], ["invalid choice: 'tflite'"]),
    ("unknown option", ["--colour", "red"], ["unrecognized arguments"]),
    ("arch disagrees", ["--arch", "resnet50"], ["not 'resnet50'"]),
    ("calib data unknown", ["--calib-data", "imagenet21k"], ["unknown calibration data"]),
    ("calib data no root", ["--calib-data", "cifar10"], ["needs a path"]),
]


@pytest.mark.parametrize("label,extra,words", CONVERT_OPTIONS, ids=[c[0] for c in CONVERT_OPTIONS])
def test_convert_bad_option(files, tmp_path, capsys, label, extra, words):
    out = tmp_path / "out"
    bad_convert(capsys, [files["r18"], "--out", out, *extra, *FAST], words, out)
    assert not out.exists()


def test_convert_device_cuda_without_gpu(files, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    out = tmp_path / "out"
    bad_convert(capsys, [files["r18"], "--out", out, "--device", "cuda", *FAST],
                ["CUDA is not available", "pass cpu"], out)


def test_convert_missing_out(files, capsys):
    bad_convert(capsys, [files["r18"], *FAST], ["--out"])


def test_convert_bad_default_device(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("US3L_DEVICE", "abacus")
    out = tmp_path / "out"
    bad_convert(capsys, [files["r18"], "--out", out, *FAST], ["US3L_DEVICE", "not a device"], out)


# (label, checkpoint key or callable, words)
CONVERT_FILES = [
    ("nan checkpoint", "nan", ["NaN"]),
    ("inf checkpoint", "inf", ["NaN or Inf"]),
    ("truncated checkpoint", "truncated", ["not a readable US3L checkpoint"]),
    ("text file", "text", ["not a readable US3L checkpoint"]),
    ("missing checkpoint", "missing", ["does not exist"]),
    ("folder as checkpoint", "dir", ["is a folder"]),
    ("outside trained range", "narrow", ["trained range [0.5, 1]"]),
]


@pytest.mark.parametrize("label,key,words", CONVERT_FILES, ids=[c[0] for c in CONVERT_FILES])
def test_convert_bad_checkpoint(files, tmp_path, capsys, label, key, words):
    path = files["dir"] / "absent.pth" if key == "missing" else files[key]
    extra = ["--widths", "0.3"] if key == "narrow" else []
    out = tmp_path / "out"
    bad_convert(capsys, [path, "--out", out, *extra, *FAST], words, out)


def test_convert_malicious_checkpoint_never_runs(files, tmp_path, capsys):
    out = tmp_path / "out"
    bad_convert(capsys, [files["hostile"], "--out", out, *FAST],
                ["not a readable US3L checkpoint"], out)
    assert not files["marker"].exists()


def test_convert_out_is_a_file(files, capsys):
    bad_convert(capsys, [files["r18"], "--out", files["file"], *FAST],
                ["exists and is not a folder"], files["file"])


def test_convert_out_under_a_file(files, capsys):
    bad_convert(capsys, [files["r18"], "--out", files["file"] / "sub" / "out", *FAST],
                ["is a file, not a folder"], files["file"])


def test_convert_out_unwritable(files, capsys):
    path = unwritable_path()
    if path is None:
        pytest.skip("no unwritable folder on this machine")
    bad_convert(capsys, [files["r18"], "--out", path, *FAST], ["not writable"])
    assert not path.exists()


def test_convert_existing_out_untouched_on_bad_input(files, tmp_path, capsys):
    """An output folder holding a finished export (and a killed run's leftover) stays exactly
    as it was when the next command is bad input."""
    out = tmp_path / "out"
    shutil.copytree(files["export"], out)
    (out / ".w0.75.999999.abc.tmp").mkdir()
    bad_convert(capsys, [files["r18c"], "--out", out, "--widths", "0.75", "--calib-size", "0"],
                ["--calib-size"], out)
    bad_convert(capsys, [files["nan"], "--out", out], ["NaN"], out)


@pytest.mark.parametrize("folder,words", [
    ("flat_bad", ["img003.jpg", "cannot be read"]),
    ("tree_bad", ["img005.jpg", "cannot be read"]),
    ("few", ["has 3 images", "need 8"]),
    ("empty", ["no images"]),
    ("nowhere", ["does not exist"]),
], ids=["corrupt jpeg flat", "corrupt jpeg tree", "too few images", "empty folder",
        "missing folder"])
def test_convert_bad_calibration_folder(files, tmp_path, capsys, folder, words):
    out = tmp_path / "out"
    bad_convert(capsys, [files["r18c"], "--out", out, "--widths", "0.5", "--formats",
                         "torchvision", "--calib-data", f"folder:{files['dir'] / folder}",
                         "--calib-batches", "2", "--calib-batch-size", "4", "--calib-size", "16",
                         "--quiet"], words, out)


def test_convert_full_disk_at_the_first_width(files, tmp_path, capsys, monkeypatch):
    """No space left while the first width is written: one line naming the path, exit 2,
    nothing left (a later width's failure is exit 1 with the finished ones kept:
    test_convert_width.py)."""
    import errno

    from transfer.export import torchvision_export

    def full_disk(path, state):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(torchvision_export, "write", full_disk)
    out = tmp_path / "out"
    bad_convert(capsys, [files["r18c"], "--out", out, "--widths", "0.5", "--formats",
                         "torchvision", *FAST], ["cannot write", "torchvision.pth",
                                                 "No space left"], out)
    assert not out.exists()


def test_convert_missing_cifar(files, tmp_path, capsys):
    out = tmp_path / "out"
    bad_convert(capsys, [files["r18"], "--out", out, "--calib-data",
                         f"cifar10:{tmp_path / 'nowhere'}", *FAST], ["cifar10 not found"], out)


def test_convert_cifar_stem_to_detectors(files, tmp_path, capsys):
    out = tmp_path / "out"
    bad_convert(capsys, [files["r18c"], "--out", out, "--formats", "detectron2", *FAST],
                ["cannot go to detectors"], out)


def test_convert_vit_to_mmdet_and_wrong_size(files, tmp_path, capsys):
    out = tmp_path / "out"
    bad_convert(capsys, [files["vit"], "--out", out, "--formats", "mmdet", "--quiet"],
                ["detector exports take resnet18/resnet50"], out)
    bad_convert(capsys, [files["vit"], "--out", out, "--calib-size", "64", "--quiet"],
                ["takes 32x32 images only"], out)


# ------------------------------------------------------------------ width ranges de-duplicated
def _prepare(argv):
    return convert.prepare(convert.parser().parse_args([str(a) for a in argv]))


def test_width_rule_is_monotone():
    """The de-duplication bisects runs of equal plans: it relies on more width never giving
    fewer channels, for every channel count the backbones use."""
    widths = np.round(np.arange(0.25, 1.0 + 1e-9, 0.0005), 6)
    for full in (3, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 320, 384, 512, 1024, 1280, 2048):
        chans = [slim.channels_at(full, float(w)) for w in widths]
        assert all(a <= b for a, b in zip(chans, chans[1:])), full


def test_widths_range_deduplicated_by_channel_plan(files, tmp_path, capsys):
    """0.25:1.0:1e-6 is 750001 widths but a few dozen ResNet-18 plans: one width (the lowest)
    per plan, with a note naming both counts; bisection equals a plain scan on a coarser range."""
    from pretrain.models.resnet import channel_plan
    out = tmp_path / "out"
    plan = _prepare([files["r18"], "--out", out, "--widths-range", "0.25:1.0:1e-6", *FAST])
    key = convert.channel_key("resnet18", plan.slimmable)
    n = len(plan.widths)
    assert 10 < n < 200 and plan.widths[0] == 0.25 and plan.widths[-1] <= 1.0
    assert len({key(w) for w in plan.widths}) == n
    assert plan.range_notes == [f"note: 0.25:1.0:1e-6 gives 750001 widths but only {n} distinct "
                                f"channel plans; exporting {n} (the lowest width of each plan)"]
    assert not out.exists()
    coarse = convert.WidthRange(0.25, 1.0, 0.001, "").widths()
    scan, seen = [], set()
    for w in coarse:
        k = channel_plan("resnet18", w)
        k = (k["stem"], tuple(k["inner"]), tuple(k["out"]))
        if k not in seen:
            seen.add(k)
            scan.append(w)
    assert convert.distinct_plans(coarse, key) == scan
    # an explicit width keeps its plan; the range adds only plans not already asked for
    i = next(i for i in range(1, len(coarse)) if key(coarse[i]) == key(coarse[i - 1]))
    given, lowest = coarse[i], coarse[i - 1]  # the same plan
    plan = _prepare([files["r18"], "--out", out, "--widths", given, "--widths-range",
                     "0.25:1.0:0.001", *FAST])
    assert given in plan.widths and lowest not in plan.widths
    assert len(plan.widths) == len(scan)
    assert "(1 of them already given by --widths)" in plan.range_notes[0]
    # a generic backbone (ViT): the width rule over every channel count of its weights
    vit = _prepare([files["vit"], "--out", out, "--widths-range", "0.25:1.0:0.0001", "--quiet"])
    keys = {convert.channel_key("vit_tiny", vit.slimmable)(w) for w in vit.widths}
    assert len(keys) == len(vit.widths) < 7501


# ----------------------------------------------------------------------------------- probe
def probe_argv(files, out, *extra, source=None):
    src = source if source is not None else ["--export", files["export"]]
    return [*src, "--datasets", "digits", "--out", out, *PROBE_FAST, *extra]


PROBE_OPTIONS = [
    ("batch-size 0", ["--batch-size", "0"], ["--batch-size", "below the minimum 1"]),
    ("batch-size -3", ["--batch-size", "-3"], ["--batch-size", "below the minimum"]),
    ("batch-size word", ["--batch-size", "many"], ["--batch-size", "not an integer"]),
    ("grid nan count", ["--grid", "1e-3", "1e2", "nan"], ["--grid", "not a finite number"]),
    ("grid negative low", ["--grid", "-1", "1e2", "5"], ["--grid", "must be > 0"]),
    ("grid fractional count", ["--grid", "1e-3", "1e2", "2.5"], ["integer COUNT"]),
    ("grid zero count", ["--grid", "1e-3", "1e2", "0"], ["--grid", "must be > 0"]),
    ("grid huge count", ["--grid", "1e-3", "1e2", "100000"], ["COUNT in 1..1000"]),
    ("grid reversed", ["--grid", "1e2", "1e-3", "5"], ["LOW <= HIGH"]),
    ("grid inf high", ["--grid", "1e-3", "inf", "5"], ["not a finite number"]),
    ("grid two values", ["--grid", "1e-3", "1e2"], ["--grid", "expected 3 arguments"]),
    ("image-size 0", ["--image-size", "0"], ["--image-size", "below the minimum 8"]),
    ("image-size 4", ["--image-size", "4"], ["--image-size", "below the minimum 8"]),
    ("widths nan", ["--widths", "nan"], ["width nan", "outside"]),
    ("widths 2", ["--widths", "2"], ["outside [0.25, 1.0]"]),
    ("widths not exported", ["--widths", "0.75"], ["width 0.75 was not exported", "0.5, 0.25"]),
    ("sgd-lr 0", ["--sgd-lr", "0"], ["--sgd-lr", "must be > 0"]),
    ("sgd-lr -1", ["--sgd-lr", "-1"], ["--sgd-lr", "must be > 0"]),
    ("sgd-lr nan", ["--sgd-lr", "nan"], ["--sgd-lr", "not a finite number"]),
    ("sgd-momentum 1.5", ["--sgd-momentum", "1.5"], ["--sgd-momentum", "outside [0, 1]"]),
    ("sgd-momentum 1", ["--sgd-momentum", "1"], ["--sgd-momentum", "must be below 1"]),
    ("sgd-weight-decay -1", ["--sgd-weight-decay", "-1"], ["--sgd-weight-decay", ">= 0"]),
    ("sgd-epochs 0", ["--sgd-epochs", "0"], ["--sgd-epochs", "below the minimum 1"]),
    ("sgd-batch-size 0", ["--sgd-batch-size", "0"], ["--sgd-batch-size", "minimum 1"]),
    ("sgd-milestones 0", ["--sgd-milestones", "0"], ["--sgd-milestones", "minimum 1"]),
    ("workers -1", ["--workers", "-1"], ["--workers", "below the minimum 0"]),
    ("max-iter 0", ["--max-iter", "0"], ["--max-iter", "below the minimum 1"]),
    ("calib-batches 0", ["--calib-batches", "0"], ["--calib-batches", "minimum 1"]),
    ("calib-batch-size 1", ["--calib-batch-size", "1"], ["--calib-batch-size", "minimum 2"]),
    ("calib-size 0", ["--calib-size", "0"], ["--calib-size", "minimum 8"]),
    ("datasets twice", ["--datasets", "digits", "digits"], ["lists a dataset twice"]),
    ("datasets unknown", ["--datasets", "imagenet"], ["invalid choice: 'imagenet'"]),
    ("protocol unknown", ["--protocol", "adam"], ["invalid choice: 'adam'"]),
    ("cifar10 without data-root", ["--datasets", "cifar10"], ["--data-root is required"]),
]


@pytest.mark.parametrize("label,extra,words", PROBE_OPTIONS, ids=[c[0] for c in PROBE_OPTIONS])
def test_probe_bad_option(files, tmp_path, capsys, label, extra, words):
    out = tmp_path / "out"
    bad_probe(capsys, probe_argv(files, out, *extra), words, out)
    assert not out.exists()


def test_probe_needs_one_source(files, tmp_path, capsys):
    out = tmp_path / "out"
    bad_probe(capsys, probe_argv(files, out, source=[]), ["one of the arguments"], out)
    bad_probe(capsys, probe_argv(files, out, source=["--export", files["export"], "--ckpt",
                                                     files["r18c"]]),
              ["not allowed with argument"], out)


def test_probe_out_is_a_file_or_under_one(files, capsys):
    bad_probe(capsys, probe_argv(files, files["file"]), ["exists and is not a folder"],
              files["file"])
    bad_probe(capsys, probe_argv(files, files["file"] / "probe"), ["is a file, not a folder"],
              files["file"])


def test_probe_cache_dir_under_a_file(files, tmp_path, capsys):
    out = tmp_path / "out"
    bad_probe(capsys, probe_argv(files, out, "--cache-dir", files["file"] / "cache"),
              ["--cache-dir", "is a file, not a folder"], out)


def test_probe_out_unwritable(files, capsys):
    path = unwritable_path()
    if path is None:
        pytest.skip("no unwritable folder on this machine")
    bad_probe(capsys, probe_argv(files, path), ["not writable"])


def test_probe_data_root_not_a_folder(files, tmp_path, capsys):
    out = tmp_path / "out"
    bad_probe(capsys, probe_argv(files, out, "--datasets", "cifar10", "--data-root",
                                 files["file"]), ["is not a folder"], out)


@pytest.mark.parametrize("name,layout", [
    ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
    ("flowers102", "flowers-102"), ("pets", "oxford-iiit-pet"), ("dtd", "dtd/dtd")])
def test_probe_missing_dataset_layout(files, tmp_path, capsys, name, layout):
    out = tmp_path / "out"
    (tmp_path / "data").mkdir()
    bad_probe(capsys, probe_argv(files, out, "--datasets", name, "--data-root",
                                 tmp_path / "data"), [f"{name} not found", layout], out)


def test_probe_corrupt_dataset_image_found_late(files, tmp_path, capsys):
    """A damaged image is found only while features are extracted: one line naming it, and the
    half-begun run leaves nothing (the output folder stays absent)."""
    root = tmp_path / "data"
    fixtures.write_dtd(root, (2, 2, 2), size=16)
    victim = sorted((root / "dtd" / "dtd" / "images").rglob("*.jpg"))[5]
    corrupt_jpeg(victim)
    out = tmp_path / "out"
    bad_probe(capsys, probe_argv(files, out, "--datasets", "dtd", "--data-root", root,
                                 "--cache-dir", tmp_path / "cache", "--widths", "0.25"),
              ["dtd image", victim.name, "cannot be read"], out)
    assert not out.exists()


# ------------------------------------------------------------------ the probe's --export folder
def export_copy(files, tmp_path) -> Path:
    dst = tmp_path / "export"
    shutil.copytree(files["export"], dst)
    return dst


def _edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps(meta))


def _hostile_pth(files, folder: Path) -> None:
    torch.save({"conv1.weight": Payload(files["marker"])}, folder / "torchvision.pth")


def _nan_pth(files, folder: Path) -> None:
    state = torch.load(folder / "torchvision.pth", weights_only=True)
    state["conv1.weight"].view(-1)[3] = float("nan")
    torch.save(state, folder / "torchvision.pth")


def _other_width_pth(files, folder: Path) -> None:
    shutil.copy(folder.parent / "w0.25" / "torchvision.pth", folder / "torchvision.pth")


def _truncated_pth(files, folder: Path) -> None:
    blob = (folder / "torchvision.pth").read_bytes()
    (folder / "torchvision.pth").write_bytes(blob[: len(blob) // 2])


EXPORT_FAULTS = [
    ("malicious torchvision.pth", _hostile_pth, ["refused, nothing from it ran"]),
    ("nan torchvision.pth", _nan_pth, ["NaN or Inf", "conv1.weight"]),
    ("weights of another width", _other_width_pth, ["does not load into resnet18 at width 0.5"]),
    ("truncated torchvision.pth", _truncated_pth, ["not a readable torch file"]),
    ("missing torchvision.pth", lambda f, d: (d / "torchvision.pth").unlink(), ["is missing"]),
    ("missing meta.json", lambda f, d: (d / "meta.json").unlink(), ["has no meta.json"]),
    ("meta.json not json", lambda f, d: (d / "meta.json").write_text("{oops"),
     ["is not valid JSON"]),
    ("meta.json other version", lambda f, d: _edit_meta(d, meta_version=7),
     ["not a us3l export meta.json"]),
    ("meta.json width word", lambda f, d: _edit_meta(d, width="half"), ["has width 'half'"]),
    ("meta.json width 5", lambda f, d: _edit_meta(d, width=5), ["has width 5"]),
    ("meta.json width missing", lambda f, d: _edit_meta(d, width=None), ["has width None"]),
    ("meta.json unknown arch", lambda f, d: _edit_meta(d, arch="resnet34"),
     ["architecture 'resnet34'"]),
    ("meta.json files escape", lambda f, d: _edit_meta(d, files={"torchvision": "../x.pth"}),
     ["malformed 'files'"]),
    ("meta.json params word", lambda f, d: _edit_meta(d, params="many"), ["has params 'many'"]),
    ("two folders one width", lambda f, d: shutil.copytree(d, d.parent / "w0.5-copy"),
     ["both hold width 0.5"]),
]


@pytest.mark.parametrize("label,fault,words", EXPORT_FAULTS, ids=[c[0] for c in EXPORT_FAULTS])
def test_probe_bad_export(files, tmp_path, capsys, label, fault, words):
    export = export_copy(files, tmp_path)
    fault(files, export / "w0.50")
    out = tmp_path / "out"
    bad_probe(capsys, probe_argv(files, out, "--cache-dir", tmp_path / "cache",
                                 source=["--export", export]), words, out)
    assert not files["marker"].exists()
    assert not (tmp_path / "cache").exists()


def test_probe_export_folder_missing_or_empty(files, tmp_path, capsys):
    out = tmp_path / "out"
    bad_probe(capsys, probe_argv(files, out, source=["--export", tmp_path / "nowhere"]),
              ["does not exist"], out)
    (tmp_path / "empty").mkdir()
    bad_probe(capsys, probe_argv(files, out, source=["--export", tmp_path / "empty"]),
              ["no exported width"], out)


def test_probe_ignores_a_killed_converters_temp_folder(files, tmp_path, capsys):
    """Only a hidden .w0.50.<pid>.*.tmp/ (with a complete-looking meta.json) is no export."""
    export = tmp_path / "export"
    export.mkdir()
    shutil.copytree(files["export"] / "w0.50", export / ".w0.50.4242.x1y2.tmp")
    out = tmp_path / "out"
    bad_probe(capsys, probe_argv(files, out, source=["--export", export]),
              ["no exported width"], out)


def test_probe_checkpoint_faults(files, tmp_path, capsys):
    out = tmp_path / "out"
    for path, words in ((files["nan"], ["NaN"]), (files["hostile"], ["not a readable"]),
                        (files["dir"] / "absent.pth", ["does not exist"])):
        bad_probe(capsys, probe_argv(files, out, source=["--ckpt", path]), words, out)
    assert not files["marker"].exists()
    bad_probe(capsys, probe_argv(files, out, "--calib-data", "imagenet21k",
                                 source=["--ckpt", files["r18c"]]),
              ["unknown calibration data"], out)


def test_probe_corrupt_calibration_image_found_late(files, tmp_path, capsys):
    """--ckpt with a damaged calibration image: found while the first width is calibrated,
    one line naming the file, nothing left behind."""
    out = tmp_path / "out"
    bad_probe(capsys, probe_argv(files, out, "--widths", "0.25", "--calib-data",
                                 f"folder:{files['dir'] / 'flat_bad'}", "--cache-dir",
                                 tmp_path / "cache", source=["--ckpt", files["r18c"]]),
              ["img003.jpg", "cannot be read"], out)
    assert not out.exists()


def test_probe_full_disk_leaves_nothing(files, tmp_path, capsys, monkeypatch):
    """The disk fills while results are written: one line naming the file, exit 2, and the
    run's own files are removed (the output folder stays absent)."""
    import errno

    from transfer.linear import runner

    def full_disk(path, obj):
        raise cli.write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    monkeypatch.setattr(runner, "_write_json", full_disk)
    out = tmp_path / "out"
    bad_probe(capsys, probe_argv(files, out, "--widths", "0.25", "--cache-dir",
                                 tmp_path / "cache"),
              ["cannot write", "config.json", "No space left"], out)
    assert not out.exists()


def test_probe_hostile_or_damaged_feature_cache_is_a_miss(files, tmp_path, capsys):
    """Cache files replaced by a pickle with a payload, by NaN features or by junk are never
    trusted: the probe re-extracts, nothing from them runs, the result is the same."""
    cache, argv = tmp_path / "cache", ["--widths", "0.25", "--cache-dir", tmp_path / "cache"]
    assert linear_probe.main([str(a) for a in probe_argv(files, tmp_path / "a", *argv)]) == 0
    first = json.loads((tmp_path / "a" / "results.json").read_text())["rows"][0]["datasets"]
    cached = sorted(cache.rglob("*.pt"))
    assert len(cached) == 2  # digits train and test
    blob = torch.load(cached[0], weights_only=True)
    blob["features"][0, 0] = float("nan")
    torch.save(blob, cached[0])
    torch.save({"format": "us3l-features-v1", "features": Payload(files["marker"])}, cached[1])
    assert linear_probe.main([str(a) for a in probe_argv(files, tmp_path / "b", *argv)]) == 0
    assert not files["marker"].exists()
    again = json.loads((tmp_path / "b" / "results.json").read_text())["rows"][0]["datasets"]
    assert again["digits"]["value"] == pytest.approx(first["digits"]["value"], abs=1e-6)
    for path in cached:
        blob = torch.load(path, weights_only=True)
        assert torch.isfinite(blob["features"]).all()
    capsys.readouterr()


def test_probe_sgd_divergence_exit_3(files, tmp_path, capsys):
    """lr 1e38 overflows float32 on the first steps: exit 3, one line naming width and
    dataset, nothing written."""
    out = tmp_path / "out"
    bad_probe(capsys, probe_argv(files, out, "--protocol", "sgd", "--widths", "0.25",
                                 "--sgd-lr", "1e38", "--sgd-epochs", "2", "--sgd-batch-size",
                                 "256"),
              ["width 0.25", "digits", "diverged", "lower --sgd-lr"], out,
              want_code=cli.EXIT_DIVERGED)
    assert not out.exists()


def test_probe_command_line_one_line(files, tmp_path):
    """The real command line (cli.run in __main__): argparse's error is one line, exit 2."""
    out = tmp_path / "out"
    run_cmd([sys.executable, ROOT / "tools" / "linear_probe.py", "--export", files["export"],
             "--datasets", "digits", "--batch-size", "0", "--out", out],
            must_mention=["--batch-size"], unchanged=out, timeout=120)


# ------------------------------------------------------------------ the converter killed
def _start_converter(ckpt: Path, out: Path, widths) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "convert_width.py"), str(ckpt), "--out", str(out),
         "--widths", *map(str, widths), "--formats", "torchvision", "detectron2",
         "--calib-batches", "2", "--calib-batch-size", "4", "--calib-size", "32",
         "--verify-images", "4", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=interruptible)


def _kill_when_writing(proc: subprocess.Popen, out: Path, folder: str, sig: int,
                       timeout: float = 120) -> Path:
    """Send ``sig`` once ``out/.<folder>.*.tmp/`` exists (the width is being written)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tmp = sorted(out.glob(f".{folder}.*.tmp")) if out.is_dir() else []
        if tmp:
            proc.send_signal(sig)
            return tmp[0]
        if proc.poll() is not None:
            pytest.fail(f"the converter ended (exit {proc.returncode}) before {folder} was "
                        f"written: {proc.stderr.read()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"{folder} was never written")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_converter_interrupted_mid_width(files, tmp_path, sig):
    """Killed while w0.50 is being written (w0.25 finished): one line, exit 128+signal, no
    temp folder left, the finished width and its reports kept; the probe reads w0.25 only."""
    out = tmp_path / "out"
    proc = _start_converter(files["r18"], out, [0.25, 0.5])
    _kill_when_writing(proc, out, "w0.50", sig)
    _, err = proc.communicate(timeout=120)
    check_one_line(err, proc.returncode, 128 + int(sig), [f"interrupted by {sig.name}"])
    assert sorted(p.name for p in out.iterdir()) == ["table6.md", "verification.md", "w0.25"]
    assert "\n| 0.25 |" in (out / "verification.md").read_text()
    from transfer.linear.backbones import ExportSource
    assert ExportSource(out).widths() == [0.25]


def test_converter_sigkill_leftover_ignored_then_removed(files, tmp_path, capsys):
    """SIGKILL while w0.25 is being written leaves a hidden temp folder: the probe does not
    read it (no exported width, exit 2, nothing written) and the next converter run, even for
    another width, removes it."""
    out = tmp_path / "out"
    proc = _start_converter(files["r18"], out, [0.25])
    _kill_when_writing(proc, out, "w0.25", signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in out.iterdir())
    assert leftovers and all(n.startswith(".w0.25.") and n.endswith(".tmp") for n in leftovers)
    probe_out = tmp_path / "probe"
    bad_probe(capsys, probe_argv(files, probe_out, source=["--export", out]),
              ["no exported width"], probe_out)
    assert sorted(p.name for p in out.iterdir()) == leftovers  # the reader removed nothing
    assert convert.main([str(files["r18"]), "--out", str(out), "--widths", "0.5",
                         "--formats", "torchvision", *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["table6.md", "verification.md", "w0.50"]
