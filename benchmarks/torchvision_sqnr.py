"""torchvision's eight quantizable models through torchquant's eager flow: fuse_model(), prepare,
calibrate, convert; the int8 logits' SQNR against fp32, next to torch.ao's converted model on the
same calibration data (both with their x86 default qconfig). Random init (nothing is downloaded).

    python benchmarks/torchvision_sqnr.py                 # all eight
    python benchmarks/torchvision_sqnr.py resnet18 googlenet --size 160
"""
import argparse
import copy
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import cpu_name  # noqa: E402

import torchquant as tq  # noqa: E402

MODELS = ["googlenet", "inception_v3", "mobilenet_v2", "mobilenet_v3_large", "resnet18", "resnet50",
          "resnext101_32x8d", "shufflenet_v2_x1_0"]


def sqnr(ref: torch.Tensor, y: torch.Tensor) -> float:
    """10 log10(|ref|^2 / |ref - y|^2), in dB."""
    noise = (ref.double() - y.double()).pow(2).sum()
    return float(10 * torch.log10(ref.double().pow(2).sum() / noise.clamp_min(1e-30)))


def set_bn_statistics(model: torch.nn.Module, size: int, batches: int = 3, seed: int = 100) -> torch.nn.Module:
    """BatchNorm running statistics from a few random batches (cumulative average): with random
    weights and the default statistics (mean 0, var 1) the activations of a deep model vanish or
    explode (MobileNetV2's logits are ~1e-10), and any SQNR is meaningless. With statistics of
    its own activations the random model is normalized as a trained one is."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.rand(4, 3, size, size, generator=gen))
    return model.eval()


def build(name: str, size: int, seed: int = 0) -> torch.nn.Module:
    """A torchvision quantizable model, random init, BatchNorm statistics set on random data."""
    import torchvision.models.quantization as tvq
    torch.manual_seed(seed)
    kwargs = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = True
    return set_bn_statistics(getattr(tvq, name)(weights=None, quantize=False, **kwargs), size)


def quantize_with(flow: str, model: torch.nn.Module, calib) -> torch.nn.Module:
    """What a user writes for a torchvision quantizable model, with torchquant or torch.ao."""
    m = copy.deepcopy(model).eval()
    if flow == "torchquant":
        m.qconfig = tq.get_default_qconfig("x86")
        m.fuse_model()
        tq.prepare(m, inplace=True)
        with torch.no_grad():
            for x in calib:
                m(x)
        return tq.convert(m, inplace=True)
    import torch.ao.quantization as ao
    torch.backends.quantized.engine = "x86"
    m.qconfig = ao.get_default_qconfig("x86")
    m.fuse_model()
    ao.prepare(m, inplace=True)
    with torch.no_grad():
        for x in calib:
            m(x)
    return ao.convert(m, inplace=True)


def compare(name: str, size: int, batch: int, batches: int, seed: int = 0):
    """(sqnr torchquant, sqnr torch.ao, seconds) for one model."""
    model = build(name, size, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    calib = [torch.rand(batch, 3, size, size, generator=gen) for _ in range(batches)]
    test = torch.rand(batch, 3, size, size, generator=gen)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = model(test)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y_tq = quantize_with("torchquant", model, calib)(test)
            y_ao = quantize_with("ao", model, calib)(test)
    return sqnr(ref, y_tq), sqnr(ref, y_ao), time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=MODELS)
    ap.add_argument("--size", type=int, default=224, help="input height and width (inception_v3: at least 299)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--batches", type=int, default=4, help="calibration batches")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} threads; input {args.batch}x3x{args.size}x{args.size}, "
          f"{args.batches} calibration batches of torch.rand, random init with BatchNorm statistics of random data")
    print(f"{'model':<20} {'torchquant SQNR dB':>19} {'torch.ao SQNR dB':>17} {'difference':>11}  {'s':>6}")
    worst = float("inf")
    for name in args.models:
        size = max(args.size, 299) if name == "inception_v3" else args.size
        s_tq, s_ao, secs = compare(name, size, args.batch, args.batches)
        worst = min(worst, s_tq - s_ao)
        print(f"{name:<20} {s_tq:>19.2f} {s_ao:>17.2f} {s_tq - s_ao:>+11.2f}  {secs:>6.1f}", flush=True)
    print(f"worst difference (torchquant - torch.ao): {worst:+.2f} dB (target: >= -1 dB)")


if __name__ == "__main__":
    main()
