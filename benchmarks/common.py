"""Timing helpers shared by the benchmarks: median of repeated runs after a warm-up, interleaved
percentile timing of several implementations, and the machine description printed with every
table; the command line and table of the per-layer benchmarks."""
import argparse
import os
import platform
import statistics
import time

import torch


def timeit(fn, *, warmup=3, repeat=15, min_time=0.2, cuda=False):
    """Median seconds per call of fn(), wall clock. cuda=True: fn() launches CUDA work, and each
    call is timed up to a torch.cuda.synchronize(); the CPU work of the default (cuda=False) is
    timed without one, so that a GPU in the machine adds nothing to it."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start < min_time and len(times) < 10 * repeat):
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    keep = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"]
                    return " ".join(k for k in keep if k in flags)
    except OSError:
        pass
    return ""


def header(title):
    import torchquant

    return (f"# {title}\n# {cpu_name()} [{cpu_flags()}], {os.cpu_count()} cores, threads={torch.get_num_threads()}, "
            f"torch {torch.__version__}, torchquant {torchquant.__version__} (cpu_isa={torchquant.cpu_isa()}), "
            f"{time.strftime('%Y-%m-%d')}")


def interleaved_us(fns, rounds, target_ms):
    """{name: 10th-percentile microseconds of single calls} for a dict of callables, timed in
    `rounds` rounds; in each round every callable runs for about target_ms of back-to-back calls
    (so its data is as warm as a loop over one layer keeps it), in an order rotated from round to
    round. A drift of the machine's speed (this is a shared machine) then falls on anchors and
    torchquant alike instead of on whichever ran during it; a descheduled call is an outlier
    that the percentile drops."""
    names = list(fns)
    for n in names:
        fns[n]()
    times = {n: [] for n in names}
    for k in range(rounds):
        for n in names[k % len(names):] + names[:k % len(names)]:
            start = time.perf_counter()
            calls = 0
            while time.perf_counter() - start < target_ms / 1e3 or calls < 3:
                t0 = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t0)
                calls += 1
    return {n: sorted(ts)[len(ts) // 10] * 1e6 for n, ts in times.items()}


def run_layers(title, shapes, bench, label_width, flags=()):
    """The main of a per-layer benchmark (bench_conv.py, bench_conv_transpose.py). Options
    --threads, --rounds, --target-ms, --batch, --only (a substring of the shape labels), and the
    on/off options `flags` ((name, help) pairs, passed to bench as keyword arguments). Prints
    the header (title.format(batch=...)) and one row per shape: bench(shape, batch, rounds,
    target_ms) gives {"tq", "ao", "fp32"} in microseconds; shape[0] is its label."""
    ap = argparse.ArgumentParser()
    for name, text in flags:
        ap.add_argument(f"--{name}", action="store_true", help=text)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--target-ms", type=float, default=40)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--only", default=None, help="substring of the shape labels to run")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(header(title.format(batch=a.batch)))
    print(f"{'layer':<{label_width}} {'torchquant us':>13} {'torch.ao us':>11} {'fp32 us':>9} {'vs ao':>7} "
          f"{'vs fp32':>8}")
    for shape in shapes:
        if a.only and a.only not in shape[0]:
            continue
        t = bench(shape, a.batch, a.rounds, a.target_ms,
                  **{name.replace("-", "_"): getattr(a, name.replace("-", "_")) for name, _ in flags})
        print(f"{shape[0]:<{label_width}} {t['tq']:13.1f} {t['ao']:11.1f} {t['fp32']:9.1f} {t['ao'] / t['tq']:6.2f}x "
              f"{t['fp32'] / t['tq']:7.2f}x", flush=True)


def proc_status_mb(key):
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in MB; NaN where there is none."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def llama_config(layers, hidden, vocab):
    """The Llama-style configuration of the memory benchmarks: FFN 11/4 x hidden, heads of 64,
    4 query heads per key/value head, untied LM head."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
                       num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 256),
                       vocab_size=vocab, tie_word_embeddings=False)
