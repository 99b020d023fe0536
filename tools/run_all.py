#!/usr/bin/env python
"""The main job end to end: pretrain -> convert -> linear probe -> detection fine-tune -> report.

    python tools/run_all.py --preset demo                  # built-in data, ~15 min on 2 CPU cores
    python tools/run_all.py --preset ci --out /tmp/us3l    # the reduced version the tests run
    python tools/run_all.py --preset cifar100-r18 --data-root /data --out runs/c100
    python tools/run_all.py --preset imagenet-r50 --data-root /data/imagenet/train \\
        --det-data /data/detectron2 --gpus 8 --out runs/in-r50

Every step calls the project's own command line (logged in OUT/logs/, listed in the report) and
is skipped on a re-run when its inputs did not change (OUT/.steps/).

Bad input (an unknown preset, a real-data preset without --data-root, a data folder that does not
exist, --gpus below 1, --out under a regular file, a --pretrain-override that is not KEY=VALUE):
one line, exit 2, checked before OUT is created. A step that fails: one line naming the step, its
exit status and its log (OUT/logs/STEP.log), exit 1; the steps before it stay done and a re-run
continues from there. Exit statuses: pretrain/cli.py.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pretrain import cli  # noqa: E402
from transfer.pipeline import Pipeline, Step, StepFailed, output_folder_problem  # noqa: E402

PROG = "run_all.py"

# Each preset: how to pretrain, which widths, which probe datasets, which detection runs.
PRESETS = {
    "demo": {
        "pretrain_config": "configs/pretrain/demo.yaml",
        "pretrain_overrides": ["model.stem=imagenet", "data.image_size=64", "schedule.iters=100"],
        "builtin_data": True,
        "widths": [0.25, 0.5, 0.75, 1.0],
        "calib_batches": 8,
        "probe_datasets": ["cifar10", "digits"],
        "probe_image_size": 64,
        "det_widths": [0.5, 1.0],
        "det_tasks": ["voc", "coco"],
        "det_engines": ["detectron2", "mmdet"],
        "det_iters": 40,
        "det_images": {"train": 24, "test": 12, "size": 128},
    },
    "ci": {  # the reduced pipeline the test suite runs: every step, every artefact, minutes
        "pretrain_config": "configs/pretrain/demo.yaml",
        "pretrain_overrides": ["model.stem=imagenet", "data.image_size=64", "schedule.iters=6",
                               "data.synthetic.train_size=128", "data.synthetic.val_size=64",
                               "monitor.knn_every=0", "checkpoint.every_iters=3"],
        "builtin_data": True,
        "widths": [0.25, 1.0],
        "calib_batches": 2,
        "probe_datasets": ["cifar10", "digits"],
        "probe_image_size": 32,
        "det_widths": [0.25],
        "det_tasks": ["voc", "coco"],
        "det_engines": ["detectron2", "mmdet"],
        "det_iters": 2,
        "det_images": {"train": 4, "test": 3, "size": 96},
        "det_score_thresh": 0.0,  # every detection kept: the scores never depend on learning
    },
    "cifar100-r18": {
        "pretrain_config": "configs/pretrain/us3l_r18_cifar100.yaml",
        "pretrain_overrides": [],
        "builtin_data": False,
        "widths": [0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        "calib_batches": 50,
        "probe_datasets": ["cifar100"],
        "probe_protocol": "sgd",
        "probe_image_size": 32,
        "det_widths": [],
    },
    "imagenet-r50": {
        "pretrain_config": "configs/pretrain/us3l_r50_folder.yaml",
        "pretrain_overrides": [],
        "builtin_data": False,
        "widths": [0.25, 0.5, 0.75, 1.0],
        "calib_batches": 50,
        "probe_datasets": ["cifar10", "cifar100", "flowers102", "pets", "dtd"],
        "probe_image_size": 224,
        "det_widths": [0.25, 0.5, 0.75, 1.0],
        "det_tasks": ["voc", "coco"],
        "det_engines": ["detectron2", "mmdet"],
        "det_iters": None,  # the configs' full schedules
    },
}


def width_dir(width: float) -> str:
    return f"w{width:.2f}"


def short_schedule(engine: str, iters: int, size: int, score_thresh: float | None = None
                   ) -> list[str]:
    """Engine options for a brief CPU fine-tune on the built-in sets (total batch 2, so the lr is
    the protocol's scaled linearly: 0.0025; small images). ``score_thresh`` 0 keeps every
    detection, so that a short run's evaluation never depends on what it learned."""
    if engine == "detectron2":
        opts = ["--total-batch", "2", "SOLVER.MAX_ITER", str(iters),
                "SOLVER.STEPS", f"({max(1, int(iters * 0.8))},)",
                "SOLVER.WARMUP_ITERS", str(max(1, iters // 5)), "SOLVER.CHECKPOINT_PERIOD", "100000",
                "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size),
                "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size),
                "DATALOADER.NUM_WORKERS", "0", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64",
                "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "128",
                "MODEL.RPN.POST_NMS_TOPK_TEST", "128", "TEST.PRECISE_BN.ENABLED", "False", "SEED", "0"]
        if score_thresh is not None:
            opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(score_thresh)]
        return opts
    opts = ["--total-batch", "2", "--max-iters", str(iters), "--img-scale", str(size), str(size),
            "--cfg-options", "train_dataloader.num_workers=0", "test_dataloader.num_workers=0",
            "model.train_cfg.rpn.sampler.num=64", "model.train_cfg.rcnn.sampler.num=32",
            "model.train_cfg.rpn_proposal.max_per_img=128", "model.test_cfg.rpn.max_per_img=128",
            "randomness.seed=0"]
    if score_thresh is not None:
        opts.append(f"model.test_cfg.rcnn.score_thr={score_thresh}")
    return opts


def build_steps(args, preset: dict, out: Path) -> list[Step]:
    py = sys.executable
    data = out / "data"
    ckpt = out / "pretrain" / "checkpoint.pth"
    export = out / "export"
    steps: list[Step] = []
    probe_root = Path(args.data_root) if args.data_root else data / "cls"
    det_root = Path(args.det_data) if args.det_data else data / "det"

    if preset["builtin_data"]:
        steps.append(Step("data-classification",
                          [py, "-m", "transfer.fixtures", str(probe_root), "--datasets", "cifar10",
                           "--per-class", "40", "--size", "32"],
                          outputs=[probe_root / "cifar-10-batches-py" / "test_batch"]))
        if preset["det_widths"]:
            d = preset["det_images"]
            steps.append(Step("data-detection",
                              [py, "-m", "transfer.detection.synthetic", str(det_root), "--train",
                               str(d["train"]), "--test", str(d["test"]), "--size", str(d["size"])],
                              outputs=[det_root / "VOC2007" / "ImageSets" / "Main" / "test.txt",
                                       det_root / "coco" / "annotations" / "instances_val2017.json"]))

    overrides = list(preset["pretrain_overrides"]) + [f"output.dir={out / 'pretrain'}"]
    if args.data_root and not preset["builtin_data"]:
        overrides.append(f"data.root={args.data_root}")
    overrides += args.pretrain_override
    pretrain_cmd = [py, str(ROOT / "tools" / "pretrain.py"), "--config",
                    str(ROOT / preset["pretrain_config"]), "--no-progress", *overrides]
    if args.gpus > 1:
        pretrain_cmd = [py, "-m", "torch.distributed.run", f"--nproc_per_node={args.gpus}",
                        *pretrain_cmd[1:]]
    steps.append(Step("pretrain", pretrain_cmd, outputs=[ckpt],
                      inputs=[ROOT / preset["pretrain_config"]]))

    widths = [str(w) for w in preset["widths"]]
    steps.append(Step("convert",
                      [py, str(ROOT / "tools" / "convert_width.py"), str(ckpt), "--widths", *widths,
                       "--calib-batches", str(preset["calib_batches"]), "--out", str(export),
                       "--quiet"],
                      outputs=[export / width_dir(w) / "meta.json" for w in preset["widths"]],
                      inputs=[ckpt]))

    probe_cmd = [py, str(ROOT / "tools" / "linear_probe.py"), "--export", str(export), "--widths",
                 *widths, "--datasets", *preset["probe_datasets"], "--data-root", str(probe_root),
                 "--image-size", str(preset["probe_image_size"]),
                 "--protocol", preset.get("probe_protocol", "lbfgs"), "--out", str(out / "probe"),
                 "--cache-dir", str(out / "cache" / "features")]
    if preset["builtin_data"]:
        probe_cmd.append("--no-verify-md5")
    steps.append(Step("linear-probe", probe_cmd, outputs=[out / "probe" / "results.json"],
                      inputs=[export / width_dir(w) / "torchvision.pth" for w in preset["widths"]]))

    det_env = dict(os.environ, DETECTRON2_DATASETS=str(det_root))
    for engine in preset.get("det_engines", []) if (preset["det_widths"] and
                                                    (preset["builtin_data"] or args.det_data)) else []:
        for task in preset["det_tasks"]:
            for w in preset["det_widths"]:
                run_dir = out / "det" / f"{engine}_{task}_{width_dir(w)}"
                cmd = ["bash", str(ROOT / "tools" / "train_det.sh"), engine, task,
                       str(export / width_dir(w)), "--out", str(run_dir), "--gpus", str(args.gpus)]
                if preset["det_iters"]:
                    cmd += short_schedule(engine, preset["det_iters"], preset["det_images"]["size"],
                                          preset.get("det_score_thresh"))
                # a re-run (new export) starts a new run: the old run folder is another run's
                steps.append(Step(f"det-{engine}-{task}-{width_dir(w)}", cmd,
                                  outputs=[run_dir / "metrics.json"],
                                  inputs=[export / width_dir(w) / "meta.json"], env=det_env,
                                  clean=[run_dir]))
    if any(s.name.startswith("det-") for s in steps):
        steps.append(Step("collect-detection",
                          [py, str(ROOT / "tools" / "collect_results.py"), str(out / "det"),
                           "--out", str(out / "det" / "report")],
                          outputs=[out / "det" / "report"],
                          inputs=[s.outputs[0] for s in steps if s.name.startswith("det-")]))
    return steps


def check_args(args, preset: dict) -> str | None:
    """What is wrong with the command line, in one line, or None."""
    if not preset["builtin_data"] and not args.data_root:
        return (f"preset {args.preset} trains on real data: pass --data-root (see README, "
                f"'Real datasets')")
    for flag, value in (("--data-root", args.data_root), ("--det-data", args.det_data)):
        if value is not None and not Path(value).is_dir():
            return f"{flag} {value} is not a folder; pass the folder that holds the data"
    for item in args.pretrain_override:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            return (f"--pretrain-override {item!r} is not KEY=VALUE (e.g. "
                    f"--pretrain-override schedule.iters=200)")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--out", default=None, help="output folder (default runs/<preset>)")
    parser.add_argument("--data-root", default=None,
                        help="classification data root in torchvision layouts (real-data presets)")
    parser.add_argument("--det-data", default=None,
                        help="detection root holding VOC2007/VOC2012/coco (real-data presets)")
    parser.add_argument("--gpus", type=cli.int_at_least(1), default=1,
                        help="processes per machine (torchrun/launchers)")
    parser.add_argument("--pretrain-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for tools/pretrain.py (repeatable)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    problem = check_args(args, preset)
    out = Path(args.out or ROOT / "runs" / args.preset).resolve()
    if problem is None:
        folder_problem = output_folder_problem(out)
        if folder_problem:
            problem = f"--out {args.out or out}: {folder_problem}; pass another --out"
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    pipeline = Pipeline(out)
    try:
        for step in build_steps(args, preset, out):
            pipeline.run(step)
    except StepFailed as err:
        print(f"{PROG}: error: {cli.one_line(err, 600)}", file=sys.stderr)
        return cli.EXIT_STEP_FAILED

    from pretrain.safe_io import UnsafeFileError
    from transfer.report.summary import collect, table, write_report
    try:
        report = write_report(out, preset_name=args.preset, steps=pipeline.records,
                              argv=[sys.executable, str(Path(__file__).resolve()),
                                    *(sys.argv[1:] if argv is None else argv)])
        print(table(collect(out)))
    except UnsafeFileError as err:
        print(f"{PROG}: error: report: {cli.one_line(err, 600)}", file=sys.stderr)
        return cli.EXIT_STEP_FAILED
    print(f"report: {report}  (plots and report.html beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
