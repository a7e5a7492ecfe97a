"""int8 pooling, CPU: torchquant's pooling of QTensors (the nn modules a torchvision model calls,
and the bare ops) against torch.ao's quantized pooling on the same int data, channels-last
uint8, in one process, interleaved (10th percentile of single calls).

Cases: resnet18's stem max pool (3x3, stride 2, padding 1 on [B, 64, 112, 112]), its global
average pool ([B, 512, 7, 7]) and mobilenet_v2's ([B, 1280, 7, 7], F.adaptive_avg_pool2d),
batch 1 and 8; an NCHW max pool for reference. "vs ao" is torch.ao's time / torchquant's module
time (> 1: torchquant is faster).

    python benchmarks/bench_pool.py --threads 2
"""
import argparse
import os
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from common import header, interleaved_us  # noqa: E402

import torchquant  # noqa: E402
from torchquant import QTensor  # noqa: E402

ops = torch.ops.torchquant


def cases(batch):
    return [
        ("maxpool 3x3/2 p1", (batch, 64, 112, 112), nn.MaxPool2d(3, 2, 1), torch.channels_last),
        ("avgpool global", (batch, 512, 7, 7), nn.AdaptiveAvgPool2d(1), torch.channels_last),
        ("adaptive_avg (1,1)", (batch, 1280, 7, 7), lambda x: F.adaptive_avg_pool2d(x, (1, 1)), torch.channels_last),
        ("avgpool 3x3/1 p1", (batch, 64, 28, 28), nn.AvgPool2d(3, 1, 1), torch.channels_last),
        ("maxpool NCHW", (batch, 64, 112, 112), nn.MaxPool2d(3, 2, 1), torch.contiguous_format),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--target-ms", type=float, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(header("int8 pooling, uint8"))
    print(f"# load average {os.getloadavg()[0]:.2f}")
    print(f"{'case':<20} {'shape':<20} {'layout':<6} {'torch.ao us':>12} {'tq module us':>13} {'tq op us':>9} "
          f"{'vs ao':>7}")
    for batch in args.batches:
        for name, shape, fn, mf in cases(batch):
            f = torch.randn(shape).contiguous(memory_format=mf)
            qa = torch.quantize_per_tensor(f, 0.05, 10, torch.quint8)
            q = QTensor(qa.int_repr(), torch.tensor([0.05]), torch.tensor([10], dtype=torch.int32))
            assert torch.equal(fn(q).data, fn(qa).int_repr()), name
            d, z = q.data, q.zero_point
            if isinstance(fn, nn.MaxPool2d):
                op = lambda: ops.max_pool_int8(d, [3, 3], [2, 2], [1, 1], [1, 1], False)  # noqa: E731
            elif isinstance(fn, nn.AvgPool2d):
                op = lambda: ops.avg_pool_int8(d, z, [3, 3], [1, 1], [1, 1], False, True, None)  # noqa: E731
            else:
                op = lambda: ops.adaptive_avg_pool_int8(d, z, [1, 1])  # noqa: E731
            t = interleaved_us({"ao": lambda: fn(qa), "tq": lambda: fn(q), "op": op}, args.rounds, args.target_ms)
            layout = "CL" if mf is torch.channels_last else "NCHW"
            print(f"{name:<20} {str(list(shape)):<20} {layout:<6} {t['ao']:>12.1f} {t['tq']:>13.1f} {t['op']:>9.1f} "
                  f"{t['ao'] / t['tq']:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
