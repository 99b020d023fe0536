#!/usr/bin/env python
"""The main job end to end: pretrain -> convert -> linear probe -> detection fine-tune -> report.

    python tools/run_all.py --preset demo                  # built-in data, <= 10 min on 2 CPU cores
    python tools/run_all.py --preset ci --out /tmp/us3l    # the reduced version the tests run
    python tools/run_all.py --preset cifar100-r18 --data-root /data --out runs/c100
    python tools/run_all.py --preset imagenet-r50 --data-root /data/imagenet/train \\
        --det-data /data/detectron2 --gpus 8 --out runs/in-r50

Every step calls the project's own command line (logged line by line in OUT/logs/, its progress
echoed to the console, listed in the report with its time) and is skipped on a re-run when its
inputs did not change (OUT/.steps/). A preset's ``baselines`` (the demo: ``random-init``, the same
config and seed untrained) are converted and probed like the checkpoint, and the report opens with
the answer on the preset's ``headline`` dataset: what the narrowest width keeps of the widest's
accuracy, and what pretraining adds over the baseline (docs/demo.md).

Several checkpoints side by side (no pretraining; README, "Compare checkpoints"):

    python tools/run_all.py --preset ci --calib-data digits --out /tmp/cmp --compare \
        'US3L (ours)=runs/main/pretrain/checkpoint.pth' 'official US3L=runs/imp/official_r18.pth' \
        'solo-learn BYOL=runs/imp/solo_byol.pth'

Each LABEL=CKPT (a checkpoint from tools/pretrain.py or tools/import_checkpoint.py; an empty
LABEL takes the checkpoint's own: the import's label, else its method) is converted, probed and,
where the preset fine-tunes detectors and the network can go to them, fine-tuned at the preset's
widths inside its trained range (a fixed-width checkpoint: its own width), in
OUT/compare/<file>-<sha8>/ (named by content: a new label re-runs nothing). --calib-data SPEC
recalibrates BN of every checkpoint on the same data; without it each uses its pretraining data,
which an imported checkpoint does not have (then --calib-data is required). The report has one
column per checkpoint at each width, headed by its label.

Bad input (an unknown preset, a real-data preset without --data-root, a data folder that does not
exist, --gpus below 1, --out under a regular file, a --pretrain-override that is not KEY=VALUE or
given with --compare, a --compare value without '=', naming a missing file, a file that is not a
US3L checkpoint, a label given twice, the same checkpoint twice, a label with '|', an import
without --calib-data, a bad --calib-data): one line, exit 2, checked before OUT is created. A
step that fails: one line naming the step, its exit status and its log (OUT/logs/STEP.log), exit
1; the steps before it stay done and a re-run continues from there. Exit statuses:
pretrain/cli.py.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pretrain import cli  # noqa: E402
from transfer.pipeline import Pipeline, Step, StepFailed, output_folder_problem  # noqa: E402

PROG = "run_all.py"

# Each preset: how to pretrain, which widths, which probe datasets, which detection runs.
# Optional keys: "calib_batch_size" (the converter's, else its default), "probe_options" (extra
# tools/linear_probe.py options, e.g. a shorter --grid), "latency" (tools/bench_widths.py on the
# export: {"onnx": also export and time model.onnx, "options": extra bench options}; issue #14).
PRESETS = {
    "demo": {  # issue #16: every step real, <= 10 min on 2 idle CPU cores
        "pretrain_config": "configs/pretrain/demo.yaml",
        # kNN twice (iterations 50, 100): two progress lines, ~5 s each
        "pretrain_overrides": ["model.stem=imagenet", "data.image_size=64", "schedule.iters=100",
                               "monitor.knn_every=50"],
        "builtin_data": True,
        # pretrain (labels unused) on the CIFAR-10-format fixture's training images: tinted scans
        # of scikit-learn's digits *train* split (transfer/fixtures.py), so the digits probe's
        # test images stay unseen, as in bench/digits_experiment.py
        "pretrain_on_fixture": True,
        # the same network, config and seed, untrained (tools/pretrain.py --init-only): the floor
        # that says what pretraining is worth at each width
        "baselines": ["random-init"],
        "headline": "digits",  # the real images: the answer is about them
        "widths": [0.25, 0.5, 0.75, 1.0],
        "calib_batches": 8,
        "calib_batch_size": 32,  # 256 images: the CPU demo's budget (default 5 x 128, US-Net)
        "probe_datasets": ["digits", "cifar10"],
        "probe_image_size": 64,
        # 5 C values over bench/digits_experiment.py's range (1e-3..1e2), the same for the
        # checkpoint and its baseline: the 45-value default took 2-2.5 min per probe of four
        # widths there (docs/digits_experiment.md), 11 values 83-102 s here, 5 values 45-56 s
        "probe_options": ["--grid", "1e-3", "1e2", "5"],
        "det_widths": [0.5, 1.0],
        "det_tasks": ["voc", "coco"],
        "det_engines": ["detectron2", "mmdet"],
        "det_iters": 20,  # 40 images seen: a smoke check (transfer/report/answer.py's rule)
        "det_images": {"train": 24, "test": 12, "size": 128},
        # latency per width on this machine, torch eager and onnxruntime, for the report's column
        # and its accuracy-vs-latency plot (20 timed calls: a demo's figure, not a benchmark)
        "latency": {"onnx": True, "options": ["--reps", "20", "--warmup", "3", "--batch", "8"]},
    },
    "ci": {  # the reduced pipeline the test suite runs: every step, every artefact, minutes
        "pretrain_config": "configs/pretrain/demo.yaml",
        "pretrain_overrides": ["model.stem=imagenet", "data.image_size=64", "schedule.iters=6",
                               "data.synthetic.train_size=128", "data.synthetic.val_size=64",
                               "monitor.knn_every=0", "checkpoint.every_iters=3"],
        "builtin_data": True,
        "widths": [0.25, 1.0],
        "calib_batches": 2,
        "calib_batch_size": 32,
        "probe_datasets": ["cifar10", "digits"],
        "headline": "digits",  # the answer is about the real images, as in the demo
        "probe_image_size": 32,
        "det_widths": [0.25],
        "det_tasks": ["voc", "coco"],
        "det_engines": ["detectron2", "mmdet"],
        "det_iters": 2,
        "det_images": {"train": 4, "test": 3, "size": 96},
        "det_score_thresh": 0.0,  # every detection kept: the scores never depend on learning
        # the latency step and its report column, at a test's budget (no ONNX, no memory runs)
        "latency": {"onnx": False, "options": ["--reps", "3", "--warmup", "1", "--batch", "2",
                                               "--no-memory", "--quiet"]},
        # a 3-value C grid: every step and artefact, not the 45-value selection (tests' budget)
        "probe_options": ["--grid", "0.1", "10", "3"],
    },
    "cifar100-r18": {
        "pretrain_config": "configs/pretrain/us3l_r18_cifar100.yaml",
        "pretrain_overrides": [],
        "builtin_data": False,
        "widths": [0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        "calib_batches": 5,  # US-Net / official US3L: 5 batches of 128 (docs/protocol.md)
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
        "calib_batches": 5,  # US-Net / official US3L: 5 batches of 128 (docs/protocol.md)
        "probe_datasets": ["cifar10", "cifar100", "flowers102", "pets", "dtd"],
        "probe_image_size": 224,
        "det_widths": [0.25, 0.5, 0.75, 1.0],
        "det_tasks": ["voc", "coco"],
        "det_engines": ["detectron2", "mmdet"],
        "det_iters": None,  # the configs' full schedules
    },
}


def width_dir(width: float) -> str:
    """The converter's folder for ``width`` (transfer/export/convert.py ``folder_name``)."""
    return f"w{width:.2f}" if round(width, 2) == width else f"w{width:g}"


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


def _roots(args, out: Path) -> tuple[Path, Path]:
    """(classification data root, detection data root)."""
    data = out / "data"
    return (Path(args.data_root) if args.data_root else data / "cls",
            Path(args.det_data) if args.det_data else data / "det")


def data_steps(args, preset: dict, out: Path, detection: bool) -> list[Step]:
    """The built-in data sets (built-in presets only); the detection sets when ``detection``."""
    py = sys.executable
    probe_root, det_root = _roots(args, out)
    steps: list[Step] = []
    if preset["builtin_data"] and "cifar10" in preset["probe_datasets"]:
        steps.append(Step("data-classification",
                          [py, "-m", "transfer.fixtures", str(probe_root), "--datasets", "cifar10",
                           "--per-class", "40", "--size", "32"],
                          outputs=[probe_root / "cifar-10-batches-py" / "test_batch"]))
        if detection:
            d = preset["det_images"]
            steps.append(Step("data-detection",
                              [py, "-m", "transfer.detection.synthetic", str(det_root), "--train",
                               str(d["train"]), "--test", str(d["test"]), "--size", str(d["size"])],
                              outputs=[det_root / "VOC2007" / "ImageSets" / "Main" / "test.txt",
                                       det_root / "coco" / "annotations" / "instances_val2017.json"]))
    return steps


def detection_enabled(args, preset: dict) -> bool:
    """Whether the preset fine-tunes detectors here (built-in sets, or --det-data given)."""
    return bool(preset["det_widths"] and preset.get("det_engines")
                and (preset["builtin_data"] or args.det_data))


def probe_command(args, preset: dict, out: Path, export: Path, widths: list[str],
                  probe_out: Path) -> list[str]:
    probe_root, _ = _roots(args, out)
    # scikit-learn's digits are built in: a preset probing only them has no data root
    root = [] if set(preset["probe_datasets"]) <= {"digits"} else ["--data-root", str(probe_root)]
    cmd = [sys.executable, str(ROOT / "tools" / "linear_probe.py"), "--export", str(export),
           "--widths", *widths, "--datasets", *preset["probe_datasets"], *root,
           "--image-size", str(preset["probe_image_size"]),
           "--protocol", preset.get("probe_protocol", "lbfgs"), "--out", str(probe_out),
           "--cache-dir", str(out / "cache" / "features")]
    if preset["builtin_data"]:
        cmd.append("--no-verify-md5")
    return cmd + list(preset.get("probe_options", []))


def det_step(args, preset: dict, out: Path, name: str, engine: str, task: str, export_w: Path,
             run_dir: Path) -> Step:
    _, det_root = _roots(args, out)
    cmd = ["bash", str(ROOT / "tools" / "train_det.sh"), engine, task, str(export_w), "--out",
           str(run_dir), "--gpus", str(args.gpus)]
    if preset["det_iters"]:
        cmd += short_schedule(engine, preset["det_iters"], preset["det_images"]["size"],
                              preset.get("det_score_thresh"))
    # a re-run (new export) starts a new run: the old run folder is another run's
    return Step(name, cmd, outputs=[run_dir / "metrics.json"], inputs=[export_w / "meta.json"],
                env=dict(os.environ, DETECTRON2_DATASETS=str(det_root)), clean=[run_dir])


def calib_options(preset: dict) -> list[str]:
    """The converter's BN calibration size: the preset's batches (and batch size, where the
    preset sets one; else the converter's default)."""
    opts = ["--calib-batches", str(preset["calib_batches"])]
    if preset.get("calib_batch_size"):
        opts += ["--calib-batch-size", str(preset["calib_batch_size"])]
    return opts


def baseline_steps(args, preset: dict, out: Path, overrides: list[str]) -> list[Step]:
    """Each baseline of the preset, converted and probed exactly as the checkpoint (same widths,
    calibration, datasets, protocol) under OUT/baselines/NAME/. ``random-init``: the pretraining
    command (one process) with ``--init-only``: the same config and seed, no training."""
    steps = []
    for name in preset.get("baselines", []):
        folder = out / "baselines" / name
        ckpt, export = folder / "checkpoint.pth", folder / "export"
        init_cmd = [sys.executable, str(ROOT / "tools" / "pretrain.py"), "--config",
                    str(ROOT / preset["pretrain_config"]), "--init-only",
                    *[o for o in overrides if not o.startswith("output.dir=")],
                    f"output.dir={folder}"]
        steps.append(Step(name, init_cmd, outputs=[ckpt],
                          inputs=[ROOT / preset["pretrain_config"]]))
        widths = [str(w) for w in preset["widths"]]
        cmd = [sys.executable, str(ROOT / "tools" / "convert_width.py"), str(ckpt), "--widths",
               *widths, *calib_options(preset), "--formats", "torchvision", "--out", str(export),
               "--quiet"]
        if args.calib_data:
            cmd += ["--calib-data", args.calib_data]
        steps.append(Step(f"convert-{name}", cmd, inputs=[ckpt],
                          outputs=[export / width_dir(w) / "meta.json" for w in preset["widths"]]))
        steps.append(Step(f"linear-probe-{name}",
                          probe_command(args, preset, out, export, widths, folder / "probe"),
                          outputs=[folder / "probe" / "results.json"],
                          inputs=[export / width_dir(w) / "torchvision.pth"
                                  for w in preset["widths"]]))
    return steps


def build_steps(args, preset: dict, out: Path) -> list[Step]:
    py = sys.executable
    ckpt = out / "pretrain" / "checkpoint.pth"
    export = out / "export"
    steps: list[Step] = data_steps(args, preset, out, bool(preset["det_widths"]))

    overrides = list(preset["pretrain_overrides"]) + [f"output.dir={out / 'pretrain'}"]
    fixture = []
    if preset.get("pretrain_on_fixture"):
        probe_root, _ = _roots(args, out)
        overrides += ["data.name=cifar10", f"data.root={probe_root}", "data.verify_md5=false"]
        fixture = [probe_root / "cifar-10-batches-py" / "test_batch"]
    if args.data_root and not preset["builtin_data"]:
        overrides.append(f"data.root={args.data_root}")
    overrides += args.pretrain_override
    pretrain_cmd = [py, str(ROOT / "tools" / "pretrain.py"), "--config",
                    str(ROOT / preset["pretrain_config"]), "--no-progress", *overrides]
    if args.gpus > 1:
        pretrain_cmd = [py, "-m", "torch.distributed.run", f"--nproc_per_node={args.gpus}",
                        *pretrain_cmd[1:]]
    steps.append(Step("pretrain", pretrain_cmd, outputs=[ckpt],
                      inputs=[ROOT / preset["pretrain_config"], *fixture]))

    widths = [str(w) for w in preset["widths"]]
    convert_cmd = [py, str(ROOT / "tools" / "convert_width.py"), str(ckpt), "--widths", *widths,
                   *calib_options(preset), "--out", str(export), "--quiet"]
    latency = preset.get("latency")
    if latency and latency.get("onnx"):
        formats = ["torchvision"] + (["detectron2", "mmdet"] if preset["det_widths"] else [])
        convert_cmd += ["--formats", *formats, "onnx"]
    if args.calib_data:
        convert_cmd += ["--calib-data", args.calib_data]
    steps.append(Step("convert", convert_cmd,
                      outputs=[export / width_dir(w) / "meta.json" for w in preset["widths"]],
                      inputs=[ckpt]))
    if latency:
        steps.append(Step("latency", [py, str(ROOT / "tools" / "bench_widths.py"), str(export),
                                      *latency.get("options", [])],
                          outputs=[export / width_dir(w) / "latency.json"
                                   for w in preset["widths"]],
                          inputs=[export / width_dir(w) / "meta.json" for w in preset["widths"]]))

    steps.append(Step("linear-probe",
                      probe_command(args, preset, out, export, widths, out / "probe"),
                      outputs=[out / "probe" / "results.json"],
                      inputs=[export / width_dir(w) / "torchvision.pth" for w in preset["widths"]]))
    steps += baseline_steps(args, preset, out, overrides)

    if detection_enabled(args, preset):
        for engine in preset["det_engines"]:
            for task in preset["det_tasks"]:
                for w in preset["det_widths"]:
                    steps.append(det_step(args, preset, out, f"det-{engine}-{task}-{width_dir(w)}",
                                          engine, task, export / width_dir(w),
                                          out / "det" / f"{engine}_{task}_{width_dir(w)}"))
    if any(s.name.startswith("det-") for s in steps):
        steps.append(Step("collect-detection",
                          [py, str(ROOT / "tools" / "collect_results.py"), str(out / "det"),
                           "--out", str(out / "det" / "report")],
                          outputs=[out / "det" / "report"],
                          inputs=[s.outputs[0] for s in steps if s.name.startswith("det-")]))
    return steps


def report_context(args, preset: dict, steps: list[Step]) -> dict:
    """What transfer/report/summary.py needs beyond the files: dataset names, the headline
    dataset, the baseline, and one sentence per step on the data and budget behind it."""
    from pretrain.config import load_config
    from transfer.report.answer import MIN_DET_IMAGES_SEEN, dataset_label
    builtin = preset["builtin_data"]
    names = {n: dataset_label(n, builtin) for n in preset["probe_datasets"]}
    pre = next((s for s in steps if s.name == "pretrain"), None)
    given = [c for c in pre.command if "=" in c and not c.startswith("--")] if pre else []
    cfg = load_config(ROOT / preset["pretrain_config"], given) if pre else {}
    d, sched = cfg.get("data", {}), cfg.get("schedule", {})
    data_text = (f"the built-in synthetic shapes ({d.get('synthetic', {}).get('train_size')} "
                 f"images)" if d.get("name") == "synthetic" else
                 "the CIFAR-10-format fixture's 400 training images (tinted scans of scikit-learn "
                 "digits, train split; labels unused)" if preset.get("pretrain_on_fixture") else
                 f"{d.get('name')} at {d.get('root')}")
    calib = f"{preset['calib_batches']} x {preset.get('calib_batch_size', 128)}"
    options = " ".join(["tools/linear_probe.py", *preset.get("probe_options", [])])
    probe = (f"{preset.get('probe_protocol', 'lbfgs')} linear probe on "
             f"{' and '.join(names.values())} at {preset['probe_image_size']} px ({options})")
    notes = {"data-classification": "writes the CIFAR-10-format fixture: tinted scans of "
                                    "scikit-learn digits (train split), 40 per class, 32 px "
                                    "(transfer/fixtures.py); the digits probe set is "
                                    "scikit-learn's own (1257 train / 540 test, real)",
             "pretrain": (f"{cfg.get('method', {}).get('name', '?')} on {data_text}, "
                          f"{d.get('image_size')} px, {cfg.get('model', {}).get('arch')} "
                          f"({cfg.get('model', {}).get('stem')} stem), {sched.get('iters')} "
                          f"iterations at batch {d.get('batch_size')}") if cfg else "",
             "convert": f"BN recalibrated at each width on {calib} pretraining images; "
                        f"exports at {', '.join(f'{w:g}x' for w in preset['widths'])}",
             "linear-probe": probe, "collect-detection": "gathers every detection metric",
             "latency": ("times each width's backbone on this machine (tools/bench_widths.py: "
                         "torch eager" + (" and onnxruntime" if (preset.get("latency") or {})
                                          .get("onnx") else "")
                         + ", batch 1 and " + " ".join((preset.get("latency") or {})
                                                       .get("options", [])) + ")")}
    if preset.get("det_images"):
        di = preset["det_images"]
        notes["data-detection"] = (f"writes synthetic VOC- and COCO-format detection sets: "
                                   f"{di['train']} train / {di['test']} test images, "
                                   f"{di['size']} px")
    for name in preset.get("baselines", []):
        notes[name] = "the same network, config and seed, untrained (tools/pretrain.py --init-only)"
        notes[f"convert-{name}"] = "as convert, for the untrained network"
        notes[f"linear-probe-{name}"] = "as linear-probe, for the untrained network"
    for s in steps:
        if s.name.startswith("det-") and preset.get("det_iters"):
            seen = preset["det_iters"] * 2  # short_schedule's total batch
            notes[s.name] = (f"Faster R-CNN fine-tune on the synthetic set, {preset['det_iters']}"
                             f" iterations at batch 2 ({seen} images seen"
                             + (": a smoke check)" if seen < MIN_DET_IMAGES_SEEN else ")"))
    return {"dataset_labels": names, "headline": preset.get("headline"),
            "baseline": (preset.get("baselines") or [None])[0], "step_notes": notes}


@dataclass
class Compared:
    """One ``--compare LABEL=CKPT``, checked: what the steps and the report need."""
    label: str
    checkpoint: str          # absolute path
    sha256: str
    arch: str
    stem: str
    width_range: list[float]
    widths: list[float]      # the preset's widths inside the trained range (fixed: its width)
    det_widths: list[float]  # the preset's detection widths inside it (none if no detector)
    folder: str              # relative to OUT: compare/<file>-<sha8>
    origin: str              # where the checkpoint came from, for the report

    @property
    def key(self) -> str:
        return self.folder.split("/", 1)[1]


def _origin(ckpt: dict) -> str:
    source = ckpt.get("source") if isinstance(ckpt.get("source"), dict) else None
    if source:
        found = ", ".join(f"{k} {source[k]}" for k in ("epoch", "global_step", "iter")
                          if source.get(k) is not None)
        return (f"tools/import_checkpoint.py --from {source.get('format', '?')} "
                f"{Path(str(source.get('file', '?'))).name}" + (f" ({found})" if found else ""))
    method = ((ckpt.get("config") or {}).get("method") or {}).get("name")
    iteration = (ckpt.get("train_state") or {}).get("iteration")
    return "tools/pretrain.py" + (f" ({method}" + (f", iteration {iteration}" if iteration is not
                                                   None else "") + ")" if method else "")


def check_compare(args, preset: dict) -> tuple[list[Compared], str | None]:
    """``--compare`` values checked in the order a user would fix them: the form of every value,
    explicit labels given twice, each file (exists, is a US3L checkpoint), default labels, the
    same checkpoint twice, widths, calibration data. Returns (entries, problem)."""
    from transfer.report import labels as L
    given = []
    for text in args.compare:
        label, sep, path = text.partition("=")
        label, path = label.strip(), path.strip()
        if not sep or not path:
            return [], (f"--compare {text!r} is not LABEL=CKPT (e.g. --compare "
                        f"'US3L (ours)=runs/main/pretrain/checkpoint.pth'; an empty LABEL takes "
                        f"the checkpoint's own)")
        problem = L.check_label(label) if label else None
        if problem:
            return [], f"--compare {text!r}: {problem}; pass another label"
        given.append((label, path, text))
    labels = [lab for lab, _, _ in given if lab]
    for lab in labels:
        if labels.count(lab) > 1:
            return [], (f"--compare: label {lab!r} is given {labels.count(lab)} times; give each "
                        f"checkpoint its own label")
    for _, path, text in given:
        if not Path(path).is_file():
            what = "is a folder, not a file" if Path(path).is_dir() else "does not exist"
            return [], (f"--compare {text!r}: {path} {what}; pass a checkpoint written by "
                        f"tools/pretrain.py or tools/import_checkpoint.py")

    from pretrain.checkpoint import (CheckpointError, file_sha256, load_checkpoint, model_config,
                                     width_range)
    entries: list[Compared] = []
    for label, path, text in given:
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as err:
            return [], (f"--compare {text!r}: {cli.one_line(err, 400)} (a checkpoint from "
                        f"another codebase: import it first with tools/import_checkpoint.py)")
        sha = file_sha256(path)
        label = label or L.checkpoint_label(ckpt) or L.sha_label(sha)
        problem = L.check_label(label)
        if problem:
            return [], f"--compare {text!r}: the checkpoint's own {problem}; pass LABEL=CKPT"
        for other in entries:
            if other.label == label:
                return [], (f"--compare: label {label!r} names both {other.checkpoint} and {path}"
                            f" (a default label: the checkpoint's own); give each its own "
                            f"LABEL=CKPT")
            if other.sha256 == sha:
                return [], (f"--compare: {path} and {other.checkpoint} are the same checkpoint "
                            f"(sha256 {sha[:12]}); pass each checkpoint once")
        cfg = model_config(ckpt)
        low, high = width_range(ckpt)
        inside = [w for w in preset["widths"] if low - 1e-9 <= w <= high + 1e-9]
        widths = [low] if low == high else inside
        if not widths:
            return [], (f"--compare {text!r}: its trained widths {low:g}..{high:g} hold none of "
                        f"preset {args.preset}'s widths {preset['widths']}; pick another preset")
        arch, stem = str(cfg.get("arch")), str(cfg.get("stem", "imagenet"))
        detector = arch in ("resnet18", "resnet50") and stem == "imagenet"
        det_widths = [w for w in preset["det_widths"] if w in widths] \
            if detector and detection_enabled(args, preset) else []
        config = ckpt["config"]
        if not args.calib_data and not (isinstance(config.get("data"), dict)
                                        and config["data"].get("name")):
            return [], (f"--compare {text!r}: the checkpoint names no pretraining data to "
                        f"recalibrate BN on (an import); pass --calib-data SPEC (used for every "
                        f"checkpoint compared), e.g. --calib-data digits")
        stem_name = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(path).stem).strip("-_")[:40] or "ckpt"
        entries.append(Compared(label, str(Path(path).resolve()), sha, arch, stem,
                                [low, high], widths, det_widths, f"compare/{stem_name}-{sha[:8]}",
                                _origin(ckpt)))
    return entries, None


def check_calib_data(text: str | None) -> str | None:
    if text is None:
        return None
    from transfer.export.calib_data import SPEC_HELP, CalibDataError, parse_spec
    try:
        spec = parse_spec(text)
    except CalibDataError as err:
        return f"--calib-data: {err}"
    if spec.root is not None and not Path(spec.root).is_dir():
        return (f"--calib-data {text}: {spec.root} is not a folder; pass {SPEC_HELP} with a "
                f"folder that exists")
    return None


def build_compare_steps(args, preset: dict, out: Path, entries: list[Compared]) -> list[Step]:
    """Convert, probe and (where it can) fine-tune each compared checkpoint in its own folder."""
    py = sys.executable
    steps = data_steps(args, preset, out, any(e.det_widths for e in entries))
    for e in entries:
        folder = out / e.folder
        export = folder / "export"
        formats = ["torchvision"] + ([f for f in preset["det_engines"]] if e.det_widths else [])
        widths = [str(w) for w in e.widths]
        cmd = [py, str(ROOT / "tools" / "convert_width.py"), e.checkpoint, "--widths", *widths,
               *calib_options(preset), "--formats", *formats, "--out", str(export), "--quiet"]
        if args.calib_data:
            cmd += ["--calib-data", args.calib_data]
        if preset["builtin_data"]:
            cmd.append("--no-verify-md5")  # the built-in CIFAR fixtures are re-packed
        steps.append(Step(f"convert-{e.key}", cmd,
                          outputs=[export / width_dir(w) / "meta.json" for w in e.widths],
                          inputs=[Path(e.checkpoint)]))
        steps.append(Step(f"linear-probe-{e.key}",
                          probe_command(args, preset, out, export, widths, folder / "probe"),
                          outputs=[folder / "probe" / "results.json"],
                          inputs=[export / width_dir(w) / "torchvision.pth" for w in e.widths]))
        for engine in preset.get("det_engines", []) if e.det_widths else []:
            for task in preset["det_tasks"]:
                for w in e.det_widths:
                    steps.append(det_step(args, preset, out,
                                          f"det-{e.key}-{engine}-{task}-{width_dir(w)}", engine,
                                          task, export / width_dir(w),
                                          folder / "det" / f"{engine}_{task}_{width_dir(w)}"))
    with_det = [e for e in entries if e.det_widths]
    if with_det:
        report = out / "compare" / "det-report"
        cmd = [py, str(ROOT / "tools" / "collect_results.py"),
               *[str(out / e.folder / "det") for e in with_det], "--out", str(report),
               "--group-by", "source"]
        for e in with_det:
            cmd += ["--label", f"{e.sha256}={e.label}"]
        steps.append(Step("collect-detection", cmd, outputs=[report / "detection_results.md"],
                          inputs=[s.outputs[0] for s in steps if s.name.startswith("det-")]))
    return steps


def check_args(args, preset: dict) -> str | None:
    """What is wrong with the command line, in one line, or None."""
    if not preset["builtin_data"] and not args.data_root:
        return (f"preset {args.preset} {'probes' if args.compare else 'trains'} on real data: "
                f"pass --data-root (see README, 'Real datasets')")
    for flag, value in (("--data-root", args.data_root), ("--det-data", args.det_data)):
        if value is not None and not Path(value).is_dir():
            return f"{flag} {value} is not a folder; pass the folder that holds the data"
    for item in args.pretrain_override:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            return (f"--pretrain-override {item!r} is not KEY=VALUE (e.g. "
                    f"--pretrain-override schedule.iters=200)")
    if args.compare is not None and args.pretrain_override:
        return ("--pretrain-override has no effect with --compare (nothing is pretrained); drop "
                "it, or pass the checkpoint of a run made with it")
    return check_calib_data(args.calib_data)


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
    parser.add_argument("--compare", nargs="+", default=None, metavar="LABEL=CKPT",
                        help="evaluate these checkpoints (tools/pretrain.py or "
                             "tools/import_checkpoint.py) side by side instead of pretraining; "
                             "an empty LABEL takes the checkpoint's own")
    parser.add_argument("--calib-data", default=None, metavar="SPEC",
                        help="BN calibration data for the converter, for every checkpoint: "
                             "synthetic | digits | cifar10:ROOT | cifar100:ROOT | folder:DIR "
                             "(default: each checkpoint's pretraining data; required with "
                             "imported checkpoints)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    problem = check_args(args, preset)
    out = Path(args.out or ROOT / "runs" / args.preset).resolve()
    if problem is None:
        folder_problem = output_folder_problem(out)
        if folder_problem:
            problem = f"--out {args.out or out}: {folder_problem}; pass another --out"
    entries: list[Compared] = []
    if problem is None and args.compare is not None:
        entries, problem = check_compare(args, preset)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    pipeline = Pipeline(out)
    compare = None
    if args.compare is not None:
        import json

        from pretrain.safe_io import atomic_write
        from transfer.report.compare import MANIFEST
        compare = [asdict(e) for e in entries]
        text = json.dumps({"preset": args.preset, "entries": compare}, indent=2) + "\n"
        atomic_write(out / "compare" / MANIFEST, lambda tmp: Path(tmp).write_text(text))
    try:
        steps = build_steps(args, preset, out) if compare is None else \
            build_compare_steps(args, preset, out, entries)
        for step in steps:
            pipeline.run(step)
    except StepFailed as err:
        print(f"{PROG}: error: {cli.one_line(err, 600)}", file=sys.stderr)
        return cli.EXIT_STEP_FAILED

    from pretrain.safe_io import UnsafeFileError
    from transfer.report.summary import collect, table, write_report
    try:
        context = report_context(args, preset, steps) if compare is None else None
        report = write_report(out, preset_name=args.preset, steps=pipeline.records,
                              argv=[sys.executable, str(Path(__file__).resolve()),
                                    *(sys.argv[1:] if argv is None else argv)], compare=compare,
                              context=context)
        if compare is None:
            print(table(collect(out), context["dataset_labels"], context["headline"]))
        else:
            from transfer.report.compare import collect_compare, tables_text
            print(tables_text(collect_compare(out, compare)))
    except UnsafeFileError as err:
        print(f"{PROG}: error: report: {cli.one_line(err, 600)}", file=sys.stderr)
        return cli.EXIT_STEP_FAILED
    answer = next((line for line in report.read_text().splitlines()
                   if line.startswith("Answer: ")), None)
    if answer:
        print(answer)
    print(f"report: {report}  (plots and report.html beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
