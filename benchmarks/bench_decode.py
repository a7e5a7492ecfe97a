"""Token-by-token decoding of a Llama-style language model on the CPU: what a user of int8 / int4
weights sees when the model writes text (batch 1, each token a matrix-vector product per layer:
the weights are read once per token, so the bytes saved are the speed-up).

A decoder built from a config (random init: nothing is downloaded), fp32, greedy decoding on a
static KV cache after a 16-token prompt; ms per token of the decoding loop alone. Compared in
one process: fp32, the model in bf16 (torch's own kernels), torch.ao's `quantize_dynamic`
(int8, fbgemm), torchquant's `quantize_dynamic` (int8 per channel) and `quantize_weight_only`
(int4, group 128, round to nearest), each with every Linear quantized (lm_head too); beside,
the relative error of each variant's logits over the prompt against fp32's (the greedy tokens
themselves say little here: random weights give near-uniform logits, where any rounding flips
the argmax and the sequences part). Also the prefill of a longer prompt (--prefill tokens, one
forward without a cache, best of three): there every Linear is a GEMM of that many rows, bound
by arithmetic, not by the bytes of the weights.

    python benchmarks/bench_decode.py --threads 2
    python benchmarks/bench_decode.py --smoke       # tiny sizes: checks the script runs
"""
import argparse
import copy
import sys
import time
import warnings

import torch
from torch import nn

import torchquant as tq
from bench_gpu_models import decode_ms_per_token
from common import header


def model_for(size: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = {  # hidden, MLP, layers, heads, KV heads, vocabulary
        "smoke": (128, 256, 2, 4, 2, 512),
        "small": (1024, 2816, 16, 16, 4, 32000),  # 0.24 B parameters, 0.18 B of them in the blocks
        "1b": (2048, 5632, 22, 32, 4, 32000),     # TinyLlama's shape: 1.1 B parameters
    }
    h, m, n, heads, kv, vocab = sizes[size]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=m, num_hidden_layers=n,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=1024)
    torch.manual_seed(2)
    return LlamaForCausalLM(cfg).eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", choices=["small", "1b"], default="small")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prefill", type=int, default=128, help="tokens of the prompt whose prefill is timed")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size, steps = ("smoke", 4) if args.smoke else (args.size, args.tokens)
    print(header(f"Llama-style decoding on the CPU, batch 1, ms per token ({size})"))
    model = model_for(size)
    linear_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear))
    params = sum(p.numel() for p in model.parameters())
    print(f"{params / 1e9:.2f} B parameters, {linear_bytes / 1e9:.2f} GB of fp32 Linear weights (lm_head included)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = [("fp32", model), ("bf16", copy.deepcopy(model).to(torch.bfloat16))]
        variants.append(("torch.ao int8 dynamic", torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)))
        variants.append(("torchquant int8 dynamic", tq.quantize_dynamic(copy.deepcopy(model), {nn.Linear})))
        group_size = 32 if args.smoke else 128
        variants.append((f"torchquant int4 g{group_size} rtn", tq.quantize_weight_only(
            model, bits=4, group_size=group_size, method="rtn", progress=False)))
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(3))
    n_pre = 8 if args.smoke else args.prefill
    long_prompt = torch.randint(0, model.config.vocab_size, (1, n_pre), generator=torch.Generator().manual_seed(4))
    results, logits, prefill = {}, {}, {}
    for name, m in variants:
        with torch.no_grad():
            logits[name] = m(prompt).logits.float()
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                m(long_prompt, use_cache=False)
                times.append(time.perf_counter() - t0)
            prefill[name] = min(times) * 1e3
        results[name] = decode_ms_per_token(m, prompt, steps, "cpu", False)[0]
    ref_ms, ao_ms = results["fp32"], results["torch.ao int8 dynamic"]
    ref_pre, ao_pre = prefill["fp32"], prefill["torch.ao int8 dynamic"]
    print(f"{'':26} {'ms/token':>9} {'tokens/s':>9} {'vs fp32':>8} {'vs torch.ao':>11}  "
          f"{'prefill ' + str(n_pre) + ' ms':>16} {'vs fp32':>8} {'vs torch.ao':>11}  prompt logits vs fp32")
    for name, ms in results.items():
        err = float((logits[name] - logits["fp32"]).norm() / logits["fp32"].norm())
        pre = prefill[name]
        print(f"{name:26} {ms:9.2f} {1e3 / ms:9.1f} {ref_ms / ms:7.2f}x {ao_ms / ms:10.2f}x  "
              f"{pre:16.1f} {ref_pre / pre:7.2f}x {ao_pre / pre:10.2f}x  rel. error {err:.2e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
