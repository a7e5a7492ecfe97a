"""Model-level CUDA figures (sequence models, int4 decoding), each against its anchor in the same process:

- the word-language-model LSTM (2 layers of 512, sequence 35, batch 64) after `quantize_dynamic`
  against the fp32 and bf16 cuDNN `nn.LSTM`;
- EmbeddingBag 8-bit and 4-bit (1M rows x 64, 512 bags of 80 lookups, sum) against the fp32
  `nn.EmbeddingBag`, with the rate of the bytes each lookup reads;
- a Llama-style decoder built from a config (random init, about 1.2 B parameters, bf16): greedy
  decoding after `quantize_weight_only(bits=4, method="rtn")` against the bf16 original, per token
  on a static KV cache (prefill excluded), each step run eagerly, then captured once as a CUDA
  graph and replayed, where launch overhead no longer hides the bytes read.

    python benchmarks/bench_gpu_models.py              # on a GPU (about a minute on an H100)
    python benchmarks/bench_gpu_models.py --smoke      # tiny sizes on the CPU: checks the script runs

Timings: CUDA events (median); on the CPU (--smoke) wall clock, meaningless as figures.
"""
import argparse
import copy
import statistics
import sys
import time
import warnings

import torch
from torch import nn

import torchquant as tq


def timed(fn, device, reps=20, warmup=3):
    """Median milliseconds of fn() over reps calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def line(name, ms, anchor_ms=None, anchor="", extra=""):
    ratio = f"{anchor_ms / ms:6.2f}x vs {anchor}" if anchor_ms else ""
    print(f"{name:<52} {ms:10.3f} ms  {ratio} {extra}", flush=True)


def bench_lstm(device, smoke):
    hidden, seq, batch = (32, 5, 4) if smoke else (512, 35, 64)
    torch.manual_seed(0)
    f = nn.LSTM(hidden, hidden, num_layers=2).eval()
    q = tq.quantize_dynamic(nn.Sequential(f), {nn.LSTM})[0].to(device)
    f = f.to(device)
    x = torch.randn(seq, batch, hidden, device=device)
    with torch.no_grad():
        anchor = timed(lambda: f(x), device)
        fb = nn.LSTM(hidden, hidden, num_layers=2).to(device, torch.bfloat16).eval()
        fb.load_state_dict({k: v.to(torch.bfloat16) for k, v in f.state_dict().items()})
        xb = x.bfloat16()
        anchor_bf16 = timed(lambda: fb(xb), device)
        ms = timed(lambda: q(x), device)
        err = float((q(x)[0] - f(x)[0]).norm() / f(x)[0].norm())
    name = f"LSTM 2x{hidden} seq {seq} b{batch} int8 dynamic"
    line(name, ms, anchor, "fp32 nn.LSTM", f"(rel. error {err:.2e})")
    line(name, ms, anchor_bf16, "bf16 nn.LSTM")
    line(f"  (anchors fp32 / bf16 nn.LSTM)", anchor, extra=f"{anchor_bf16:.3f} ms")


def bench_embedding_bag(device, smoke):
    rows, dim, bags, per_bag = (1000, 64, 16, 8) if smoke else (1 << 20, 64, 512, 80)
    torch.manual_seed(1)
    emb = nn.EmbeddingBag(rows, dim, mode="sum")  # on the CPU: from_float quantizes this one
    idx = torch.randint(0, rows, (bags * per_bag,), device=device)
    off = torch.arange(0, bags * per_bag, per_bag, device=device)
    femb = copy.deepcopy(emb).to(device)
    with torch.no_grad():
        anchor = timed(lambda: femb(idx, off), device)
        for bits, qconfig in ((8, tq.float_qparams_weight_only_qconfig), (4, tq.float_qparams_weight_only_qconfig_4bit)):
            emb.qconfig = qconfig
            q = tq.nn.quantized.EmbeddingBag.from_float(emb).to(device)
            ms = timed(lambda: q(idx, off), device)
            row_bytes = q.packed_weight.shape[1] * q.packed_weight.element_size()
            gbs = idx.numel() * row_bytes / (ms * 1e-3) / 1e9
            line(f"EmbeddingBag {bits}-bit {rows}x{dim} {bags}x{per_bag} sum", ms, anchor, "fp32 EmbeddingBag",
                 f"({gbs:.0f} GB/s of rows read)")
    line(f"  (anchor fp32 EmbeddingBag: {idx.numel() * dim * 4 / (anchor * 1e-3) / 1e9:.0f} GB/s of rows read)",
         anchor)


def llama(device, smoke):
    from transformers import LlamaConfig, LlamaForCausalLM

    if smoke:
        cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    else:  # TinyLlama-sized: 22 layers, hidden 2048, MLP 5632, 32 heads / 4 KV heads: 1.2 B parameters
        cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                          num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)
    torch.manual_seed(2)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    return model


def decode_ms_per_token(model, prompt, steps, device, graph):
    """Greedy decoding on a static KV cache after the prompt's prefill: ms per token of the
    decoding loop alone (each step feeds its argmax back in), the step run eagerly or captured
    once as a CUDA graph and replayed (best of three loops); and the tokens of the last loop."""
    import inspect

    from transformers import StaticCache

    P = prompt.shape[1]
    cache = StaticCache(config=model.config, max_cache_len=P + steps + 8)
    params = inspect.signature(model.model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x
    tok = torch.empty(1, 1, dtype=torch.long, device=device)
    pos = torch.empty(1, dtype=torch.long, device=device)
    nxt = torch.empty(1, 1, dtype=torch.long, device=device)

    def call(ids, positions):
        kw = {cache_kw: cache, "position_ids": positions.view(1, -1), "use_cache": True}
        if "cache_position" in params:  # older versions place the write by it
            kw["cache_position"] = positions
        return model(input_ids=ids, **kw).logits

    def step():
        nxt.copy_(call(tok, pos)[:, -1:].argmax(-1))

    def prefill():
        cache.reset()  # keys, values (and, where the cache counts them, its positions) back to 0
        tok.copy_(call(prompt, torch.arange(P, device=device))[:, -1:].argmax(-1))
        pos.fill_(P)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        g = None
        if graph:
            prefill()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                step()
                torch.cuda.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, stream=s):
                    step()
            torch.cuda.current_stream().wait_stream(s)
        best, toks = float("inf"), None
        for _ in range(4):  # the first loop warms up
            prefill()
            sync()
            out = []
            t0 = time.perf_counter()
            for _ in range(steps):
                g.replay() if g is not None else step()
                out.append(nxt.clone())
                tok.copy_(nxt)
                pos.add_(1)
            sync()
            if toks is not None:
                best = min(best, (time.perf_counter() - t0) * 1e3 / steps)
            toks = torch.cat(out, 1)
    return best, toks


def bench_llama_decode(device, smoke):
    model = llama(device, smoke)
    params = sum(p.numel() for p in model.parameters())
    linear_bytes = sum(m.weight.numel() * 2 for m in model.modules() if type(m) is nn.Linear)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group_size = 32 if smoke else 128
        q = tq.quantize_weight_only(model, bits=4, group_size=group_size, method="rtn", exclude=["lm_head"],
                                    progress=False)
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), device=device,
                           generator=torch.Generator(device=device).manual_seed(3))
    new = 8 if smoke else 64
    name = f"Llama {params / 1e9:.2f}B ({linear_bytes / 1e9:.2f} GB of bf16 Linear weights, lm_head kept bf16)"
    print(name, flush=True)
    for graph in ((False, True) if device == "cuda" else (False,)):
        how = "CUDA graph step" if graph else "eager step"
        try:
            ref_ms, ref_tok = decode_ms_per_token(model, prompt, new, device, graph)
            q_ms, q_tok = decode_ms_per_token(q, prompt, new, device, graph)
        except Exception as exc:  # e.g. a capture refused by a host sync in the step
            print(f"  decode, {how}: not measured: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            continue
        agree = float((ref_tok == q_tok).float().mean())
        line(f"  decode, {how}, int4 g{group_size} rtn", q_ms, ref_ms, "bf16",
             f"({q_tok.shape[1]} tokens; greedy tokens equal to bf16's: {agree:.0%})")
        line(f"  (anchor bf16, {how}, per token)", ref_ms)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--only", choices=["lstm", "embedding_bag", "llama"], action="append")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu_models: no CUDA device (use --smoke for the CPU check)", file=sys.stderr)
        return 1
    what = args.only or ["lstm", "embedding_bag", "llama"]
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu (smoke)'}  torch {torch.__version__}  "
          f"{tq.build_info()}", flush=True)
    for name, fn in (("lstm", bench_lstm), ("embedding_bag", bench_embedding_bag), ("llama", bench_llama_decode)):
        if name in what:
            try:
                fn(device, args.smoke)
            except Exception as exc:  # one failing section must not hide the others
                print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:500]}", flush=True)
                if args.smoke:
                    raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
