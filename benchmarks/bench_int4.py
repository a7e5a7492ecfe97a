"""CPU int4 weight-only Linear against fp32 F.linear and torchquant's int8 dynamic Linear, in one
process, plus the machine's read bandwidth and the state-dict size.

    python benchmarks/bench_int4.py [--threads 2] [--repeats 5] [--layers 8]

Decoding reads every weight once per token, so each implementation is timed on a rotation of
`layers` distinct K x N layers (together larger than the last-level cache) and the time per
layer call is reported: the weights come from memory, as they do in a model. The best of
`repeats` passes is kept (the machine is shared). Weight-streaming GB/s = bytes of the layer's
kernel weights / time per call; the read bandwidth is that of a sum over a 512 MiB tensor.
Ratios are anchor time / torchquant time (> 1: int4 is faster).
"""
import argparse
import io
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import torchquant
from torchquant.nn.quantized import LinearWeightOnlyInt4

ops = torch.ops.torchquant


def best_time(fn, calls, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def read_bandwidth(repeats):
    t = torch.ones(128 * 2 ** 20)  # 512 MiB
    sec = best_time(lambda: t.sum(), 1, repeats)
    return t.numel() * 4 / sec / 1e9


def rotation(fns):
    state = {"i": 0}

    def call():
        fns[state["i"]]()
        state["i"] = (state["i"] + 1) % len(fns)
    return call


def bench_shape(M, K, N, layers, repeats, group_size):
    torch.manual_seed(0)
    lins = [nn.Linear(K, N, bias=False) for _ in range(layers)]
    x = torch.randn(M, K)
    i4 = [LinearWeightOnlyInt4.from_float(l, group_size) for l in lins]
    i8 = [torchquant.quantize_dynamic(nn.Sequential(l), {nn.Linear})[0] for l in lins]
    ws = [l.weight.detach() for l in lins]
    del lins
    i4_op = [(m._w_packed, m._w_qp, m._w_scale) for m in i4]
    fns = {
        "fp32 F.linear": rotation([lambda w=w: F.linear(x, w) for w in ws]),
        "int8 dynamic (torchquant)": rotation([lambda m=m: m(x) for m in i8]),
        "int4 module": rotation([lambda m=m: m(x) for m in i4]),
        "int4 op": rotation([lambda p=p: ops.linear_int4(x, *p, None, K, N, group_size) for p in i4_op]),
    }
    calls = max(layers, 8 * layers if M == 1 else 2 * layers)
    res = {name: best_time(fn, calls, repeats) for name, fn in fns.items()}
    int4_bytes = sum(t.numel() * t.element_size() for t in i4_op[0])
    return res, int4_bytes


def state_dict_bytes(module):
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from common import header
    print(header("int4 weight-only Linear, CPU"))
    bw = read_bandwidth(args.repeats)
    print(f"read bandwidth (sum of a 512 MiB float32 tensor): {bw:.1f} GB/s")
    for M in (1, 32):
        K = N = 4096
        res, wbytes = bench_shape(M, K, N, args.layers, args.repeats, args.group_size)
        t4 = res["int4 op"]
        print(f"\nM={M} K={K} N={N} g{args.group_size}, {args.layers} layers in rotation (weights from memory)")
        print(f"{'implementation':<28} {'us/call':>9} {'int4 faster':>11}")
        for name, t in res.items():
            print(f"{name:<28} {t * 1e6:9.1f} {t / t4:10.2f}x")
        print(f"int4 weight streaming: {wbytes / t4 / 1e9:.1f} GB/s ({wbytes / 2 ** 20:.2f} MiB per layer) "
              f"= {100 * wbytes / t4 / 1e9 / bw:.0f}% of the read bandwidth")
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(2)])
    fp = state_dict_bytes(model)
    q = torchquant.quantize_weight_only(model, group_size=args.group_size, progress=False)
    qb = state_dict_bytes(q)
    print(f"\nstate dict of 2 x Linear(4096, 4096): fp32 {fp / 2 ** 20:.1f} MiB, int4 g{args.group_size} "
          f"{qb / 2 ** 20:.1f} MiB: {fp / qb:.2f}x smaller")


if __name__ == "__main__":
    main()
