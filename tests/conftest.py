"""Shared test set-up: detectron2 always through the compat layer; quiet, deterministic, CPU.

The device is pinned: ``US3L_DEVICE=cpu`` makes the project's one automatic device choice
(pretrain/device.py) pick the CPU here and in every subprocess a test starts, so a machine with a
GPU runs the same numbers (no AMP, no cuDNN). Tests about the GPU are marked ``gpu``, name their
device, and are skipped (with the reason shown by ``-ra``) where CUDA is absent.
"""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ["US3L_DEVICE"] = "cpu"

import importlib.util  # noqa: E402

if importlib.util.find_spec("detectron2") is not None:  # a bare GPU box may lack it (test_gpu.py)
    import transfer.detectron2.compat  # noqa: E402,F401  (before any detectron2 import)
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import pytest  # noqa: E402


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("gpu test: CUDA is not available on this machine")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spinning on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The longest files first: with `pytest -n 2 --dist loadfile` (make test) the two longest start on
# their own workers at once, the next two follow, and the short files fill in around them.
_FIRST = ("test_pipeline.py", "test_detection.py", "test_pretrain_ddp.py", "test_pretrain_engine.py",
          "test_compare.py", "test_bad_inputs_pretrain.py", "test_reproduce.py",
          "test_linear_probe.py", "test_bad_inputs_convert_probe.py", "test_seed.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: _FIRST.index(item.path.name) if item.path.name in _FIRST
               else len(_FIRST))
