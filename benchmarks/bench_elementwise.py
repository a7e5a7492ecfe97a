"""Quantized elementwise ops (the skip connections and concatenations of CNNs), CPU: torchquant's
add / add_relu / mul / cat against torch.ao's quantized kernels and fp32, in one process, on
channels-last activations of ResNet / MobileNet shapes.

    python benchmarks/bench_elementwise.py --threads 2
"""
import argparse
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import header, timeit  # noqa: E402

import torchquant  # noqa: E402,F401

ops = torch.ops.torchquant
SHAPES = [(1, 64, 56, 56), (1, 256, 14, 14), (8, 64, 56, 56), (8, 24, 56, 56)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(header("quantized elementwise ops, channels-last uint8"))
    print(f"{'op':<8} {'shape':<18} {'torchquant us':>14} {'torch.ao us':>12} {'fp32 us':>9} {'vs torch.ao':>12} {'vs fp32':>8}")
    cl = torch.channels_last
    s, z = torch.tensor([0.05]), torch.tensor([10], dtype=torch.int32)
    so, zo = torch.tensor([0.07]), torch.tensor([3], dtype=torch.int32)
    for shape in SHAPES:
        fa = torch.randn(shape).contiguous(memory_format=cl)
        fb = torch.randn(shape).contiguous(memory_format=cl)
        qa = torch.quantize_per_tensor(fa, 0.05, 10, torch.quint8)
        qb = torch.quantize_per_tensor(fb, 0.05, 10, torch.quint8)
        a, b = qa.int_repr(), qb.int_repr()
        codes = torch.arange(256, dtype=torch.uint8)
        table = ops.quantize(torch.nn.functional.hardswish(ops.dequantize(codes, s, z, None)), so, zo, None, 0, 255,
                             torch.uint8)
        cases = [
            ("add", lambda: ops.add(a, s, z, b, s, z, so, zo, False, None),
             lambda: torch.ops.quantized.add(qa, qb, 0.07, 3), lambda: fa + fb),
            ("add_relu", lambda: ops.add(a, s, z, b, s, z, so, zo, True, None),
             lambda: torch.ops.quantized.add_relu(qa, qb, 0.07, 3), lambda: torch.relu(fa + fb)),
            ("mul", lambda: ops.mul(a, s, z, b, s, z, so, zo, False, None),
             lambda: torch.ops.quantized.mul(qa, qb, 0.07, 3), lambda: fa * fb),
            ("cat", lambda: ops.cat([a, b], [s, s], [z, z], 1, so, zo, None),
             lambda: torch.ops.quantized.cat([qa, qb], 1, 0.07, 3), lambda: torch.cat([fa, fb], 1)),
            # an activation as torchquant's table lookup (nnq.Hardswish, LookupActivation) against
            # torch.ao's quantized hardswish kernel
            ("hswish", lambda: ops.lookup_table(a, table),
             lambda: torch.ops.quantized.hardswish(qa, 0.07, 3), lambda: torch.nn.functional.hardswish(fa)),
        ]
        for name, ours, theirs, fp in cases:
            t_ours, t_ao, t_fp = (min(timeit(f) for _ in range(3)) for f in (ours, theirs, fp))
            print(f"{name:<8} {'x'.join(map(str, shape)):<18} {t_ours * 1e6:>14.1f} {t_ao * 1e6:>12.1f} {t_fp * 1e6:>9.1f} "
                  f"{t_ao / t_ours:>11.2f}x {t_fp / t_ours:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
