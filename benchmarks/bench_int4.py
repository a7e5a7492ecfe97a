"""CPU int4 weight-only Linear against fp32 F.linear, torchquant's int8 dynamic Linear and torch's
own CPU int4 kernel (aten._weight_int4pack_mm_for_cpu, bfloat16 activations), in one process, plus
the machine's read bandwidth and the state-dict size.

    python benchmarks/bench_int4.py [--threads 2] [--repeats 5] [--layers 8]

Decoding reads every weight once per token, so each implementation is timed on a rotation of
`layers` distinct K x N layers (together larger than the last-level cache) and the time per
layer call is reported: the weights come from memory, as they do in a model. The best of
`repeats` passes is kept, the implementations taking turns within each pass (the machine is
shared: a slow spell falls on all of them). Weight-streaming GB/s = bytes of the layer's kernel
weights / time per call; the read bandwidth is that of a sum over a 512 MiB tensor. Ratios are
anchor time / torchquant int4 time with float32 activations (> 1: int4 is faster).

torch's int4 kernel takes bfloat16 (its float32 path took 19 ms at M = 1 here, 80x slower, and is
left out); torchquant's int4 Linear is timed with both float32 and bfloat16 activations. torchao
(0.18) offers no int4 weight-only path on the CPU, so it has no row.
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
    return best_times({"fn": fn}, calls, repeats)["fn"]


def best_times(fns, calls, repeats):
    """{name: best seconds per call}, the callables taking turns within each of `repeats` passes."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls)
    return best


def aten_int4_weights(w, group_size):
    """torch's CPU int4 format for w [N, K]: asymmetric per group, w = (q - 8) * scale + zero,
    q packed by _convert_weight_to_int4pack_for_cpu; qparams [K / g, N, 2] in bfloat16."""
    N, K = w.shape
    wg = w.reshape(N, K // group_size, group_size)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    q = torch.clamp(torch.round((wg - lo[..., None]) / scale[..., None]), 0, 15).to(torch.int32).reshape(N, K)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = torch.stack([scale.t(), (lo + 8 * scale).t()], -1).to(torch.bfloat16).contiguous()
    return packed, sz


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
    xb = x.to(torch.bfloat16)
    i4 = [LinearWeightOnlyInt4.from_float(l, group_size) for l in lins]
    i8 = [torchquant.quantize_dynamic(nn.Sequential(l), {nn.Linear})[0] for l in lins]
    ws = [l.weight.detach() for l in lins]
    del lins
    aten4 = [aten_int4_weights(w, group_size) for w in ws]
    aten_mm = torch.ops.aten._weight_int4pack_mm_for_cpu
    fns = {
        "fp32 F.linear": rotation([lambda w=w: F.linear(x, w) for w in ws]),
        "int8 dynamic (torchquant)": rotation([lambda m=m: m(x) for m in i8]),
        "torch int4 (bf16)": rotation([lambda p=p: aten_mm(xb, p[0], group_size, p[1]) for p in aten4]),
        "torchquant int4 (bf16)": rotation([lambda m=m: m(xb) for m in i4]),
        "torchquant int4": rotation([lambda m=m: m(x) for m in i4]),
    }
    calls = max(layers, 8 * layers if M == 1 else 2 * layers)
    res = best_times(fns, calls, repeats)
    m = i4[0]
    int4_bytes = sum(t.numel() * t.element_size() for t in (m._w_packed, m._w_qp, m._w_scale))
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
        t4 = res["torchquant int4"]
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
