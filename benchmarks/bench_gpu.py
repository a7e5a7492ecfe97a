"""CUDA benchmark of torchquant's kernels against anchors measured in the same process.

Anchors: torch._int_mm (where its shape rules allow), a device-to-device copy (bandwidth),
torch.fake_quantize_per_{tensor,channel}_affine, torch.aminmax and torch.ao's HistogramObserver
(observers: 16M elements), bf16 F.linear and torch's tinygemm int4 kernel (int4 weight-only),
bf16 channels-last F.conv2d / ResNet-50 (int8 convolution). Prints one table: time (us), TOPS or GB/s,
and the ratio to the anchor. Timing: triton.testing.do_bench when present, else CUDA events
(median of repeated runs after warm-up).

    python benchmarks/bench_gpu.py            # full table (~1 minute on an H100)
    python benchmarks/bench_gpu.py --quick    # fewer shapes
    python benchmarks/bench_gpu.py --smoke    # every section at tiny sizes on the CPU: checks the script runs

--smoke runs on the CPU unless --device cuda is given; on the CPU the times are the wall clock of
a few calls, meaningless as figures (and the forced CUDA kernel paths are the CPU's one path).
"""
import argparse
import os
import statistics
import sys
import time

import torch

import torchquant

ops = torch.ops.torchquant


def bench_us(device, fn, reps=50):
    """Median microseconds of fn() on `device` (CUDA: triton's do_bench, else CUDA events; the
    CPU: the wall clock of 3 calls after one, a check that the code runs, not a figure)."""
    if device != "cuda":
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(times)
    try:
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3
    except Exception:
        pass
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e3)
    return statistics.median(times)


ROWS = []


def row(name, us, amount, unit, anchor_us=None, anchor_name=""):
    rate = amount / (us * 1e-6) / 1e12 if unit == "TOPS" else amount / (us * 1e-6) / 1e9
    ratio = f"{anchor_us / us:6.2f}x vs {anchor_name}" if anchor_us else ""
    ROWS.append((name, us, rate, unit, ratio))
    print(f"{name:<44} {us:10.2f} us {rate:10.1f} {unit:<5} {ratio}", flush=True)


def int_mm_ok(M, K, N):
    return M > 16 and K % 8 == 0 and N % 8 == 0


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def host_us(device, fn, calls=200):
    """Wall-clock time per call of `calls` back-to-back calls, then one synchronize: what a
    Python caller sees when launches, not the GPU, are the bottleneck (operands stay in L2).
    On the CPU: 3 calls."""
    if device != "cuda":
        calls = 3
    for _ in range(10 if device == "cuda" else 1):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def bench_gemm(shapes, device="cuda"):
    g = torch.Generator(device=device).manual_seed(0)
    for M, K, N in shapes:
        a = torch.randint(-128, 128, (M, K), device=device, generator=g, dtype=torch.int8)
        w = torch.randint(-127, 128, (N, K), device=device, generator=g, dtype=torch.int8)
        b = w.t()  # [K, N] view of the row-major weight: no copy in int8_mm
        ops_ = 2.0 * M * N * K
        anchor = bench_us(device, lambda: torch._int_mm(a, b)) if int_mm_ok(M, K, N) else None
        mm_us = bench_us(device, lambda: ops.int8_mm(a, b))
        row(f"int8_mm {M}x{K}x{N}", mm_us, ops_, "TOPS", anchor, "_int_mm")
        packed, sums = ops.pack_weight(w)
        xs = torch.full((1,), 0.02, device=device)
        xz = torch.full((1,), 3, device=device, dtype=torch.int32)
        ws = torch.full((N,), 0.01, device=device)
        bias = torch.randn(N, device=device)
        os_ = torch.full((1,), 0.5, device=device)
        row(f"linear_int8 int8-out {M}x{K}x{N}",
            bench_us(device, lambda: ops.linear_int8(a, xs, xz, packed, sums, ws, bias, os_, xz, True, torch.int8)),
            ops_, "TOPS", mm_us, "int8_mm")
        row(f"linear_int8 float-out {M}x{K}x{N}",
            bench_us(device, lambda: ops.linear_int8(a, xs, xz, packed, sums, ws, bias, None, None, False, None)),
            ops_, "TOPS", mm_us, "int8_mm")
        x = torch.randn(M, K, device=device)
        row(f"linear_dynamic {M}x{K}x{N}",
            bench_us(device, lambda: ops.linear_dynamic(x, packed, sums, ws, bias, False)), ops_, "TOPS", mm_us,
            "int8_mm")
        if not int_mm_ok(M, K, N):
            # bf16 matmul as the anchor where _int_mm refuses the shape
            xb, wb = x.bfloat16(), w.bfloat16()
            anchor = bench_us(device, lambda: torch.nn.functional.linear(xb, wb))
            row(f"  (anchor bf16 linear {M}x{K}x{N})", anchor, ops_, "TOPS")
        del a, w, b, packed, x


def bench_small_m(ms, K=4096, N=4096, device="cuda"):
    """Small M: each GEMM path forced in turn (GPU time, L2 flushed), then the time per call a
    Python loop sees (host overhead included, the 16 MB weight warm in the 50 MB L2)."""
    g = torch.Generator(device=device).manual_seed(1)
    w = torch.randint(-127, 128, (N, K), device=device, generator=g, dtype=torch.int8)
    b = w.t()
    for M in ms:
        a = torch.randint(-128, 128, (M, K), device=device, generator=g, dtype=torch.int8)
        ops_ = 2.0 * M * N * K
        times = {}
        for path in ("gemv", "mma", "lt"):
            if path == "gemv" and M > 32:
                continue
            os.environ["TORCHQUANT_CUDA_GEMM"] = path
            times[path] = bench_us(device, lambda: ops.int8_mm(a, b))
        os.environ["TORCHQUANT_CUDA_GEMM"] = "auto"
        best = min(times.values())
        for path, us in times.items():
            row(f"int8_mm {M}x{K}x{N} path={path}", us, ops_, "TOPS", best, "best path")
        anchor = host_us(device, lambda: torch._int_mm(a, b)) if int_mm_ok(M, K, N) else None
        row(f"int8_mm {M}x{K}x{N} host loop (auto)", host_us(device, lambda: ops.int8_mm(a, b)), ops_, "TOPS",
            anchor, "_int_mm loop")
        # The public function takes the typed binding (no argument boxing): what user code calls.
        row(f"torchquant.int8_mm {M}x{K}x{N} host loop", host_us(device, lambda: torchquant.int8_mm(a, b)), ops_,
            "TOPS", anchor, "_int_mm loop")
        if anchor:
            row(f"  torch._int_mm {M}x{K}x{N} host loop", anchor, ops_, "TOPS")
        os.environ.pop("TORCHQUANT_CUDA_GEMM", None)


def tinygemm_weights(w, gs):
    """torch's CUDA int4 format (the tinygemm kernel that torchao's int4 weight-only Linear calls
    on CUDA) for w [N, K]: asymmetric per group, w = (q - 8) * scale + zero; (None if this torch
    or shape has none)."""
    N, K = w.shape
    if K % gs or K % 1024 or N % 8:
        return None
    try:
        wg = w.reshape(N, K // gs, gs)
        lo, hi = wg.amin(-1), wg.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=1e-8)
        q = torch.clamp(torch.round((wg - lo[..., None]) / scale[..., None]), 0, 15).to(torch.int32).reshape(N, K)
        packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), 8)
        sz = torch.stack([scale.t(), (lo + 8 * scale).t()], -1).to(torch.bfloat16).contiguous()
        return packed, sz
    except Exception as exc:  # noqa: BLE001 — an anchor this torch lacks is reported, not fatal
        print(f"  (tinygemm anchor unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
        return None


def bench_int4(ms, K=4096, N=4096, gs=128, copy_bytes=1 << 28, device="cuda"):
    """int4 weight-only Linear, bf16 activations: each kernel forced in turn against bf16
    F.linear on the same shape; at M = 1 the weight-streaming rate (packed bytes + qparams per
    call) against the device-to-device copy rate."""
    g = torch.Generator(device=device).manual_seed(2)
    G = (K + gs - 1) // gs
    qw = torch.randint(0, 256, (N, (K + 1) // 2), device=device, generator=g, dtype=torch.uint8)
    scale = torch.rand(N, G, device=device, generator=g) * 0.02 + 1e-3
    zp = torch.randint(0, 16, (N, G), device=device, generator=g, dtype=torch.uint8)
    packed = ops.int4_pack_weight(qw, scale, zp, K, gs)
    wb = torch.randn(N, K, device=device, generator=g).bfloat16()
    weight_bytes = sum(t.numel() * t.element_size() for t in packed)
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_rate = 2.0 * src.numel() / (bench_us(device, lambda: dst.copy_(src)) * 1e-6) / 1e9
    print(f"  (device-to-device copy: {copy_rate:.0f} GB/s)")
    del src, dst
    tiny = tinygemm_weights(wb.float(), gs)
    for M in ms:
        x = torch.randn(M, K, device=device, generator=g).bfloat16()
        anchor = bench_us(device, lambda: torch.nn.functional.linear(x, wb))
        ops_ = 2.0 * M * N * K
        for path in ("gemv", "tiled", "mma"):
            if path == "gemv" and M > 8:
                continue
            os.environ["TORCHQUANT_CUDA_INT4"] = path
            us = bench_us(device, lambda: ops.linear_int4(x, *packed, None, K, N, gs))
            if M == 1:
                row(f"linear_int4 bf16 {M}x{K}x{N} g{gs} path={path}", us, weight_bytes, "GB/s", anchor,
                    "bf16 linear")
            else:
                row(f"linear_int4 bf16 {M}x{K}x{N} g{gs} path={path}", us, ops_, "TOPS", anchor, "bf16 linear")
        os.environ.pop("TORCHQUANT_CUDA_INT4", None)
        row(f"  (anchor bf16 F.linear {M}x{K}x{N})", anchor, ops_, "TOPS")
        if tiny is not None:
            t_us = bench_us(device, lambda: torch.ops.aten._weight_int4pack_mm(x, tiny[0], gs, tiny[1]))
            us = bench_us(device, lambda: ops.linear_int4(x, *packed, None, K, N, gs))
            row(f"linear_int4 bf16 {M}x{K}x{N} g{gs} (auto path)", us, ops_, "TOPS", t_us, "tinygemm")
            row(f"  (anchor tinygemm {M}x{K}x{N}, torchao's int4 kernel)", t_us, ops_, "TOPS")


# ResNet-50 at 224^2: (Cin, Cout, H=W, kernel, stride) of its main convolution shapes.
RESNET50_CONVS = [(64, 64, 56, 1, 1), (64, 64, 56, 3, 1), (64, 256, 56, 1, 1), (256, 128, 56, 1, 1),
                  (128, 128, 28, 3, 1), (512, 256, 28, 1, 1), (256, 256, 14, 3, 1), (1024, 512, 14, 1, 1),
                  (512, 512, 7, 3, 1), (512, 2048, 7, 1, 1), (3, 64, 224, 7, 2)]


def bench_conv(batch=64, shapes=RESNET50_CONVS, size=224, device="cuda"):
    """int8 convolution (uint8 activations, uint8 out, ReLU), the direct and tensor-core kernels
    against bf16 channels-last F.conv2d (cuDNN) on ResNet-50's shapes; then the whole ResNet-50
    converted by torchquant against the bf16 channels-last model, when torchvision is there."""
    g = torch.Generator(device=device).manual_seed(3)
    for cin, cout, hw, k, st in shapes:
        x = torch.randint(0, 256, (batch, cin, hw, hw), device=device, generator=g, dtype=torch.uint8)
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randint(-127, 128, (cout, cin, k, k), device=device, generator=g, dtype=torch.int8)
        wp, cs = ops.pack_conv_weight(w, 1)
        xs = torch.full((1,), 0.02, device=device)
        xz = torch.full((1,), 3, device=device, dtype=torch.int32)
        ws = torch.full((cout,), 0.01, device=device)
        os_ = torch.full((1,), 0.5, device=device)
        oz = torch.full((1,), 0, device=device, dtype=torch.int32)
        pad = k // 2
        xb = x.bfloat16().contiguous(memory_format=torch.channels_last)
        wb = w.bfloat16().contiguous(memory_format=torch.channels_last)
        anchor = bench_us(device, lambda: torch.nn.functional.conv2d(xb, wb, None, st, pad))
        oh = (hw + 2 * pad - k) // st + 1
        ops_ = 2.0 * batch * oh * oh * cout * cin * k * k
        name = f"conv {cin}->{cout} {k}x{k}/{st} @{hw} b{batch}"
        for path in ("direct", "mma"):
            os.environ["TORCHQUANT_CUDA_CONV"] = path
            us = bench_us(device, lambda: ops.conv_int8(x, xs, xz, wp, cs, ws, None, [k, k], [st, st], [pad, pad],
                                                        [1, 1], 1, os_, oz, True, torch.uint8))
            row(f"{name} {path}", us, ops_, "TOPS", anchor, "bf16 cuDNN")
        os.environ.pop("TORCHQUANT_CUDA_CONV", None)
        row(f"  (anchor bf16 F.conv2d {name})", anchor, ops_, "TOPS")
        del x, xb
    try:
        sys.path.insert(0, os.path.dirname(__file__))
        from torchvision_sqnr import build, quantize_with
    except Exception as exc:  # torchvision missing
        print(f"  (whole ResNet-50 skipped: {exc})")
        return
    import warnings
    model = build("resnet50", size).eval()
    calib = [torch.rand(2, 3, size, size) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_with("torchquant", model, calib).to(device)
    fb = model.to(device).bfloat16().to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size, device=device)
    xb = x.bfloat16().contiguous(memory_format=torch.channels_last)
    ops_ = 2 * 4.1e9 * (size / 224) ** 2 * batch
    with torch.no_grad():
        anchor = bench_us(device, lambda: fb(xb))
        for path in ("direct", "mma"):
            os.environ["TORCHQUANT_CUDA_CONV"] = path
            row(f"resnet50 {size}^2 b{batch} int8 {path}", bench_us(device, lambda: q(x)), ops_, "TOPS", anchor,
                "bf16 cuDNN model")
        os.environ.pop("TORCHQUANT_CUDA_CONV", None)
    row(f"  (anchor resnet50 bf16 channels-last b{batch})", anchor, ops_, "TOPS")


def bench_elementwise(n, device="cuda"):
    x = torch.randn(n, device=device)
    copy_us = bench_us(device, lambda: x.clone())
    row(f"copy float32 {n} (anchor)", copy_us, 8.0 * n, "GB/s")
    s = torch.full((1,), 0.02, device=device)
    z = torch.full((1,), 3, device=device, dtype=torch.int32)
    row(f"quantize per tensor {n}", bench_us(device, lambda: ops.quantize(x, s, z, None, -128, 127, torch.int8)),
        5.0 * n, "GB/s")
    q = ops.quantize(x, s, z, None, -128, 127, torch.int8)
    row(f"dequantize per tensor {n}", bench_us(device, lambda: ops.dequantize(q, s, z, None)), 5.0 * n, "GB/s")
    anchor = bench_us(device, lambda: torch.fake_quantize_per_tensor_affine(x, s, z, -128, 127))
    row(f"  torch fake_quantize per tensor {n}", anchor, 8.0 * n, "GB/s")
    row(f"fake_quantize per tensor {n}", bench_us(device, lambda: ops.fake_quantize(x, s, z, None, -128, 127)),
        8.0 * n, "GB/s", anchor, "torch")
    x2 = x.reshape(-1, 4096)
    C = x2.shape[0]
    sc = torch.rand(C, device=device) * 0.1 + 0.01
    zc = torch.zeros(C, device=device, dtype=torch.int32)
    anchor = bench_us(device, lambda: torch.fake_quantize_per_channel_affine(x2, sc, zc, 0, -128, 127))
    row(f"  torch fake_quantize per channel {n}", anchor, 8.0 * n, "GB/s")
    row(f"fake_quantize per channel {n}", bench_us(device, lambda: ops.fake_quantize(x2, sc, zc, 0, -128, 127)),
        8.0 * n, "GB/s", anchor, "torch")
    g = torch.randn_like(x2)
    row(f"fake_quantize_backward per channel {n}",
        bench_us(device, lambda: ops.fake_quantize_backward(g, x2, sc, zc, 0, -128, 127)), 12.0 * n, "GB/s")
    row(f"quantize_rowwise {C}x4096", bench_us(device, lambda: ops.quantize_rowwise(x2)), 5.0 * n, "GB/s")


def bench_observers(n, device="cuda"):
    """Observers read x once (the histogram twice: range, then counts); the anchor column is the
    fraction of copy bandwidth (a copy moves 8 bytes per element, an observer reads 4)."""
    import torchquant.observer as tqo

    x = torch.randn(n, device=device)
    copy_us = bench_us(device, lambda: x.clone())
    row(f"copy float32 {n} (anchor)", copy_us, 8.0 * n, "GB/s")
    half_copy = copy_us / 2  # time a copy takes per 4 bytes per element

    row(f"  torch.aminmax {n}", bench_us(device, lambda: torch.aminmax(x)), 4.0 * n, "GB/s", half_copy, "copy BW")
    row(f"aminmax op {n}", bench_us(device, lambda: ops.aminmax(x, None)), 4.0 * n, "GB/s", half_copy, "copy BW")
    obs = tqo.MinMaxObserver().to(device)
    row(f"MinMaxObserver {n}", bench_us(device, lambda: obs(x)), 4.0 * n, "GB/s", half_copy, "copy BW")

    for shape, axis in (((n // 4096, 4096), 0), ((n // 64, 64), 1), ((n // 4, 4), 1)):
        x2 = x.reshape(shape)
        other = 1 - axis
        row(f"  torch.aminmax dim={other} {shape[0]}x{shape[1]}",
            bench_us(device, lambda: torch.aminmax(x2, dim=other)), 4.0 * n, "GB/s", half_copy, "copy BW")
        pobs = tqo.PerChannelMinMaxObserver(ch_axis=axis).to(device)
        row(f"PerChannelMinMaxObserver ax={axis} {shape[0]}x{shape[1]}", bench_us(device, lambda: pobs(x2)), 4.0 * n,
            "GB/s", half_copy, "copy BW")

    try:
        import warnings

        from torch.ao.quantization import HistogramObserver as AoHistogramObserver

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ao = AoHistogramObserver().to(device)
        ao_us = bench_us(device, lambda: ao(x))
        row(f"  torch.ao HistogramObserver {n}", ao_us, 8.0 * n, "GB/s")
    except Exception as e:  # torch.ao missing or failing on this device
        print(f"  torch.ao HistogramObserver unavailable: {e}")
        ao_us = None
    hobs = tqo.HistogramObserver().to(device)
    hist_us = bench_us(device, lambda: hobs(x))
    row(f"HistogramObserver {n} (2 passes, 8 B/elem)", hist_us, 8.0 * n, "GB/s", copy_us, "copy BW")
    if ao_us:
        row(f"HistogramObserver {n} vs torch.ao", hist_us, 8.0 * n, "GB/s", ao_us, "torch.ao")
    # Range growth: reset, observe x, then 2x (the second call rebins on the device).
    x2 = x * 2

    def grow():
        hobs.reset_min_max_vals()
        hobs(x)
        hobs(x2)

    row(f"HistogramObserver {n}, reset + x + 2x (rebin)", bench_us(device, grow), 16.0 * n, "GB/s", 2 * copy_us,
        "copy BW")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoke", action="store_true", help="every section at tiny sizes (on the CPU by default)")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cpu with --smoke, else cuda")
    args = p.parse_args()
    device = args.device or ("cpu" if args.smoke else "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device (use --smoke for the CPU check)", file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device: {name}{' (smoke)' if args.smoke else ''}  torch {torch.__version__}  {torchquant.build_info()}")
    print(f"{'what':<44} {'time':>13} {'rate':>10}")
    if args.smoke:  # each section at tiny sizes, both sides of the shape rules (_int_mm's, the gemv paths')
        bench_small_m([1, 64], K=256, N=256, device=device)
        bench_gemm([(1, 256, 256), (32, 256, 256), (3, 100, 99)], device)
        bench_int4([1, 16], K=1024, N=256, copy_bytes=1 << 20, device=device)
        bench_elementwise(1 << 16, device)
        bench_observers(1 << 16, device)
        bench_conv(1, [(8, 16, 8, 1, 1), (8, 8, 8, 3, 1), (3, 8, 16, 7, 2)], 32, device)
        return 0
    shapes = [(1, 4096, 4096), (8, 4096, 4096), (16, 4096, 4096), (32, 4096, 4096), (4096, 4096, 4096),
              (8192, 8192, 8192), (1, 4095, 4093), (100, 1000, 999)]
    if args.quick:
        shapes = [(1, 4096, 4096), (32, 4096, 4096), (4096, 4096, 4096)]
    bench_small_m([1, 4, 8, 16, 32, 64] if not args.quick else [1, 32], device=device)
    bench_gemm(shapes, device)
    bench_int4([1, 8, 32, 128, 2048] if not args.quick else [1, 128], device=device)
    bench_int4([1, 16], K=8192, N=8192, device=device)  # the int4 CUDA targets' shapes
    bench_elementwise(1 << 26 if not args.quick else 1 << 24, device)
    bench_observers(1 << 24, device)
    bench_conv(device=device)  # last: its whole-model rows take the longest
    return 0


if __name__ == "__main__":
    sys.exit(main())
