#!/usr/bin/env python
"""One import per source format, each taken through the converter (verification on) and the
linear probe on the built-in digits: the end-to-end check of tools/import_checkpoint.py.

    python bench/import_formats.py [--out /tmp/us3l-imports]

Sources are written in each codebase's exact on-disk layout with random weights (the builders of
tests/test_import_checkpoint.py; no downloads), so the probe accuracies only show that every
downstream tool takes the imported checkpoint unchanged, not what the methods are worth.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_sources(folder: Path) -> list[tuple[str, str, Path, list[str]]]:
    """(format, arch, source file, widths to export) for each of the five formats."""
    import argparse as ap

    import torch

    from tests import test_import_checkpoint as T
    from transfer.imports import from_timm

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    _, state = T.tv_backbone("resnet18")
    torch.save({"model": state, "epoch": 3}, folder / "torchvision_r18.pth")
    out.append(("torchvision", "resnet18", folder / "torchvision_r18.pth", ["1.0"]))

    _, state = T.timm_source("resnet18")
    torch.save({"epoch": 5, "arch": from_timm.TIMM_NAMES["resnet18"], "state_dict": state,
                "args": ap.Namespace(model="resnet18")}, folder / "timm_r18.pth.tar")
    out.append(("timm", "resnet18", folder / "timm_r18.pth.tar", ["1.0"]))

    T.solo_source(folder / "solo")
    out.append(("solo-learn", "resnet18", folder / "solo" / "byol-ep=9.ckpt", ["1.0"]))

    _, state = T.tv_backbone("resnet18", seed=5)
    sd = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    sd["neck.mlp.0.weight"] = torch.randn(8, 512)
    torch.save({"meta": {"epoch": 3, "iter": 30}, "state_dict": sd}, folder / "mmpretrain_r18.pth")
    out.append(("mmpretrain", "resnet18", folder / "mmpretrain_r18.pth", ["1.0"]))

    T.official_source(folder / "official_r18.pth.tar", "resnet18", "imagenet", track=False)
    out.append(("us3l-official", "resnet18", folder / "official_r18.pth.tar", ["0.25", "0.5", "1.0"]))
    return out


def run(cmd: list[str]) -> str:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    proc = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, text=True,
                          capture_output=True)
    print(proc.stdout.rstrip())
    if proc.returncode:
        print(proc.stderr.rstrip())
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}")
    return proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/us3l-imports")
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for fmt, arch, src, widths in write_sources(out / "sources"):
        ckpt = out / f"{fmt}.pth"
        run(["tools/import_checkpoint.py", src, "--from", fmt, "--arch", arch, "--out", ckpt])
        run(["tools/convert_width.py", ckpt, "--out", out / f"export_{fmt}", "--widths", *widths,
             "--calib-data", "digits", "--calib-batches", "2", "--calib-batch-size", "16",
             "--calib-size", "64", "--quiet"])
        run(["tools/linear_probe.py", "--export", out / f"export_{fmt}", "--datasets", "digits",
             "--image-size", "32", "--out", out / f"probe_{fmt}"])
        results = json.loads((out / f"probe_{fmt}" / "results.json").read_text())
        rows.append((fmt, results))
    print("\n| source | width | digits top-1 |\n|---|---|---|")
    for fmt, results in rows:
        for r in results["rows"]:
            print(f"| {fmt} | {r['width']:g} | {r['datasets']['digits']['value']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
