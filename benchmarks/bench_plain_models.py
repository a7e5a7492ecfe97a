"""torchvision classifiers written without quantization in mind, on the CPU: fp32 against
torchquant int8 two ways, timed in the same process, interleaved round by round (best round of
each), with ratios and the int8 logits' SQNR against fp32. A ratio "X vs Y" is Y's time / X's
(> 1: X is faster).

- "as is": ``find_fusable_modules`` + ``fuse_modules``, wrapped in
  ``nn.Sequential(QuantStub(), model, DeQuantStub())``; the model's ``+``, ``*`` and ``torch.cat``
  run in float between int8 modules (torch.ao's converted model fails at the first ``+``).
- "make_quantizable": the same after ``make_quantizable``, which rewrites that arithmetic into
  FloatFunctional modules, so it runs int8.

Random init with BatchNorm statistics of random data (as torchvision_sqnr.py), two calibration
batches; SQNR on a batch of 4 other random images.

    python benchmarks/bench_plain_models.py
    python benchmarks/bench_plain_models.py resnet18 densenet121 --batch 8 --rounds 3
"""
import argparse
import copy
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import cpu_name  # noqa: E402
from torchvision_sqnr import build_plain  # noqa: E402

import torchquant as tq  # noqa: E402

MODELS = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "densenet121"]


def convert(model, calib, rewrite: bool):
    m = tq.make_quantizable(model, calib[0][:1]) if rewrite else copy.deepcopy(model)
    m = tq.fuse_modules(m, tq.find_fusable_modules(m))
    wrapped = torch.nn.Sequential(tq.QuantStub(), m, tq.DeQuantStub()).eval()
    wrapped.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(wrapped)
        with torch.no_grad():
            for x in calib:
                p(x)
        return tq.convert(p)


@torch.no_grad()
def best_ms(models, x, rounds, per_round):
    for m in models:
        m(x)
    best = [float("inf")] * len(models)
    for _ in range(rounds):
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            for _ in range(per_round):
                m(x)
            best[i] = min(best[i], (time.perf_counter() - t0) / per_round * 1e3)
    return best


def sqnr(ref, y):
    return float(10 * torch.log10(ref.double().pow(2).sum() / (ref.double() - y.double()).pow(2).sum()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# plain torchvision models: fp32 vs torchquant int8 as is vs after make_quantizable, ms per batch")
    print(f"# {cpu_name()}, threads={torch.get_num_threads()}, torch {torch.__version__}, "
          f"batch {args.batch}, {args.size}x{args.size}, {time.strftime('%Y-%m-%d')}")
    print(f"{'model':<20} {'fp32':>8} {'as is':>8} {'m_q':>8} {'as is vs fp32':>15} {'m_q vs fp32':>13} "
          f"{'m_q vs as is':>14} {'SQNR as is':>11} {'SQNR m_q':>9}")
    gen = torch.Generator().manual_seed(1)
    for name in args.models or MODELS:
        model = build_plain(name, args.size).eval()
        calib = [torch.rand(2, 3, args.size, args.size, generator=gen) for _ in range(2)]
        test = torch.rand(4, 3, args.size, args.size, generator=gen)
        plain, rewritten = convert(model, calib, False), convert(model, calib, True)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = model(test)
            s_plain, s_rw = sqnr(ref, plain(test)), sqnr(ref, rewritten(test))
            x = torch.rand(args.batch, 3, args.size, args.size, generator=gen)
            t_fp, t_plain, t_rw = best_ms([model, plain, rewritten], x, args.rounds, args.per_round)
        print(f"{name:<20} {t_fp:>8.2f} {t_plain:>8.2f} {t_rw:>8.2f} {t_fp / t_plain:>14.2f}x {t_fp / t_rw:>12.2f}x "
              f"{t_plain / t_rw:>13.2f}x {s_plain:>11.2f} {s_rw:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
