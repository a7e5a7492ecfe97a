"""quantize / fake-quantize throughput against torch's own functions and x.clone(), on 16M
float32 elements, 2 threads. Prints GB/s (bytes read + written) and ratios.

    python benchmarks/bench_quant_ops.py [--numel 16777216] [--threads 2] [--thp]

Every op returns a fresh 64 MB tensor, and with torch's default CPU allocator each call pays
the page faults of touching new memory: for the memory-bound ops that is most of the time.
torchquant advises its own large outputs onto huge pages (TORCHQUANT_HUGEPAGES=0 turns that off);
--thp sets THP_MEM_ALLOC_ENABLE=1 (torch's allocator option for 2 MB transparent huge pages on
large allocations) before torch is imported; anchors and torchquant share the setting.
"""
import argparse
import os
import sys
import warnings

if "--thp" in sys.argv[1:]:
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # read by torch's CPU allocator: set before the import

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torchquant  # noqa: E402
from common import header, timeit  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--numel", type=int, default=1 << 24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--thp", action="store_true", help="2 MB pages for large allocations (see above)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    n = args.numel
    rows, cols = n // 1024, 1024
    x = torch.randn(rows, cols)
    s_c = torch.rand(rows) * 0.05 + 0.01
    z_c = torch.randint(-10, 10, (rows,), dtype=torch.int32)
    s_t, z_t = torch.tensor([0.02]), torch.tensor([3], dtype=torch.int32)
    fbytes = x.numel() * 4

    cases = [
        ("clone (ceiling)", 2 * fbytes, lambda: x.clone(), None),
        ("fake-quant per channel", 2 * fbytes,
         lambda: torchquant.fake_quantize_per_channel_affine(x, s_c, z_c, 0, -128, 127),
         lambda: torch.fake_quantize_per_channel_affine(x, s_c, z_c, 0, -128, 127)),
        ("fake-quant per tensor", 2 * fbytes,
         lambda: torchquant.fake_quantize_per_tensor_affine(x, s_t, z_t, -128, 127),
         lambda: torch.fake_quantize_per_tensor_affine(x, s_t, z_t, -128, 127)),
        ("quantize per tensor (int8)", fbytes + x.numel(),
         lambda: torch.ops.torchquant.quantize(x, s_t, z_t, None, -128, 127, torch.int8),
         lambda: torch.quantize_per_tensor(x, 0.02, 3, torch.qint8)),
        ("quantize per channel (int8)", fbytes + x.numel(),
         lambda: torch.ops.torchquant.quantize(x, s_c, z_c, 0, -128, 127, torch.int8),
         lambda: torch.quantize_per_channel(x, s_c.double(), z_c.long(), 0, torch.qint8)),
    ]
    thp = " (THP_MEM_ALLOC_ENABLE=1)" if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else ""
    print(header(f"quantize ops, {n} float32 elements{thp}"))
    print(f"{'op':30s} {'torchquant GB/s':>16s} {'torch GB/s':>11s} {'vs torch':>9s} {'vs clone':>9s}")
    clone_bw = None
    for name, nbytes, ours, theirs in cases:
        t = timeit(ours)
        bw = nbytes / t / 1e9
        if clone_bw is None:
            clone_bw = bw
            print(f"{name:30s} {bw:16.2f} {'':>11s} {'':>9s} {1.0:9.2f}")
            continue
        tt = timeit(theirs)
        tbw = nbytes / tt / 1e9
        print(f"{name:30s} {bw:16.2f} {tbw:11.2f} {tt / t:8.2f}x {bw / clone_bw:9.2f}")


if __name__ == "__main__":
    main()
