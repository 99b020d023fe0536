"""Run by test_pretrain_ddp.py under torchrun: tools/pretrain.py's own main(), plus a record of
what the engine did on this rank (data indices drawn, SyncBN, DDP, final weights) in OUT/rankR.json.

The record is taken by wrapping, not replacing, the real sampler and trainer.
"""
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain import data as data_mod  # noqa: E402
from pretrain import engine  # noqa: E402

seen: list[list[int]] = []
trainers: list = []
_iter, _init = data_mod.ResumableSampler.__iter__, engine.Trainer.__init__


def _recording_iter(self):
    for i in _iter(self):
        seen.append([self.epoch, i])
        yield i


def _recording_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    trainers.append(self)


def digest(state: dict) -> str:
    """SHA-256 over a state dict's keys and bytes (bit-identical weights <=> equal digests)."""
    h = hashlib.sha256()
    for key, value in sorted(state.items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    data_mod.ResumableSampler.__iter__ = _recording_iter
    engine.Trainer.__init__ = _recording_init
    spec = importlib.util.spec_from_file_location("pretrain_cli", ROOT / "tools" / "pretrain.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    rc = cli.main(argv)
    t = trainers[0]
    import torch.nn as nn
    plain_bn = sum(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in t.method.modules())
    record = {"rc": rc, "rank": t.rank, "world": t.world, "indices": seen,
              "ddp": t.ddp is not None, "find_unused": bool(t.ddp and t.ddp.find_unused_parameters),
              "sync_bn": t.sync_bn, "plain_bn": plain_bn, "device": str(t.device),
              "widths": [[r["width"] for r in h["records"]] for h in t.history],
              "backbone": digest(t.method.online.backbone.state_dict()),
              "params": digest(dict(t.method.named_parameters())),
              "method": digest(t.method.state_dict())}
    (out / f"rank{t.rank}.json").write_text(json.dumps(record))
    return rc


if __name__ == "__main__":
    sys.exit(main())
