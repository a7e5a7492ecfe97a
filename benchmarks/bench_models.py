"""Whole-model inference time: fp32, torch.ao int8 and torchquant int8 (static and dynamic),
in one process with 2 threads, at batch sizes 1 to 1024. Prints milliseconds per batch and
torchquant's speed-up over each anchor.

Models: the lesson's MLP (128 -> 256 -> 10), the MNIST MLP (784 -> 256 -> 256 -> 10) and
nn.TransformerEncoderLayer(d_model=512) (dynamic only: its attention takes float tensors).

    python benchmarks/bench_models.py [--threads 2] [--batches 1,16,64,256,1024]
"""
import argparse
import copy
import os
import sys
import warnings

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torchquant  # noqa: E402
from common import header  # noqa: E402
from torchquant.demo import time_models  # noqa: E402


def _times(models, x, rounds=15):
    """ms per call of each model: interleaved rounds, best round, so that load from elsewhere
    (which only ever adds time) falls on every model alike."""
    return [t * 1e3 for t in time_models(models, x, "cpu", rounds=rounds, per_round=5, warmup=3)]


class MLP(nn.Module):
    def __init__(self, sizes, stubs):
        super().__init__()
        self.quant, self.dequant = stubs[0](), stubs[1]()
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.dequant(self.body(self.quant(x)))


class _WithoutMHAFastpath(nn.Module):
    """Runs a model with the fused attention inference path switched off. torch.ao's dynamic
    Linear has weight() as a method, which crashes TransformerEncoderLayer's fused path; this
    switches it off for that anchor alone, so that it can be timed interleaved with the others
    (timed on its own, its weights would stay in the cache that the others' evict)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return self.model(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)


def _static(sizes, kind, calib):
    import torch.ao.quantization as taq

    torch.manual_seed(0)
    if kind == "ao":
        m = MLP(sizes, (taq.QuantStub, taq.DeQuantStub)).eval()
        m.qconfig = taq.get_default_qconfig("x86")
        p = taq.prepare(m)
        p(calib)
        return taq.convert(p)
    m = MLP(sizes, (torchquant.QuantStub, torchquant.DeQuantStub)).eval()
    m.qconfig = torchquant.get_default_qconfig("x86")
    p = torchquant.prepare(m)
    p(calib)
    return torchquant.convert(p)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,16,64,256,1024")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    torch.backends.quantized.engine = "x86"
    batches = [int(b) for b in args.batches.split(",")]
    print(header("whole models, ms per batch"))
    print(f"{'model':22s} {'batch':>5s} {'fp32':>8s} {'ao int8':>8s} {'tq int8':>8s} {'ao dyn':>8s} {'tq dyn':>8s} "
          f"{'vs fp32':>8s} {'vs ao':>7s} {'dyn vs ao dyn':>15s}")
    for name, sizes in (("lesson MLP", [128, 256, 10]), ("MNIST MLP", [784, 256, 256, 10])):
        calib = torch.randn(256, sizes[0])
        torch.manual_seed(0)
        fp = MLP(sizes, (nn.Identity, nn.Identity)).eval()
        ao = _static(sizes, "ao", calib)
        tq = _static(sizes, "tq", calib)
        ao_dyn = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp), {nn.Linear}, dtype=torch.qint8)
        tq_dyn = torchquant.quantize_dynamic(fp, {nn.Linear}, dtype=torch.qint8)
        for b in batches:
            x = torch.randn(b, sizes[0])
            with torch.inference_mode():
                t = dict(zip(("fp", "ao", "tq", "aod", "tqd"), _times([fp, ao, tq, ao_dyn, tq_dyn], x)))
            print(f"{name:22s} {b:5d} {t['fp']:8.3f} {t['ao']:8.3f} {t['tq']:8.3f} {t['aod']:8.3f} {t['tqd']:8.3f} "
                  f"{t['fp'] / t['tq']:7.2f}x {t['ao'] / t['tq']:6.2f}x {t['aod'] / t['tqd']:14.2f}x")
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=512, nhead=8, batch_first=True).eval()
    ao_dyn = torch.ao.quantization.quantize_dynamic(copy.deepcopy(layer), {nn.Linear}, dtype=torch.qint8)
    tq_dyn = torchquant.quantize_dynamic(layer, {nn.Linear}, dtype=torch.qint8)
    for b in batches:
        seq = 16
        x = torch.randn(max(1, b // seq), seq if b >= seq else b, 512)
        with torch.inference_mode():
            t = dict(zip(("fp", "aod", "tqd"), _times([layer, _WithoutMHAFastpath(ao_dyn), tq_dyn], x)))
        print(f"{'TransformerEncoderLayer':22s} {b:5d} {t['fp']:8.3f} {'-':>8s} {'-':>8s} {t['aod']:8.3f} {t['tqd']:8.3f} "
              f"{t['fp'] / t['tqd']:7.2f}x {'-':>7s} {t['aod'] / t['tqd']:14.2f}x")


if __name__ == "__main__":
    main()
