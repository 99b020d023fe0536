"""Nothing runs from a file, nothing half-written is read, nothing is left to rot: the one owner
(pretrain/safe_io.py) and the places that rely on it (export readers, the converter's clean-up).
The engines' side (a hostile detectron2.pkl / mmdet.pth refused before the engine reads it) is in
tests/test_detection.py::test_bad_input_fails_in_one_line."""
from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain import safe_io

sys.path.insert(0, str(Path(__file__).parent))
from export_helpers import make_checkpoint  # noqa: E402


class Payload:
    """Unpickling this calls os.system: the file must be refused before that happens."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_hostile_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": Payload(marker)},
                                   "__author__": "x"}))


def test_restricted_unpickler_reads_plain_data_and_arrays_and_refuses_code(tmp_path):
    plain = {"model": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float64(2.5)},
             "__author__": "us3l", "matching_heuristics": True, "list": [1, "x", None, (2, 3)]}
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL))
    back = safe_io.load_pickle(path)
    np.testing.assert_array_equal(back["model"]["a"], plain["model"]["a"])
    assert back["model"]["b"] == 2.5 and back["list"] == [1, "x", None, (2, 3)]

    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pkl"
    write_hostile_pickle(hostile, marker)
    with pytest.raises(safe_io.UnsafeFileError,
                       match=r"refused, nothing from it ran: global 'posix.system' is not allowed"):
        safe_io.load_pickle(hostile, "detectron2 export")
    assert not marker.exists()
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(safe_io.UnsafeFileError, match="is not a readable pickle"):
        safe_io.load_pickle(tmp_path / "junk.pkl")
    with pytest.raises(safe_io.UnsafeFileError, match="does not exist"):
        safe_io.load_pickle(tmp_path / "none.pkl")


def test_torch_files_load_weights_only_with_one_line_errors(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, good)
    assert torch.equal(safe_io.load_torch(good)["state_dict"]["w"], torch.ones(2))
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pth"
    torch.save({"state_dict": Payload(marker)}, hostile)
    with pytest.raises(safe_io.UnsafeFileError) as err:
        safe_io.load_torch(hostile, "mmdet export")
    assert "\n" not in str(err.value) and "refused, nothing from it ran" in str(err.value)
    assert not marker.exists()
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:40])
    with pytest.raises(safe_io.UnsafeFileError, match="not a readable torch file"):
        safe_io.load_torch(tmp_path / "cut.pth")


def test_atomic_write_publishes_whole_files_and_stale_temps_are_removed(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    safe_io.atomic_write(target, lambda tmp: Path(tmp).write_text("{}"))
    assert target.read_text() == "{}" and sorted(p.name for p in target.parent.iterdir()) == \
        ["metrics.json"]

    def killed(tmp):
        Path(tmp).write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        safe_io.atomic_write(target, killed)
    assert target.read_text() == "{}" and len(list(target.parent.iterdir())) == 1

    folder = tmp_path / "exports"
    (folder / ".w0.50.abc123.tmp").mkdir(parents=True)
    (folder / ".w0.50.abc123.tmp" / "meta.json").write_text("{}")
    (folder / ".w0.50.old-123.tmp").mkdir()
    (folder / f".w0.50.{os.getppid()}.live.tmp").mkdir()  # a running writer's: kept
    (folder / ".w0.25.def.tmp").mkdir()             # another width's: not w0.50's to remove
    (folder / ".keep").write_text("")               # not a temp: never touched
    (folder / "w0.50").mkdir()
    removed = safe_io.remove_stale(folder, "w0.50")
    assert sorted(p.name for p in removed) == [".w0.50.abc123.tmp", ".w0.50.old-123.tmp"]
    assert sorted(p.name for p in folder.iterdir()) == [
        ".keep", ".w0.25.def.tmp", f".w0.50.{os.getppid()}.live.tmp", "w0.50"]
    paths = [folder / "w0.50" / "meta.json", folder / ".w0.25.def.tmp" / "meta.json",
             folder / "x.tmp", Path("rel/w1.00/meta.json")]
    assert safe_io.published(paths) == [paths[0], paths[3]]


def test_killed_converter_leftovers_are_ignored_by_readers_and_removed_by_the_next_run(tmp_path):
    """A .w0.50.*.tmp/ with a meta.json (what a SIGKILL mid-export leaves) is not an export to
    the probe's reader, and the converter's next run removes it (and only it)."""
    from transfer.export.convert import main as convert
    from transfer.linear.backbones import ExportSource

    ckpt = make_checkpoint(tmp_path / "ckpt.pth", arch="resnet18", stem="cifar",
                           data={"name": "synthetic", "image_size": 32})
    out = tmp_path / "exports"
    args = [str(ckpt), "--out", str(out), "--formats", "torchvision", "--calib-data",
            "synthetic", "--calib-batches", "1", "--calib-batch-size", "2", "--calib-size", "32",
            "--verify-images", "1", "--quiet"]
    assert convert([*args, "--widths", "1.0"]) == 0
    stale = out / ".w0.50.x1y2.tmp"
    stale.mkdir()
    meta = json.loads((out / "w1.00" / "meta.json").read_text())
    (stale / "meta.json").write_text(json.dumps(dict(meta, width=0.5)))
    (stale / "torchvision.pth").write_bytes((out / "w1.00" / "torchvision.pth").read_bytes())
    (out / ".notes").write_text("mine")
    assert ExportSource(out).widths() == [1.0]       # the half-written 0.5x is not an export
    assert convert([*args, "--widths", "0.5"]) == 0
    assert not stale.exists() and (out / ".notes").read_text() == "mine"
    assert ExportSource(out).widths() == [1.0, 0.5]


def test_remove_own_removes_only_this_process_temp_entries(tmp_path):
    """An interrupt between creating a temp folder and the code that owns it: the writer removes
    its own ``.NAME.<pid>.*.tmp`` entries, never another writer's or another name's."""
    mine = tmp_path / f"{safe_io.temp_prefix('w0.50')}abc{safe_io.TEMP_SUFFIX}"
    mine_file = tmp_path / f"{safe_io.temp_prefix('w0.50')}def{safe_io.TEMP_SUFFIX}"
    other_pid = tmp_path / f".w0.50.{os.getpid() + 1}.abc{safe_io.TEMP_SUFFIX}"
    other_name = tmp_path / f"{safe_io.temp_prefix('w0.25')}abc{safe_io.TEMP_SUFFIX}"
    for folder in (mine, other_pid, other_name):
        folder.mkdir()
        (folder / "meta.json").write_text("{}")
    mine_file.write_text("x")
    assert sorted(safe_io.remove_own(tmp_path, "w0.50")) == sorted([mine, mine_file])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other_pid.name, other_name.name])
