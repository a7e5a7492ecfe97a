"""Held-out perplexity of a small GPT-style byte-level language model trained here on the
Python standard library's own source files (text no one in this project wrote), in fp32, int8
dynamic (torchquant.quantize_dynamic) and int4 weight-only by round-to-nearest, GPTQ and AWQ
(asymmetric), and GPTQ symmetric ("gptq sym": zero point 8, only the scales chosen).

    python benchmarks/int4_perplexity.py                 # the recorded run (a few minutes)
    python benchmarks/int4_perplexity.py --quick         # a smaller run (what the test does)

The model's Linears have K = 128 (attention, MLP in) and 512 (MLP out): g128 (the usual group
size of large models) is one group per output channel for most layers here, so g32 is reported
too. The int4 runs keep the LM head in float (as GPTQ and AWQ checkpoints usually keep it); int8
dynamic quantizes it too.

Data: every ``*.py`` directly in ``os.path.dirname(os.__file__)``, sorted by name; every tenth
file is held out for evaluation, the rest is training text (bytes, vocabulary 256).
"""
import argparse
import glob
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import torchquant  # noqa: E402


@dataclass
class Config:
    d: int = 128
    layers: int = 2
    heads: int = 4
    ctx: int = 128
    steps: int = 400
    batch: int = 16
    lr: float = 3e-3
    group_sizes: tuple = (128, 32)
    calib_seqs: int = 128
    eval_seqs: int = 256
    max_train_bytes: int = 4_000_000


# The test's run: groups as wide as most layers' K (64), where 4 bits cost enough to tell the
# methods apart on a model this small.
QUICK = Config(d=64, layers=2, heads=2, ctx=64, steps=150, batch=16, lr=5e-3, group_sizes=(64,), calib_seqs=64,
               eval_seqs=96, max_train_bytes=1_000_000)


def load_corpus(max_train_bytes: int):
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))
    train, held = [], []
    for i, f in enumerate(files):
        with open(f, "rb") as fh:
            (held if i % 10 == 9 else train).append(fh.read())
    tr = torch.frombuffer(bytearray(b"".join(train)[:max_train_bytes]), dtype=torch.uint8).long()
    te = torch.frombuffer(bytearray(b"".join(held)), dtype=torch.uint8).long()
    return tr, te


class Block(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.d, self.heads = c.d, c.heads
        self.ln1 = nn.LayerNorm(c.d)
        self.qkv = nn.Linear(c.d, 3 * c.d)
        self.proj = nn.Linear(c.d, c.d)
        self.ln2 = nn.LayerNorm(c.d)
        self.fc1 = nn.Linear(c.d, 4 * c.d)
        self.fc2 = nn.Linear(4 * c.d, c.d)

    def forward(self, x):
        # No unpacking of shapes: torch.fx traces this (AWQ finds the LayerNorms to fold into).
        C, H = self.d, self.heads
        qkv = self.qkv(self.ln1(x))
        q, k, v = (qkv[..., i * C:(i + 1) * C].unflatten(-1, (H, C // H)).transpose(1, 2) for i in range(3))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).flatten(2))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.tok = nn.Embedding(256, c.d)
        self.pos = nn.Embedding(c.ctx, c.d)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(c.d)
        self.head = nn.Linear(c.d, 256)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def batches(data, n, ctx, gen):
    i = torch.randint(0, len(data) - ctx - 1, (n,), generator=gen)
    x = torch.stack([data[j:j + ctx] for j in i.tolist()])
    y = torch.stack([data[j + 1:j + ctx + 1] for j in i.tolist()])
    return x, y


def train(c: Config, data, seed=0, log=print):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = GPT(c)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c.lr, total_steps=c.steps, pct_start=0.1)
    t0 = time.time()
    for step in range(c.steps):
        x, y = batches(data, c.batch, c.ctx, gen)
        loss = F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == c.steps - 1:
            log(f"  step {step:4d}  loss {loss.item():.3f}  ({time.time() - t0:.0f} s)")
    return model.eval()


def eval_windows(data, c: Config):
    n = min(c.eval_seqs, (len(data) - 1) // c.ctx)
    starts = torch.linspace(0, len(data) - c.ctx - 2, n).long().tolist()
    x = torch.stack([data[s:s + c.ctx] for s in starts])
    y = torch.stack([data[s + 1:s + c.ctx + 1] for s in starts])
    return x, y


@torch.no_grad()
def perplexity(model, xy, batch=32):
    x, y = xy
    total, count = 0.0, 0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch]).float()
        total += float(F.cross_entropy(logits.reshape(-1, 256), y[i:i + batch].reshape(-1), reduction="sum"))
        count += y[i:i + batch].numel()
    return math.exp(total / count)


def run(c: Config, log=print, methods=("rtn", "gptq", "gptq sym", "awq"), exclude=("head",), load=None,
        save=None):
    """Trains (or loads), quantizes, evaluates: {name: perplexity}, the fp32 model. A method
    ending in " sym" runs with symmetric=True."""
    tr, te = load_corpus(c.max_train_bytes)
    log(f"corpus: {len(tr):,} training bytes, {len(te):,} held-out bytes; model d={c.d} layers={c.layers} "
        f"ctx={c.ctx}, {c.steps} steps")
    if load:
        model = GPT(c)
        model.load_state_dict(torch.load(load, weights_only=True))
        model.eval()
    else:
        model = train(c, tr, log=log)
    if save:
        torch.save(model.state_dict(), save)
    evalxy = eval_windows(te, c)
    gen = torch.Generator().manual_seed(1)
    calib = [batches(tr, 16, c.ctx, gen)[0] for _ in range(c.calib_seqs // 16)]
    res = {"fp32": perplexity(model, evalxy)}
    q8 = torchquant.quantize_dynamic(model, {nn.Linear})
    res["int8 dynamic"] = perplexity(q8, evalxy)
    for gs in c.group_sizes:
        for m in methods:
            t0 = time.time()
            method, _, mode = m.partition(" ")
            q = torchquant.quantize_weight_only(model, bits=4, group_size=gs, method=method, calib_data=calib,
                                                symmetric=mode == "sym", exclude=list(exclude), progress=False)
            key = f"int4 {m} g{gs}"
            res[key] = perplexity(q, evalxy)
            log(f"  {key}: quantized in {time.time() - t0:.1f} s, perplexity {res[key]:.4f}")
    return res, model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--group-size", type=int, nargs="*", default=None)
    ap.add_argument("--save", help="save the trained fp32 state dict here")
    ap.add_argument("--load", help="evaluate this saved state dict instead of training")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    c = QUICK if args.quick else Config()
    if args.group_size:
        c.group_sizes = tuple(args.group_size)
    t0 = time.time()
    res, _ = run(c, load=args.load, save=args.save)
    base = res["fp32"]
    print(f"\nheld-out perplexity (bytes), {time.time() - t0:.0f} s in all, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"{'model':<22} {'perplexity':>10} {'vs fp32':>8}")
    for k, v in res.items():
        print(f"{k:<22} {v:10.4f} {100 * (v / base - 1):+7.2f}%")


if __name__ == "__main__":
    main()
