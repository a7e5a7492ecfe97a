"""CPU int8 Linear: torchquant against its anchors, measured in one process.

    python benchmarks/bench_linear.py [--threads 2] [--rounds 5] [--target-ms 40]

Each implementation is timed as the 10th percentile of single-call times over about
rounds * target_ms of calls: in each of `rounds` rounds every implementation of a shape runs
target_ms of back-to-back calls, so that a drift of a shared machine's speed falls on all alike. Ratios are
anchor_time / torchquant_time (> 1: torchquant is faster). Anchors:
  static   torch.ao.nn.quantized.Linear (quint8 in, quint8 out) on the x86 and fbgemm engines;
           `_int_mm+rq`: torch._int_mm + bias and requantize in torch ops (int_mm_requant) on
           int8 activations shifted by their zero point 128 before timing (x_u8 - 128), so the
           int32 product needs no zero-point correction (torchquant takes the uint8 codes and
           applies its correction within the timed call); fp32 F.linear
  int8_mm  torch._int_mm, with b in both layouts: contiguous [K, N], and b = w.t() of a row-major
           [N, K] weight (unit stride along K), the way torch._int_mm is usually called
  dynamic  torchao Int8DynamicActivationInt8WeightConfig, torch.ao.quantization.quantize_dynamic
"""
import argparse
import datetime
import os
import platform
import sys
import warnings

import torch
import torch.nn.functional as F

import torchquant

sys.path.insert(0, os.path.dirname(__file__))
from common import interleaved_us  # noqa: E402

warnings.filterwarnings("ignore")
ops = torch.ops.torchquant

SHAPES = [  # (M, K, N, label)
    (64, 784, 256, "mnist fc1 b64"), (64, 256, 256, "mnist fc2 b64"), (64, 256, 10, "mnist fc3 b64"),
    (1024, 784, 256, "mnist fc1 b1024"), (1024, 256, 256, "mnist fc2 b1024"), (1024, 256, 10, "mnist fc3 b1024"),
    (1, 4096, 4096, "4096^2 M=1"), (32, 4096, 4096, "4096^2 M=32"), (256, 4096, 4096, "4096^2 M=256"),
]


def ao_static_linear(engine, K, N, w_f, b_f, w_scale):
    torch.backends.quantized.engine = engine
    qw = torch.quantize_per_channel(w_f, w_scale.double(), torch.zeros(N, dtype=torch.long), 0, torch.qint8)
    lin = torch.ao.nn.quantized.Linear(K, N)
    lin.set_weight_bias(qw, b_f)
    lin.scale, lin.zero_point = 0.05, 64
    return lin


def int_mm_requant(x_s8, w_t, x_scale, w_scale, bias, out_scale, out_zp):
    """The `_int_mm+rq` anchor: torch._int_mm of int8 activations already shifted by their zero
    point (x_s8 = x_u8 - 128 for zero point 128) and the [K, N] int8 weight, then bias and the
    requantize to uint8 in torch ops."""
    acc = torch._int_mm(x_s8, w_t)
    y = acc.float() * (x_scale * w_scale) + bias
    return torch.clamp(torch.round(y * (1.0 / out_scale)) + out_zp, 0, 255).to(torch.uint8)


def torchao_dynamic(K, N, w_f, b_f):
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except Exception as e:  # noqa: BLE001
        return None, f"torchao import failed: {type(e).__name__}: {e}"
    try:
        m = torch.nn.Sequential(torch.nn.Linear(K, N))
        with torch.no_grad():
            m[0].weight.copy_(w_f)
            m[0].bias.copy_(b_f)
        quantize_(m, Int8DynamicActivationInt8WeightConfig())
        return m, None
    except Exception as e:  # noqa: BLE001
        return None, f"torchao quantize_ failed: {type(e).__name__}: {e}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--target-ms", type=float, default=40.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# {datetime.date.today()}  {cpu}  torch {torch.__version__}  threads {args.threads}  "
          f"torchquant isa {torchquant.cpu_isa()}")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for M, K, N, label in SHAPES:
        x_f = torch.randn(M, K, generator=gen)
        w_f = torch.randn(N, K, generator=gen) * 0.05
        b_f = torch.randn(N, generator=gen) * 0.1
        w_scale = (w_f.abs().amax(1) / 127).float()
        w_q = torch.clamp(torch.round(w_f / w_scale[:, None]), -128, 127).to(torch.int8)
        wp, cs = ops.pack_weight(w_q)
        xs, xz = torch.tensor([0.02]), torch.tensor([128], dtype=torch.int32)
        x_u8 = torch.randint(0, 256, (M, K), generator=gen, dtype=torch.uint8)
        os_, oz = torch.tensor([0.05]), torch.tensor([64], dtype=torch.int32)
        r = {"shape": label}
        fns = {}

        fns["ours"] = (lambda: ops.linear_int8(x_u8, xs, xz, wp, cs, w_scale, b_f, os_, oz, False, torch.uint8))
        if M == 256 and K == 4096:
            def ours_avx2():
                with torchquant.force_cpu_isa("avx2"):
                    return ops.linear_int8(x_u8, xs, xz, wp, cs, w_scale, b_f, os_, oz, False, torch.uint8)
            fns["ours_avx2"] = ours_avx2
        fns["fp32"] = lambda: F.linear(x_f, w_f, b_f)
        qx = torch.quantize_per_tensor(x_f, 0.02, 128, torch.quint8)
        # The packed weight, made under each engine, decides the kernel a call runs.
        for engine in ("x86", "fbgemm"):
            lin = ao_static_linear(engine, K, N, w_f, b_f, w_scale)
            fns[f"ao_{engine}"] = lambda lin=lin: lin(qx)
        torch.backends.quantized.engine = "x86"
        # torch._int_mm path: the activations shifted to int8 here, untimed (x - 128, the zero point:
        # the int32 product needs no correction), int32 product + requantize in torch ops.
        x_s8 = (x_u8.to(torch.int16) - 128).to(torch.int8)
        w_t = w_q.t().contiguous()
        w_tv = w_q.t()  # the transposed view: stride (1, K)
        try:
            int_mm_requant(x_s8, w_t, 0.02, w_scale, b_f, 0.05, 64)
            fns["int_mm_rq"] = lambda: int_mm_requant(x_s8, w_t, 0.02, w_scale, b_f, 0.05, 64)
            fns["int_mm"] = lambda: torch._int_mm(x_s8, w_t)
            fns["int_mm_t"] = lambda: torch._int_mm(x_s8, w_tv)
        except RuntimeError:
            r["int_mm_rq"] = r["int_mm"] = r["int_mm_t"] = float("nan")
        fns["ours_mm"] = lambda: ops.int8_mm(x_s8, w_t)
        fns["ours_mm_t"] = lambda: ops.int8_mm(x_s8, w_tv)

        fns["ours_dyn"] = lambda: ops.linear_dynamic(x_f, wp, cs, w_scale, b_f, False)
        m = torch.nn.Sequential(torch.nn.Linear(K, N))
        with torch.no_grad():
            m[0].weight.copy_(w_f)
            m[0].bias.copy_(b_f)
        dq = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
        fns["ao_dyn"] = lambda: dq(x_f)
        tao, err = torchao_dynamic(K, N, w_f, b_f)
        if tao is not None:
            def torchao_call():
                with torch.no_grad():
                    return tao(x_f)
            fns["torchao_dyn"] = torchao_call
        else:
            r["torchao_dyn"] = float("nan")
            r["torchao_err"] = err
        r.update(interleaved_us(fns, args.rounds, args.target_ms))
        rows.append(r)
        ratio = lambda a, b: r[a] / r[b]  # noqa: E731
        print(f"{label:17s} ours {r['ours']:9.1f}us | vs ao-x86 {ratio('ao_x86', 'ours'):5.2f}x "
              f"ao-fbgemm {ratio('ao_fbgemm', 'ours'):5.2f}x int_mm+rq {ratio('int_mm_rq', 'ours'):5.2f}x "
              f"fp32 {ratio('fp32', 'ours'):5.2f}x"
              + (f" (avx2: fp32 {r['fp32'] / r['ours_avx2']:.2f}x)" if "ours_avx2" in r else "")
              + f" | int8_mm {r['ours_mm']:9.1f}us vs _int_mm {ratio('int_mm', 'ours_mm'):5.2f}x"
              f", b=w.t() {r['ours_mm_t']:9.1f}us vs _int_mm {ratio('int_mm_t', 'ours_mm_t'):5.2f}x"
              f" | dynamic {r['ours_dyn']:9.1f}us vs torchao {ratio('torchao_dyn', 'ours_dyn'):5.2f}x "
              f"ao {ratio('ao_dyn', 'ours_dyn'):5.2f}x", flush=True)
        if "torchao_err" in r:
            print(f"    {r['torchao_err']}")
    print("\n| shape | linear_int8 us | ao x86 us | ao fbgemm us | _int_mm+rq us | fp32 us | int8_mm us | _int_mm us "
          "| int8_mm b=w.t() us | _int_mm b=w.t() us | linear_dynamic us | torchao dyn us | ao dyn us |")
    print("|---|" + "---|" * 12)
    for r in rows:
        print(f"| {r['shape']} | " + " | ".join(f"{r[k]:.1f}" for k in (
            "ours", "ao_x86", "ao_fbgemm", "int_mm_rq", "fp32", "ours_mm", "int_mm", "ours_mm_t",
            "int_mm_t", "ours_dyn", "torchao_dyn", "ao_dyn")) + " |")
    avx2 = [r for r in rows if "ours_avx2" in r]
    for r in avx2:
        print(f"AVX2 forced, {r['shape']}: linear_int8 {r['ours_avx2']:.1f} us, {r['fp32'] / r['ours_avx2']:.2f}x fp32")


if __name__ == "__main__":
    main()
