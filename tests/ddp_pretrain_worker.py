"""Run by test_pretrain_ddp.py under torchrun: tools/pretrain.py's own main(), plus a record of
what the engine did on this rank (data indices drawn, SyncBN, DDP, final weights) in a JSON file.

    ddp_pretrain_worker.py OUT ARGS...        one run of tools/pretrain.py ARGS -> OUT/rankR.json
    ddp_pretrain_worker.py --runs SPEC OUT    several runs in ONE launch (process start-up and
                                              the process group are paid once): SPEC is a JSON
                                              list of {"name", "args"}; -> OUT/NAME/rankR.json

The record is taken by wrapping, not replacing, the real sampler and trainer. A run that fails
before it builds a trainer (bad input) records its exit status only.
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
    trainers.append(self)
    _init(self, *args, **kwargs)


def digest(state: dict) -> str:
    """SHA-256 over a state dict's keys and bytes (bit-identical weights <=> equal digests)."""
    h = hashlib.sha256()
    for key, value in sorted(state.items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _cli():
    spec = importlib.util.spec_from_file_location("pretrain_cli", ROOT / "tools" / "pretrain.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def run_one(cli, out: Path, argv: list[str]) -> int:
    """tools/pretrain.py main(argv) on this rank; its record in OUT/rankR.json."""
    seen.clear()
    trainers.clear()
    rc = cli.main(argv)
    out.mkdir(parents=True, exist_ok=True)
    if not trainers or not hasattr(trainers[0], "method"):  # stopped before a trainer existed
        rank = int(os.environ.get("RANK", "0"))
        (out / f"rank{rank}.json").write_text(json.dumps({"rc": rc, "rank": rank}))
        return rc
    t = trainers[0]
    import torch.nn as nn
    plain_bn = sum(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in t.method.modules())
    record = {"rc": rc, "rank": t.rank, "world": t.world, "indices": seen,
              "ddp": t.ddp is not None, "find_unused": bool(t.ddp and t.ddp.find_unused_parameters),
              "sync_bn": t.sync_bn, "plain_bn": plain_bn, "device": str(t.device),
              "iterations": [h["iteration"] for h in t.history],
              "widths": [[r["width"] for r in h["records"]] for h in t.history],
              "gather": t.method.gather, "queue": t.method.queue is not None,
              "backbone": digest(t.method.online.backbone.state_dict()),
              "params": digest(dict(t.method.named_parameters())),
              "method": digest(t.method.state_dict())}
    (out / f"rank{t.rank}.json").write_text(json.dumps(record))
    return rc


def main() -> int:
    data_mod.ResumableSampler.__iter__ = _recording_iter
    engine.Trainer.__init__ = _recording_init
    cli = _cli()
    if sys.argv[1] == "--runs":
        spec, out = json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3])
        return max(run_one(cli, out / run["name"], run["args"]) for run in spec)
    return run_one(cli, Path(sys.argv[1]), sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
