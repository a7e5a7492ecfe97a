"""Observer forward speed against torch.ao's observers and two ceilings measured in the same
process: torch.aminmax and a plain read of the data (x.sum()).

    python benchmarks/bench_observers.py            # torch.set_num_threads(2)

Prints one line per case: best-of-reps milliseconds per forward, GB/s read, and ratios.
"""
import argparse
import time
import warnings

import torch

import torchquant
from torchquant import observer as tqo

warnings.filterwarnings("ignore")
import torch.ao.quantization.observer as ao  # noqa: E402


def bench(fn, reps):
    fn()
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    # The minimum: on a shared machine it is the stablest estimate of what the code can do.
    return min(times) * 1e3


def interleaved(fns, reps):
    """10th-percentile microseconds of single calls of each of fns, called in turn."""
    for f in fns:
        f()
        f()
    times = [[] for _ in fns]
    for _ in range(reps):
        for f, ts in zip(fns, times):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
    return [sorted(ts)[len(ts) // 10] * 1e6 for ts in times]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu_isa {torchquant.cpu_isa()}")

    x = torch.randn(1 << 24)
    gb = x.numel() * 4 / 1e9
    t_sum = bench(lambda: x.sum(), args.reps)
    t_amm = bench(lambda: torch.aminmax(x), args.reps)
    print(f"16M float32 ceilings: x.sum() {t_sum:.2f} ms ({gb / t_sum * 1e3:.1f} GB/s), "
          f"torch.aminmax {t_amm:.2f} ms ({gb / t_amm * 1e3:.1f} GB/s)")

    w = x.view(4096, 4096)
    a = x.view(4096, 4096)
    cases = [
        ("MinMaxObserver 16M", tqo.MinMaxObserver(), ao.MinMaxObserver(), x),
        ("PerChannelMinMaxObserver [4096,4096] ch_axis=0", tqo.PerChannelMinMaxObserver(ch_axis=0),
         ao.PerChannelMinMaxObserver(ch_axis=0), w),
        ("PerChannelMinMaxObserver [4096,4096] ch_axis=1", tqo.PerChannelMinMaxObserver(ch_axis=1),
         ao.PerChannelMinMaxObserver(ch_axis=1), a),
    ]
    for name, ours, theirs, data in cases:
        t_ours = bench(lambda: ours(data), args.reps)
        t_ao = bench(lambda: theirs(data), args.reps)
        print(f"{name}: torchquant {t_ours:.2f} ms ({gb / t_ours * 1e3:.1f} GB/s), torch.ao {t_ao:.2f} ms | "
              f"vs torch.ao {t_ao / t_ours:.2f}x, vs read {t_sum / t_ours * 100:.0f}%, "
              f"vs torch.aminmax {t_amm / t_ours * 100:.0f}%")

    # Calibration-sized batches (the MNIST MLP's activations at batch 64 and 512, the input at
    # batch 512, 1M, 4M), where the data sits in cache and per-call work counts. The three are
    # timed interleaved, call by call, so a drift of the machine's speed hits all alike.
    print("MinMaxObserver by size (interleaved, 10th percentile of single calls, us):")
    for n in (64 * 256, 512 * 256, 512 * 784, 1 << 20, 1 << 22):
        xs = torch.randn(n)
        ours, theirs = tqo.MinMaxObserver(), ao.MinMaxObserver()
        t_ours, t_ao, t_amm_n = interleaved([lambda: ours(xs), lambda: theirs(xs), lambda: torch.aminmax(xs)],
                                            args.reps * 20)
        print(f"  {n:>8} elements: torchquant {t_ours:7.1f}, torch.ao {t_ao:7.1f}, torch.aminmax {t_amm_n:7.1f} | "
              f"vs torch.ao {t_ao / t_ours:.2f}x, vs torch.aminmax {t_amm_n / t_ours * 100:.0f}%")

    h = torch.randn(1 << 20)
    gbh = h.numel() * 4 / 1e9
    t_sum_h = bench(lambda: h.sum(), args.reps * 4)
    # Growing range: each batch is wider than the last, so every forward rebins the histogram.
    growing = [h * (1.001 ** i) for i in range(1, args.reps * 4 + 4)]
    # ReLU'd data: the output of a LinearReLU, half of it in one bin.
    relu = h.relu()
    for label, batches in (("steady range", None), ("growing range", growing), ("ReLU'd, steady", relu)):
        ours, theirs = tqo.HistogramObserver(), ao.HistogramObserver()
        data = relu if batches is relu else h
        ours(data), theirs(data)
        if batches is None or batches is relu:
            t_ours = bench(lambda: ours(data), args.reps * 4)
            t_ao = bench(lambda: theirs(data), args.reps * 4)
        else:
            it_ours, it_ao = iter(batches), iter(batches)
            t_ours = bench(lambda: ours(next(it_ours)), args.reps * 4)
            t_ao = bench(lambda: theirs(next(it_ao)), args.reps * 4)
        print(f"HistogramObserver 1M, {label}: torchquant {t_ours:.3f} ms ({gbh / t_ours * 1e3:.1f} GB/s), "
              f"torch.ao {t_ao:.3f} ms | vs torch.ao {t_ao / t_ours:.1f}x, vs read {t_sum_h / t_ours * 100:.0f}%")
    ours, theirs = tqo.HistogramObserver(), ao.HistogramObserver()
    ours(h), theirs(h)
    t_ours = bench(lambda: ours.calculate_qparams(), 5)
    t_ao = bench(lambda: theirs.calculate_qparams(), 5)
    print(f"HistogramObserver.calculate_qparams (2048 bins): torchquant {t_ours:.1f} ms, torch.ao {t_ao:.1f} ms")


if __name__ == "__main__":
    main()
