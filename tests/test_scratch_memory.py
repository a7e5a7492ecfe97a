"""A huge batch's scratch (the dynamic and int4 Linear layers' quantized activation rows) is
freed when the call returns instead of staying with the calling thread until its next call."""
import os
import sys

import pytest
import torch

from torchquant.int4 import format as fmt

ops = torch.ops.torchquant

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _retained_mib(call, x):
    call(x[:16])  # a small call first: lazy set-up of the op and its small buffers
    before = _rss_mib()
    out = call(x)
    del out
    return _rss_mib() - before


@pytest.mark.parametrize("kind", ["dynamic", "int4"])
def test_a_huge_batch_does_not_pin_its_scratch(kind):
    M, K, N = 20000, 4096, 8  # 78 MiB of int8 activation rows
    x = torch.randn(M, K)
    if kind == "dynamic":
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
        packed, col_sums = ops.pack_weight(w)
        ws = torch.full((N,), 0.01)

        def call(x):
            return ops.linear_dynamic(x, packed, col_sums, ws, None)
    else:
        gs = 128
        qw = fmt.pack_int4(torch.randint(0, 16, (N, K), dtype=torch.uint8))
        G = fmt.num_groups(K, gs)
        packed = ops.int4_pack_weight(qw, torch.full((N, G), 0.01), torch.full((N, G), 8, dtype=torch.uint8), K, gs)

        def call(x):
            return ops.linear_int4(x, *packed, None, K, N, gs)
    assert _retained_mib(call, x) < 24
    # The call's own buffer gives what the reused scratch gives: rows are quantized one by one, so
    # the huge call's first and last rows equal small calls on them (which the bit-exact tests
    # against torchquant.reference cover).
    out = call(x)
    assert torch.equal(out[:16], call(x[:16])) and torch.equal(out[-16:], call(x[-16:]))
