"""detectron2's DefaultTrainer with what the transfer protocol needs from it.

Why here: (1) the evaluators are the engine's own, with COCO's tasks passed explicitly (box AND
mask AP even when a short run predicts nothing; inferred tasks silently dropped ``segm``) and a
``DetectionCounter`` beside them, so that "no detections" (AP 0) is told from a failed
evaluation; (2) a total batch that does not fit on the processes is reached by gradient
accumulation (``SOLVER.ACCUMULATION_STEPS``), as MMDetection's ``accumulative_counts`` does;
(3) several CPU processes (gloo) can train: detectron2's ``create_ddp_model`` passes a GPU index
as ``device_ids``, which torch's DDP refuses for a CPU module.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref

import torch

import transfer.detectron2.compat as compat
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.evaluation import (COCOEvaluator, DatasetEvaluator, DatasetEvaluators,
                                   PascalVOCDetectionEvaluator)
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

COCO_TASKS = ("bbox", "segm")


class DetectionCounter(DatasetEvaluator):
    """Counts predicted instances over the test set: ``{"detections": {"count", "images"}}``."""

    def reset(self) -> None:
        self._count = 0
        self._images = 0

    def process(self, inputs, outputs) -> None:
        for output in outputs:
            self._images += 1
            if "instances" in output:
                self._count += len(output["instances"])

    def evaluate(self):
        gathered = comm.gather((self._count, self._images), dst=0)
        if not comm.is_main_process():
            return {}
        return {"detections": {"count": sum(c for c, _ in gathered),
                               "images": sum(i for _, i in gathered)}}


class AccumulatingTrainer(SimpleTrainer):
    """SimpleTrainer that sums the gradients of ``steps`` micro-batches before one optimizer step
    (each loss divided by ``steps``; gradients all-reduced only on the last micro-batch)."""

    def __init__(self, model, data_loader, optimizer, steps: int):
        super().__init__(model, data_loader, optimizer)
        self.steps = int(steps)

    def run_step(self) -> None:
        assert self.model.training, "[AccumulatingTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        batches = [next(self._data_loader_iter) for _ in range(self.steps)]
        data_time = time.perf_counter() - start
        self.optimizer.zero_grad()
        summed: dict[str, torch.Tensor] = {}
        for i, data in enumerate(batches):
            last = i == self.steps - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") \
                else self.model.no_sync()
            with sync:
                loss_dict = self.model(data)
                (sum(loss_dict.values()) / self.steps).backward()
            for key, value in loss_dict.items():
                summed[key] = summed.get(key, 0.0) + value.detach() / self.steps
        self._write_metrics(summed, data_time)
        self.optimizer.step()


def _ddp(model: torch.nn.Module) -> torch.nn.Module:
    """detectron2's create_ddp_model, with no device_ids for a CPU module."""
    if comm.get_world_size() == 1:
        return model
    on_cpu = next(model.parameters()).device.type == "cpu"
    kwargs = {"broadcast_buffers": False}
    if not on_cpu:
        kwargs["device_ids"] = [comm.get_local_rank()]
    return DistributedDataParallel(model, **kwargs)


class Trainer(DefaultTrainer):
    """DefaultTrainer with the project's evaluators, accumulation and CPU DDP (see the module)."""

    def __init__(self, cfg):  # DefaultTrainer.__init__ with _ddp and AccumulatingTrainer
        TrainerBase.__init__(self)
        logging.getLogger("detectron2")
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = _ddp(model)
        steps = int(cfg.SOLVER.ACCUMULATION_STEPS)
        if cfg.SOLVER.AMP.ENABLED and steps > 1:
            raise ValueError("SOLVER.AMP.ENABLED with gradient accumulation is not supported")
        if steps > 1:
            self._trainer = AccumulatingTrainer(model, data_loader, optimizer, steps)
        else:
            from detectron2.engine import AMPTrainer
            self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
                model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR,
                                                  trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        """The loader yields one micro-batch: IMS_PER_BATCH / ACCUMULATION_STEPS images over all
        processes (IMS_PER_BATCH stays the total per optimizer step)."""
        steps = int(cfg.SOLVER.ACCUMULATION_STEPS)
        if steps > 1:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SOLVER.IMS_PER_BATCH = cfg.SOLVER.IMS_PER_BATCH // steps
            cfg.freeze()
        return super().build_train_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        kind = MetadataCatalog.get(dataset_name).evaluator_type
        if kind == "pascal_voc":
            evaluator = PascalVOCDetectionEvaluator(dataset_name)
        elif kind == "coco":
            folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
            tasks = COCO_TASKS if cfg.MODEL.MASK_ON else COCO_TASKS[:1]
            evaluator = COCOEvaluator(dataset_name, tasks=tasks, output_dir=folder,
                                      use_fast_impl=compat.HAS_COMPILED_OPS)
        else:
            raise NotImplementedError(f"no evaluator for {dataset_name} ({kind})")
        return DatasetEvaluators([evaluator, DetectionCounter()])
