"""Whole torchvision CNNs on the CPU: fp32, torch.ao x86 int8 and torchquant int8, timed in the
same process, interleaved round by round (best round of each), with ratios.

Each model is built as in torchvision_sqnr.py (random init, BatchNorm statistics of random data),
then fused, prepared, calibrated on two random batches and converted by each library with its x86
default qconfig. The issue's shapes: resnet18 and mobilenet_v2 at 224², batch 1 and 8; resnet50
at batch 1.

    python benchmarks/bench_cnn_models.py
    python benchmarks/bench_cnn_models.py --cases resnet18:1 --rounds 3
"""
import argparse
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import cpu_name  # noqa: E402
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=CASES, help="model:batch pairs")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, torch {torch.__version__}, torchquant cpu_isa={torchquant.cpu_isa()}, "
          f"{args.threads} threads, input 3x{args.size}x{args.size}; ms per batch (best of {args.rounds} rounds)")
    print(f"{'model':<14} {'batch':>5} {'fp32':>9} {'torch.ao':>9} {'torchquant':>10} "
          f"{'tq/ao':>7} {'tq/fp32':>8}")
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
        x = torch.rand(batch, 3, args.size, args.size, generator=gen)
        t_fp, t_ao, t_tq = best_times([model, ao_model, tq_model], x, args.rounds, args.per_round)
        print(f"{name:<14} {batch:>5} {t_fp * 1e3:>9.2f} {t_ao * 1e3:>9.2f} {t_tq * 1e3:>10.2f} "
              f"{t_ao / t_tq:>6.2f}x {t_fp / t_tq:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
