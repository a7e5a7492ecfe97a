"""Sequence models on the CPU: torchquant against torch.ao's dynamic quantization and fp32, in one
process.

    python benchmarks/bench_sequence.py [--threads 2] [--rounds 5] [--target-ms 200] [--only lstm,bert,transformer,bag]

  lstm  the word-language-model of PyTorch's dynamic quantization tutorial: embedding 512,
        2 LSTM layers of 512, sequence 35, batch 20 and batch 1 (the LSTM part timed)
  bert  two BERT-base-sized encoder layers (Hugging Face BertModel's encoder: hidden 768, 12 heads,
        FFN 3072, random init; every Linear quantized dynamically), sequence 128, batch 1 and 8
        (torch.ao's dynamic nn.TransformerEncoderLayer fails in the fused path, whose checks read
        linear1.weight, a method on torch.ao's dynamic Linear; it runs with that path off)
  transformer  two nn.TransformerEncoderLayer of BERT-base size (768, 12 heads, FFN 3072,
        batch_first), sequence 128, batch 1 and 8: fp32 (torch's fused encoder path), torch.ao
        dynamic (its Linear layers; it runs only with the fused path off), torchquant's default set
        (Linear and MultiheadAttention int8) and torchquant with {nn.Linear} (attention in float)
  bag   EmbeddingBag, 1M rows x 64, 512 bags of 80 random lookups, sum: 8-bit and 4-bit rows vs
        torch.ao's embedding_bag_byte_rowwise_offsets / embedding_bag_4bit_rowwise_offsets, with
        the bandwidth of the bytes each reads (rows, their qparams, indices); torchquant's table
        is on transparent huge pages, and torch.ao is also timed with its table copied onto them

--reduce-range adds torchquant with 7-bit activation rows to the lstm and bert rows
(reduce_range_dynamic_qconfig: torch.ao's x86 dynamic range, which its column always uses).

Times are the 10th percentile of single calls, implementations interleaved in rounds (see
bench_linear.py). Ratios are anchor_time / torchquant_time (> 1: torchquant is faster).
"""
import argparse
import os
import sys
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import torchquant as tq  # noqa: E402
from common import header, interleaved_us  # noqa: E402

warnings.filterwarnings("ignore")


def _ao_dynamic(model, types):
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    return torch.ao.quantization.quantize_dynamic(model, types, dtype=torch.qint8)


def bench_lstm(args):
    rows = []
    torch.manual_seed(0)
    lstm = nn.LSTM(512, 512, num_layers=2, dropout=0.5).eval()
    q = tq.quantize_dynamic(lstm, {nn.LSTM})
    q7 = tq.quantize_dynamic(lstm, {nn.LSTM: tq.reduce_range_dynamic_qconfig}) if args.reduce_range else None
    # torch.ao swaps only submodules: a bare LSTM would come back in float.
    ao = _ao_dynamic(nn.ModuleDict({"lstm": lstm}), {nn.LSTM})["lstm"]
    assert type(q).__module__.startswith("torchquant.") and "quantized" in type(ao).__module__, (type(q), type(ao))
    for batch in (20, 1):
        x = torch.randn(35, batch, 512)
        with torch.no_grad():
            fns = {"fp32": lambda: lstm(x), "torch.ao": lambda: ao(x), "torchquant": lambda: q(x)}
            if q7 is not None:
                fns["torchquant 7-bit"] = lambda: q7(x)
            us = interleaved_us(fns, args.rounds, args.target_ms)
        rows.append((f"LSTM 2x512 seq35 b{batch}", us))
    return rows


def bench_bert(args):
    import transformers

    rows = []
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                                  intermediate_size=3072, attn_implementation="sdpa")
    enc = transformers.BertModel(cfg).encoder.eval()
    q = tq.quantize_dynamic(enc, {nn.Linear})
    ao = _ao_dynamic(enc, {nn.Linear})
    q7 = tq.quantize_dynamic(enc, {nn.Linear: tq.reduce_range_dynamic_qconfig}) if args.reduce_range else None
    for batch in (1, 8):
        x = torch.randn(batch, 128, 768)
        with torch.no_grad():
            fns = {"fp32": lambda: enc(x), "torch.ao": lambda: ao(x), "torchquant": lambda: q(x)}
            if q7 is not None:
                fns["torchquant 7-bit"] = lambda: q7(x)
            us = interleaved_us(fns, args.rounds, args.target_ms)
        rows.append((f"BERT-base 2 layers seq128 b{batch}", us))
    return rows


def bench_transformer(args):
    rows = []
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    q_attn = tq.quantize_dynamic(enc)  # (the default set: Linear and MultiheadAttention)
    q_lin = tq.quantize_dynamic(enc, {nn.Linear})
    ao = _ao_dynamic(enc, {nn.Linear})
    assert isinstance(q_attn.layers[0].self_attn, tq.nn.quantized.dynamic.MultiheadAttention)

    def ao_call(x):
        # torch.ao's dynamic Linear has a weight() method where the fused path reads .weight:
        # its model runs only with that path off
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return ao(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)

    for batch in (1, 8):
        x = torch.randn(batch, 128, 768)
        with torch.no_grad():
            fns = {"fp32": lambda: enc(x), "torch.ao": lambda: ao_call(x), "torchquant": lambda: q_attn(x),
                   "torchquant, attention in float": lambda: q_lin(x)}
            us = interleaved_us(fns, args.rounds, args.target_ms)
        rows.append((f"nn.TransformerEncoder 2x768 seq128 b{batch}", us))
    return rows


def bench_bag(args):
    rows = []
    torch.manual_seed(0)
    n, d, bags, per = 1_000_000, 64, 512, 80
    w = torch.randn(n, d)
    idx = torch.randint(0, n, (bags * per,))
    off = torch.arange(0, bags * per, per)
    for bits in (8, 4):
        emb = nn.EmbeddingBag(n, d, mode="sum")
        emb.weight.data = w
        emb.qconfig = tq.float_qparams_weight_only_qconfig if bits == 8 else tq.float_qparams_weight_only_qconfig_4bit
        q = tq.nn.quantized.EmbeddingBag.from_float(emb)
        if bits == 8:
            packed = torch.ops.quantized.embedding_bag_byte_prepack(w)
            fn = torch.ops.quantized.embedding_bag_byte_rowwise_offsets
        else:
            packed = torch.ops.quantized.embedding_bag_4bit_prepack(w)
            fn = torch.ops.quantized.embedding_bag_4bit_rowwise_offsets
        # torchquant keeps its table on transparent huge pages (torchquant::streamed_copy), so a
        # random row costs no TLB miss; torch.ao's table is where torch's allocator put it. The
        # third timing gives torch.ao the same pages, to show what the kernels alone do.
        packed_huge = torch.ops.torchquant.streamed_copy(packed)
        fns = {"torch.ao": lambda: fn(packed, idx, off, False, 0, False, None, None, False),
               "torch.ao huge pages": lambda: fn(packed_huge, idx, off, False, 0, False, None, None, False),
               "torchquant": lambda: q(idx, off)}
        us = interleaved_us(fns, args.rounds, args.target_ms)
        # Bytes read per lookup: the row's values and qparams (cache lines touched are more), an index.
        ours_bytes = bags * per * (q.packed_weight.shape[1] + 8)
        ao_bytes = bags * per * (packed.shape[1] + 8)
        bw = {"torchquant": ours_bytes / us["torchquant"] / 1e3, "torch.ao": ao_bytes / us["torch.ao"] / 1e3}
        rows.append((f"EmbeddingBag {bits}-bit 1Mx64 512x80", us, bw))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--target-ms", type=float, default=200)
    ap.add_argument("--only", default="lstm,bert,transformer,bag")
    ap.add_argument("--reduce-range", action="store_true",
                    help="also time torchquant with 7-bit activation rows on the lstm and bert rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(header("sequence models: torchquant vs torch.ao dynamic vs fp32"))
    parts = args.only.split(",")
    print(f"{'case':38} {'fp32 ms':>9} {'torch.ao ms':>12} {'torchquant ms':>14} {'vs ao':>7} {'vs fp32':>8}")
    for part, fn in (("lstm", bench_lstm), ("bert", bench_bert), ("transformer", bench_transformer), ("bag", bench_bag)):
        if part not in parts:
            continue
        for row in fn(args):
            name, us = row[0], row[1]
            fp = us.get("fp32")
            line = (f"{name:38} {fp / 1e3 if fp else float('nan'):9.3f} {us['torch.ao'] / 1e3:12.3f} "
                    f"{us['torchquant'] / 1e3:14.3f} {us['torch.ao'] / us['torchquant']:6.2f}x "
                    f"{(fp / us['torchquant']) if fp else float('nan'):7.2f}x")
            if len(row) > 2:
                bw = row[2]
                line += f"   GB/s read: torchquant {bw['torchquant']:.1f}, torch.ao {bw['torch.ao']:.1f}"
            if "torchquant 7-bit" in us:
                t7 = us["torchquant 7-bit"]
                line += (f"   torchquant 7-bit {t7 / 1e3:.3f} ms: {us['torch.ao'] / t7:.2f}x torch.ao, "
                         f"{(fp / t7) if fp else float('nan'):.2f}x fp32")
            if "torchquant, attention in float" in us:
                tl = us["torchquant, attention in float"]
                line += (f"   torchquant with attention in float {tl / 1e3:.3f} ms: {us['torch.ao'] / tl:.2f}x torch.ao, "
                         f"{fp / tl:.2f}x fp32")
            if "torch.ao huge pages" in us:
                line += (f"   torch.ao on huge pages {us['torch.ao huge pages'] / 1e3:.3f} ms: "
                         f"{us['torch.ao huge pages'] / us['torchquant']:.2f}x")
            print(line, flush=True)


if __name__ == "__main__":
    main()
