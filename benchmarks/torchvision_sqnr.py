"""torchvision's eight quantizable models through torchquant's eager flow: fuse_model(), prepare,
calibrate, convert; the int8 logits' SQNR against fp32, next to torch.ao's converted model on the
same calibration data (both with their x86 default qconfig). Random init (nothing is downloaded).

    python benchmarks/torchvision_sqnr.py                 # all eight
    python benchmarks/torchvision_sqnr.py resnet18 googlenet --size 160
    python benchmarks/torchvision_sqnr.py --plain --size 96   # the other classifiers, wrapped in stubs
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


def quantize_with(flow: str, model: torch.nn.Module, calib, reduce_range: bool = False) -> torch.nn.Module:
    """What a user writes for a torchvision quantizable model, with torchquant or torch.ao
    (reduce_range: torchquant with 7-bit activations, torch.ao's x86 activation range)."""
    m = copy.deepcopy(model).eval()
    if flow == "torchquant":
        m.qconfig = tq.get_default_qconfig("x86")
        if reduce_range:
            m.qconfig = tq.QConfig(activation=tq.HistogramObserver.with_args(reduce_range=True),
                                   weight=m.qconfig.weight)
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
    """(what torchquant gave, what torch.ao gave, seconds) for one model: each an SQNR, or the
    type name of the error its quantization or converted model raised (torch.ao's converted
    ShuffleNetV2 fails at small inputs, for one)."""
    model = build(name, size, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    calib = [torch.rand(batch, 3, size, size, generator=gen) for _ in range(batches)]
    test = torch.rand(batch, 3, size, size, generator=gen)
    t0 = time.perf_counter()
    out = []
    with torch.no_grad():
        ref = model(test)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for flow in ("torchquant", "ao"):
                try:
                    out.append(sqnr(ref, quantize_with(flow, model, calib)(test)))
                except Exception as exc:  # noqa: BLE001 — reported in the table, the other models still run
                    out.append(type(exc).__name__)
    return out[0], out[1], time.perf_counter() - t0


# torchvision classifiers that are not among the quantizable eight: their residuals, gates and
# class tokens are plain `+`, `*` and `torch.cat`, so they are wrapped in stubs as they are.
PLAIN = ["resnet18", "mnasnet0_5", "regnet_y_400mf", "efficientnet_b0", "efficientnet_v2_s", "mobilenet_v3_small",
         "convnext_tiny", "densenet121", "squeezenet1_1", "vgg11_bn", "swin_t", "vit_b_16"]


def build_plain(name: str, size: int, seed: int = 0) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(seed)
    model = set_bn_statistics(torchvision.models.get_model(name, weights=None), size)
    if name == "vit_b_16":  # torchvision zero-initialises the head: logits would be all zero
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def compare_plain(name: str, size: int, batch: int, batches: int, seed: int = 0):
    """(sqnr torchquant, what torch.ao gave: an SQNR or its error's type, seconds) for a plain
    torchvision model in nn.Sequential(QuantStub(), model, DeQuantStub())."""
    import torch.ao.quantization as ao

    model = build_plain(name, size, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    calib = [torch.rand(batch, 3, size, size, generator=gen) for _ in range(batches)]
    test = torch.rand(batch, 3, size, size, generator=gen)
    t0 = time.perf_counter()
    out = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = model(test)
        for lib, stubs in ((tq, (tq.QuantStub, tq.DeQuantStub)), (ao, (ao.QuantStub, ao.DeQuantStub))):
            m = torch.nn.Sequential(stubs[0](), copy.deepcopy(model), stubs[1]()).eval()
            if lib is ao:
                torch.backends.quantized.engine = "x86"
            m.qconfig = lib.get_default_qconfig("x86")
            try:
                p = lib.prepare(m)
                for x in calib:
                    p(x)
                out.append(sqnr(ref, lib.convert(p)(test)))
            except Exception as exc:  # noqa: BLE001 — torch.ao stops at the first `+` of QTensors
                out.append(type(exc).__name__)
    return out[0], out[1], time.perf_counter() - t0


def main_plain(args):
    print(f"{'model (plain, in stubs)':<24} {'torchquant SQNR dB':>19} {'torch.ao':>22}  {'s':>6}")
    for name in args.models or PLAIN:
        size = 224 if name in ("vit_b_16", "swin_t") else args.size
        s_tq, s_ao, secs = compare_plain(name, size, args.batch, args.batches)
        ao_text = f"{s_ao:.2f}" if isinstance(s_ao, float) else f"fails: {s_ao}"
        tq_text = f"{s_tq:.2f}" if isinstance(s_tq, float) else f"fails: {s_tq}"
        print(f"{name + f' @{size}':<24} {tq_text:>19} {ao_text:>22}  {secs:>6.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--plain", action="store_true",
                    help="torchvision's other classifiers, wrapped in stubs as they are (no fuse_model, no "
                         "FloatFunctional): whether each converts and runs, and its SQNR")
    ap.add_argument("--size", type=int, default=224, help="input height and width (inception_v3: at least 299)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--batches", type=int, default=4, help="calibration batches")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.plain:
        print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} threads; input {args.batch}x3x{args.size}x"
              f"{args.size} (ViT / Swin: 224), {args.batches} calibration batches, random init")
        return main_plain(args)
    args.models = args.models or MODELS
    print(f"{cpu_name()}, torch {torch.__version__}, {args.threads} threads; input {args.batch}x3x{args.size}x{args.size}, "
          f"{args.batches} calibration batches of torch.rand, random init with BatchNorm statistics of random data")
    print(f"{'model':<20} {'torchquant SQNR dB':>19} {'torch.ao SQNR dB':>17} {'difference':>11}  {'s':>6}")
    worst, failed = float("inf"), []
    for name in args.models:
        size = max(args.size, 299) if name == "inception_v3" else args.size
        s_tq, s_ao, secs = compare(name, size, args.batch, args.batches)
        if isinstance(s_tq, float) and isinstance(s_ao, float):
            worst = min(worst, s_tq - s_ao)
            diff = f"{s_tq - s_ao:+.2f}"
        else:
            failed.append(name)
            diff = "-"
        tq_text = f"{s_tq:.2f}" if isinstance(s_tq, float) else f"fails: {s_tq}"
        ao_text = f"{s_ao:.2f}" if isinstance(s_ao, float) else f"fails: {s_ao}"
        print(f"{name:<20} {tq_text:>19} {ao_text:>17} {diff:>11}  {secs:>6.1f}", flush=True)
    without = f", without {', '.join(failed)} (failed)" if failed else ""
    if worst < float("inf"):
        print(f"worst difference (torchquant - torch.ao): {worst:+.2f} dB (target: >= -1 dB){without}")


if __name__ == "__main__":
    main()
