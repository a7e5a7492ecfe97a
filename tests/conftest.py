import contextlib

import pytest
import torch

import torchquant
from torchquant.isa import ISAS


def _supported_isas():
    out = []
    previous = torchquant.cpu_isa()
    for isa in ISAS:
        try:
            torchquant.set_cpu_isa(isa)
            out.append(isa)
        except RuntimeError:
            pass
    torchquant.set_cpu_isa(previous)
    return out


SUPPORTED_ISAS = _supported_isas()


@contextlib.contextmanager
def num_threads(k):
    """torch's intra-op thread count set to k inside the block, restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(k)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", "cuda"]


@pytest.fixture(params=SUPPORTED_ISAS)
def isa(request):
    """Runs the test once per CPU kernel variant this machine supports."""
    with torchquant.force_cpu_isa(request.param):
        yield request.param


# The CUDA case carries the cuda marker: skipped without a GPU (below), and selected by
# `pytest -m cuda` (scripts/gpu_check.sh) along with the tests/test_cuda*.py files.
@pytest.fixture(params=[pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in DEVICES])
def device(request):
    return request.param


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
