"""Peak memory and wall time of `quantize_weight_only` (RTN / GPTQ / AWQ, int4 g128) and of
`quantize_dynamic` on a Llama-style `LlamaForCausalLM` built from a config (random init; the LM
head quantized too), as a copy or in place: each case in a process of its own, its peak resident
memory (VmHWM, reset before the call) above the memory with the float model built.

    python benchmarks/bench_weight_only_memory.py [--layers 16] [--hidden 1024] [--vocab 32000]
        [--methods rtn gptq awq dynamic] [--threads 1]

Run it with ``MALLOC_MMAP_THRESHOLD_=65536`` in the environment for the peak of live memory
(freed blocks then leave the process at once; without it, the allocator keeps some, and the
peak varies by a few hundred MB from run to run). Calibration: 8 sequences of 128 tokens.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import warnings


def one(args):
    """The case in this process: prints one JSON line."""
    import torch
    from torch import nn
    from transformers import LlamaForCausalLM

    import torchquant
    from common import llama_config, proc_status_mb

    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    cfg = llama_config(args.layers, args.hidden, args.vocab)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    linear_mb = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear)) / 2**20
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, args.vocab, (1, 128), generator=gen) for _ in range(8)]
    base = proc_status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM
    t0 = time.perf_counter()
    if args.case == "dynamic":
        torchquant.quantize_dynamic(model, {nn.Linear}, inplace=args.inplace)
    else:
        torchquant.quantize_weight_only(model, bits=4, group_size=128, method=args.case,
                                        calib_data=None if args.case == "rtn" else calib,
                                        inplace=args.inplace, progress=False)
    secs = time.perf_counter() - t0
    print(json.dumps({"case": args.case, "inplace": args.inplace, "linear_MB": round(linear_mb),
                      "peak_over_model_MB": round(proc_status_mb("VmHWM") - base), "secs": round(secs, 1)}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--methods", nargs="+", default=["rtn", "gptq", "awq", "dynamic"],
                   choices=["rtn", "gptq", "awq", "dynamic"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--inplace", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        return one(args)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    torch.set_num_threads(args.threads)
    from common import header

    print(header(f"quantize_weight_only / quantize_dynamic memory: Llama-style, {args.layers} layers, hidden "
                 f"{args.hidden}, vocabulary {args.vocab}; MALLOC_MMAP_THRESHOLD_="
                 f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}"))
    print(f"{'case':10s} {'mode':8s} {'Linear MB':>10s} {'peak above model MB':>20s} {'s':>8s}")
    for case in args.methods:
        for inplace in (False, True):
            cmd = [sys.executable, os.path.abspath(__file__), "--case", case, "--layers", str(args.layers),
                   "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--threads", str(args.threads)]
            r = subprocess.run(cmd + (["--inplace"] if inplace else []), capture_output=True, text=True)
            if r.returncode:
                print(f"{case:10s} {'in place' if inplace else 'copy':8s} failed: {r.stderr.strip()[-300:]}")
                continue
            d = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{case:10s} {'in place' if inplace else 'copy':8s} {d['linear_MB']:10d} "
                  f"{d['peak_over_model_MB']:20d} {d['secs']:8.1f}")


if __name__ == "__main__":
    main()
