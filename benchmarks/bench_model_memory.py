"""Resident memory of a quantized model: a Llama-style ``LlamaForCausalLM`` built from a config
(random init), its Linear layers (the LM head too) quantized in place, the float weights freed,
one forward run; each case in a process of its own, its resident memory (VmRSS) above the
process before the model was built, and the bytes ``torch.save(model.state_dict())`` writes.
The token embedding stays float32 in every case (vocabulary x hidden x 4 bytes).

    python benchmarks/bench_model_memory.py [--layers 8] [--hidden 1024] [--vocab 32000]

Cases: fp32; torch.ao ``quantize_dynamic`` (int8, fbgemm's packed weights); torchquant
``quantize_dynamic`` (int8) and ``quantize_weight_only`` (int4 g128), each as converted (one copy
of the weights: the packed layout) and with the portable weight kept beside it
(``--both``: each layer's ``qweight`` read back, as the converted layers held before). The child
processes run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed float weights leave the process.
"""
import argparse
import ctypes
import io
import json
import os
import subprocess
import sys
import warnings

CASES = ["fp32", "torch.ao int8 dynamic", "torchquant int8 dynamic", "torchquant int8 dynamic, both forms",
         "torchquant int4 g128", "torchquant int4 g128, both forms"]


def _settle():
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


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
    tokens = torch.randint(0, args.vocab, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # (the libraries' first-call allocations, before the baseline)
        LlamaForCausalLM(llama_config(1, 64, 64)).eval()(tokens % 64)
    _settle()
    base = proc_status_mb("VmRSS")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    case = args.case
    if case == "torch.ao int8 dynamic":
        torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, inplace=True)
    elif case.startswith("torchquant int8 dynamic"):
        torchquant.quantize_dynamic(model, {nn.Linear}, inplace=True)
    elif case.startswith("torchquant int4"):
        torchquant.quantize_weight_only(model, bits=4, group_size=128, inplace=True, progress=False)
    if case.endswith("both forms"):
        for m in model.modules():
            if "qweight" in m._buffers:
                m.qweight  # (puts the portable weight back beside the packed layout)
    with torch.no_grad():
        model(tokens)
    _settle()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    saved = len(buf.getvalue()) / 2**20
    del buf
    _settle()
    rss = proc_status_mb("VmRSS") - base
    print(json.dumps({"case": case, "rss_MB": round(rss, 1), "state_dict_MB": round(saved, 1)}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        return one(args)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    from common import header

    torch.set_num_threads(args.threads)
    print(header(f"resident memory of a quantized Llama-style model: {args.layers} layers, hidden {args.hidden}, "
                 f"vocabulary {args.vocab}"))
    print(f"{'case':38s} {'resident MB':>12s} {'state dict MB':>14s} {'fp32 / resident':>16s}")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    fp32 = None
    for case in CASES:
        cmd = [sys.executable, os.path.abspath(__file__), "--case", case, "--layers", str(args.layers),
               "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--threads", str(args.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode:
            print(f"{case:38s} failed: {r.stderr.strip()[-300:]}")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        fp32 = d["rss_MB"] if case == "fp32" else fp32
        ratio = f"{fp32 / d['rss_MB']:.2f}x" if fp32 else "-"
        print(f"{case:38s} {d['rss_MB']:12.1f} {d['state_dict_MB']:14.1f} {ratio:>16s}")


if __name__ == "__main__":
    main()
