#!/usr/bin/env python
"""Per-width latency ratios against MAC ratios, side by side in one run (issue #14).

For each width r the static network at r (random weights: latency does not depend on them) is
exported to ONNX (transfer/export/onnx_export.py) and timed with onnxruntime on the CPU and with
torch eager (transfer/deploy/latency.py: explicit threads, warm-up, median of --reps calls),
interleaved width by width so a slow spell of a shared machine hits every width. MACs come from
torch.utils.flop_counter (transfer/export/macs.py). Printed: latency(r)/latency(1.0) beside
MACs(r)/MACs(1.0), and the goal latency(0.25x)/latency(1.0x) <= 2 x MACs(0.25x)/MACs(1.0x) with
onnxruntime on the CPU.

    python bench/latency_vs_macs.py                    # ResNet-50, ImageNet stem, 224 px, batch 1
    python bench/latency_vs_macs.py --arch resnet18 --size 224 --threads 2 --reps 30
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pretrain import cli  # noqa: E402
from pretrain.models import build_backbone  # noqa: E402
from transfer.deploy import latency  # noqa: E402
from transfer.export import macs, onnx_export  # noqa: E402

WIDTHS = (0.25, 0.5, 0.75, 1.0)
GOAL = 2.0  # issue #14: latency ratio at 0.25x within twice the MAC ratio


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="latency_vs_macs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=cli.int_at_least(32), default=224)
    p.add_argument("--batch", type=cli.int_at_least(1), default=1)
    p.add_argument("--threads", type=cli.int_at_least(1), default=1)
    p.add_argument("--reps", type=cli.int_at_least(3), default=30)
    p.add_argument("--warmup", type=cli.int_at_least(0), default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = {"arch": args.arch, "stem": "imagenet"}
    calls, mac = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in WIDTHS:
            model = build_backbone(cfg, width=w).eval()
            path, _ = onnx_export.write(Path(tmp) / f"w{w}.onnx", model, args.size)
            session = latency.onnx_session(path, args.threads, torch.device("cpu"))
            x = torch.randn(args.batch, 3, args.size, args.size)
            stages = onnx_export.StageOutputs(model).eval()

            def eager(stages=stages, x=x):
                with torch.inference_mode():
                    return stages(x)
            calls[w] = {"onnxruntime": lambda s=session, x=x.numpy(): s.run(None, {"images": x}),
                        "torch": eager}
            mac[w] = macs.static_macs(cfg, w, (args.size,))[args.size]
        times = {w: {} for w in WIDTHS}
        for backend in ("onnxruntime", "torch"):
            for w in WIDTHS:
                times[w][backend] = latency.time_call(calls[w][backend], args.warmup, args.reps,
                                                      desc=f"{backend} {w:g}x")["median_ms"]
    print(f"{args.arch} at {args.size} px, batch {args.batch}, {args.threads} thread(s), median "
          f"of {args.reps} calls after {args.warmup} warm-up")
    print("| width | MACs | MACs ratio | ORT ms | ORT ratio | ORT ratio / MACs ratio "
          "| torch ms | torch ratio | torch ratio / MACs ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in WIDTHS:
        m = mac[w] / mac[1.0]
        o, t = times[w]["onnxruntime"], times[w]["torch"]
        ro, rt = o / times[1.0]["onnxruntime"], t / times[1.0]["torch"]
        print(f"| {w:g}x | {macs.human(mac[w], 'G')} | {m:.3f} | {o:.2f} | {ro:.3f} | "
              f"{ro / m:.2f} | {t:.2f} | {rt:.3f} | {rt / m:.2f} |")
    m25 = mac[0.25] / mac[1.0]
    r25 = times[0.25]["onnxruntime"] / times[1.0]["onnxruntime"]
    ok = r25 <= GOAL * m25
    print(f"goal: latency(0.25x)/latency(1.0x) = {r25:.3f} <= {GOAL:g} x MACs ratio "
          f"{m25:.3f} = {GOAL * m25:.3f} (onnxruntime, CPU): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "latency_vs_macs.py"))
