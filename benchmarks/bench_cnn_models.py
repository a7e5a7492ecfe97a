"""Whole torchvision CNNs on the CPU: fp32, torch.ao x86 int8 and torchquant int8, timed in the
same process, interleaved round by round (best round of each), with ratios: "vs ao" is torch.ao's
time / torchquant's, "vs fp32" fp32's / torchquant's (> 1: torchquant is faster).

Each model is built as in torchvision_sqnr.py (random init, BatchNorm statistics of random data),
then fused, prepared, calibrated on two random batches and converted by each library with its x86
default qconfig. The issue's shapes: resnet18 and mobilenet_v2 at 224², batch 1 and 8; resnet50
at batch 1.

    python benchmarks/bench_cnn_models.py
    python benchmarks/bench_cnn_models.py --cases resnet18:1 --rounds 3
    python benchmarks/bench_cnn_models.py --cases mobilenet_v2:8 --per-layer
    python benchmarks/bench_cnn_models.py --reduce-range

--reduce-range adds a column: torchquant with 7-bit activations (HistogramObserver with
reduce_range=True, as torch.ao's x86 default has), the same activation range as the torch.ao
column. On CPUs without AVX-512 VNNI its convolutions take the vpmaddubsw loop (gemm_avx2.cpp).

--per-layer times every leaf module of both converted models on the activations it receives in
the model (captured by forward hooks): the same layer of torch.ao and torchquant, interleaved,
10th percentile of single calls. This is where a whole-model gap comes from; per-layer shapes on
synthetic data (bench_conv.py) can hide it, as the activations' zero points, the layouts and the
cache state differ from the model's.
"""
import argparse
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import cpu_name, interleaved_us  # noqa: E402
from torchvision_sqnr import build, quantize_with  # noqa: E402

import torchquant  # noqa: E402

CASES = ["resnet18:1", "resnet18:8", "mobilenet_v2:1", "mobilenet_v2:8", "resnet50:1"]


@torch.no_grad()
def best_times(models, x, rounds: int, per_round: int):
    """Best seconds per call of each model, rounds interleaved so that load from elsewhere falls
    on all alike."""
    for m in models:
        m(x)
    best = [float("inf")] * len(models)
    for _ in range(rounds):
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            for _ in range(per_round):
                m(x)
            best[i] = min(best[i], (time.perf_counter() - t0) / per_round)
    return best


def leaf_inputs(model, x):
    """{name: (module, args)} of every leaf module as called in one forward of model on x."""
    seen = {}
    hooks = []
    for name, mod in model.named_modules():
        if next(mod.children(), None) is None:
            hooks.append(mod.register_forward_hook(
                lambda mod, args, out, name=name: seen.setdefault(name, (mod, args)) and None))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def per_layer(ao_model, tq_model, x, rounds: int):
    """Prints torch.ao's and torchquant's time for each leaf module both models have (skipping
    those under 3 us in both: identities), and the sums."""
    ao_in, tq_in = leaf_inputs(ao_model, x), leaf_inputs(tq_model, x)
    total_ao = total_tq = 0.0
    print(f"  {'module':<30} {'torchquant type':<20} {'torch.ao us':>11} {'torchquant us':>13} {'vs ao':>7}")
    for name, (tq_mod, tq_args) in tq_in.items():
        if name not in ao_in:
            print(f"  {name:<30} {type(tq_mod).__name__:<20} (no torch.ao module of this name)")
            continue
        ao_mod, ao_args = ao_in[name]
        t = interleaved_us({"ao": lambda: ao_mod(*ao_args), "tq": lambda: tq_mod(*tq_args)}, rounds, 10)
        if max(t.values()) < 3:
            continue
        total_ao += t["ao"]
        total_tq += t["tq"]
        print(f"  {name:<30} {type(tq_mod).__name__:<20} {t['ao']:>11.1f} {t['tq']:>13.1f} "
              f"{t['ao'] / t['tq']:>6.2f}x", flush=True)
    print(f"  {'sum of the modules above':<51} {total_ao:>11.1f} {total_tq:>13.1f} "
          f"{total_ao / total_tq:>6.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="*", default=CASES, help="model:batch pairs")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=3)
    ap.add_argument("--reduce-range", action="store_true",
                    help="also time torchquant with 7-bit activations (torch.ao's x86 activation range)")
    ap.add_argument("--per-layer", action="store_true",
                    help="also time each leaf module of both int8 models on its in-model inputs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, torch {torch.__version__}, torchquant cpu_isa={torchquant.cpu_isa()}, "
          f"{args.threads} threads, input 3x{args.size}x{args.size}; ms per batch (best of {args.rounds} rounds)")
    rr = args.reduce_range
    print(f"{'model':<14} {'batch':>5} {'fp32':>9} {'torch.ao':>9} {'torchquant':>10} "
          f"{'vs ao':>7} {'vs fp32':>8}" + (f" {'tq 7-bit':>9} {'tq7 vs ao':>11} {'tq7 vs fp32':>13}" if rr else ""))
    for case in args.cases:
        name, batch = case.split(":")
        batch = int(batch)
        model = build(name, args.size)
        gen = torch.Generator().manual_seed(1)
        calib = [torch.rand(2, 3, args.size, args.size, generator=gen) for _ in range(2)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tq_model = quantize_with("torchquant", model, calib)
            ao_model = quantize_with("ao", model, calib)
            models = [model, ao_model, tq_model]
            if rr:
                models.append(quantize_with("torchquant", model, calib, reduce_range=True))
        x = torch.rand(batch, 3, args.size, args.size, generator=gen)
        t = best_times(models, x, args.rounds, args.per_round)
        t_fp, t_ao, t_tq = t[:3]
        line = (f"{name:<14} {batch:>5} {t_fp * 1e3:>9.2f} {t_ao * 1e3:>9.2f} {t_tq * 1e3:>10.2f} "
                f"{t_ao / t_tq:>6.2f}x {t_fp / t_tq:>7.2f}x")
        if rr:
            line += f" {t[3] * 1e3:>9.2f} {t_ao / t[3]:>10.2f}x {t_fp / t[3]:>12.2f}x"
        print(line, flush=True)
        if args.per_layer:  # (with --reduce-range: torchquant's 7-bit model, torch.ao's activation range)
            per_layer(ao_model, models[3] if rr else tq_model, x, rounds=3)


if __name__ == "__main__":
    main()
