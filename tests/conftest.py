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


def _torch_ao_rounds_in_float32() -> bool:
    """Whether torch's quantized CPU kernels round as the builds torchquant is compared with do
    (x times 1/scale in float32, ties to even: 2.11, 2.12, 2.14): 0.81 / 0.02 is a tie there,
    40.5 -> 40 (+ zero point -3 = 37); the 2.13.0 CPU wheel divides in double (40.5000001 -> 41)
    and its channels-last average pooling rounds its ties otherwise too. Where it does not,
    the bit-equality tests against torch.ao are skipped (the plain-torch reference still holds
    torchquant to its arithmetic)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.tensor([0.8100000023841858]), 0.02, -3, torch.qint8)
    return q.int_repr().item() == 37


TORCH_AO_ROUNDS_IN_FLOAT32 = _torch_ao_rounds_in_float32()
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
