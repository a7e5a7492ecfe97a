"""Wall time of GPTQ / AWQ calibration (`quantize_weight_only`) on a Llama-style model built from
a config (random init), with the first decoder layer's inputs cached and each layer run alone
(`cache_block_inputs=True`, the default) against forwards of the whole model up to each Linear
(`cache_block_inputs=False`, as before), in one process; also the decoder-layer calls each made
and whether the two results are the same bit for bit.

    python benchmarks/bench_calibration.py [--layers 4 8 16] [--hidden 256] [--tokens 4096] [--threads 2]

Ratio = whole-forward time / cached time (> 1: caching is faster). The GPTQ / AWQ solves
themselves (the same in both) are part of both times.
"""
import argparse
import time
import warnings

import torch

import torchquant

from common import header


def build(layers, hidden, vocab=512):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 32 * 32, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 128),
                      vocab_size=vocab, max_position_embeddings=4096)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def run(model, method, calib, cache):
    calls = [0]
    hooks = [layer.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
             for layer in model.model.layers]
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = torchquant.quantize_weight_only(model, bits=4, group_size=128 if model.config.hidden_size >= 128
                                                else 32, method=method, calib_data=calib, exclude=["lm_head"],
                                                cache_block_inputs=cache, progress=False)
        return q, time.perf_counter() - t0, calls[0]
    finally:
        for h in hooks:
            h.remove()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=4096, help="calibration tokens (sequences of 256)")
    ap.add_argument("--methods", nargs="+", default=["gptq", "awq"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(header(f"GPTQ / AWQ calibration: cached block inputs vs whole forwards (Llama-style, hidden "
                 f"{args.hidden}, {args.tokens} calibration tokens)"))
    print(f"{'layers':>6}  {'method':6}  {'whole s':>8}  {'cached s':>8}  {'ratio':>6}  {'layer calls':>17}  same")
    for n in args.layers:
        model = build(n, args.hidden)
        g = torch.Generator().manual_seed(1)
        seq = min(256, args.tokens)
        calib = [torch.randint(0, model.config.vocab_size, (1, seq), generator=g)
                 for _ in range(max(1, args.tokens // seq))]
        for method in args.methods:
            whole, t_whole, c_whole = run(model, method, calib, False)
            cached, t_cached, c_cached = run(model, method, calib, True)
            sa, sb = whole.state_dict(), cached.state_dict()
            same = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
            print(f"{n:>6}  {method:6}  {t_whole:>8.2f}  {t_cached:>8.2f}  {t_whole / t_cached:>5.2f}x  "
                  f"{c_whole:>7} -> {c_cached:<7}  {'yes' if same else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
