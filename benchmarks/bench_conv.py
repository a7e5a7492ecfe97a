"""CPU int8 convolution: torchquant against torch.ao's x86 int8 conv and fp32 F.conv2d, per
layer shape of ResNet-18 and MobileNetV2 at 224x224, measured in one process.

    python benchmarks/bench_conv.py [--threads 2] [--rounds 5] [--target-ms 40] [--batch 1]

Each implementation is timed as the 10th percentile of single-call times, interleaved in
rounds (bench_linear.interleaved_us). All take and give their natural activation format:
  torchquant    ops.conv_int8, uint8 channels-last in, uint8 channels-last out (requantized)
  torch.ao      torch.ao.nn.quantized.Conv2d on a quint8 channels-last tensor (x86 engine),
                quint8 out
  fp32          F.conv2d, float32 channels-last (oneDNN)
Ratios are anchor_time / torchquant_time (> 1: torchquant is faster).

Rows marked "relu zp0 bN" are layers as they run inside a converted model: the input follows a
ReLU (activation zero point 0, values >= 0), the conv has its ReLU fused (torch.ao's ConvReLU2d,
output zero point 0) and the batch is N whatever --batch says. torch.ao's depthwise kernel takes
a faster path for a zero activation zero point, so the zp-128 rows alone misjudge the model.

--reduce-range gives both libraries 7-bit activations (codes 0..127, zero point 64, or 0 after a
ReLU), the range of torch.ao's x86 default qconfig: on CPUs without AVX-512 VNNI, torchquant's
GEMM then takes its vpmaddubsw loop (gemm_avx2.cpp).
"""
import os
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_linear import interleaved_us  # noqa: E402
from common import run_layers  # noqa: E402

import torchquant  # noqa: E402

warnings.filterwarnings("ignore")
ops = torch.ops.torchquant

# (label, Cin, Cout, H (= W) of the input, kernel, stride, padding, groups)
SHAPES = [
    ("r18 conv1 7x7/2", 3, 64, 224, 7, 2, 3, 1),
    ("r18 l1 3x3 64", 64, 64, 56, 3, 1, 1, 1),
    ("r18 l2 3x3/2 64-128", 64, 128, 56, 3, 2, 1, 1),
    ("r18 l2 1x1/2 down", 64, 128, 56, 1, 2, 0, 1),
    ("r18 l2 3x3 128", 128, 128, 28, 3, 1, 1, 1),
    ("r18 l3 3x3 256", 256, 256, 14, 3, 1, 1, 1),
    ("r18 l4 3x3 512", 512, 512, 7, 3, 1, 1, 1),
    ("mv2 stem 3x3/2", 3, 32, 224, 3, 2, 1, 1),
    ("mv2 dw 3x3 32 @112", 32, 32, 112, 3, 1, 1, 32),
    ("mv2 dw 3x3/2 96 @112", 96, 96, 112, 3, 2, 1, 96),
    ("mv2 dw 3x3 144 @56", 144, 144, 56, 3, 1, 1, 144),
    ("mv2 dw 3x3 576 @14", 576, 576, 14, 3, 1, 1, 576),
    # MobileNetV2's depthwise layers as the model runs them (features.1, .2, .3, .4, .8, .16).
    ("mv2 dw 32 @112 relu zp0 b8", 32, 32, 112, 3, 1, 1, 32, {"batch": 8, "relu": True}),
    ("mv2 dw/2 96 @112 relu zp0 b8", 96, 96, 112, 3, 2, 1, 96, {"batch": 8, "relu": True}),
    ("mv2 dw 144 @56 relu zp0 b8", 144, 144, 56, 3, 1, 1, 144, {"batch": 8, "relu": True}),
    ("mv2 dw/2 144 @56 relu zp0 b8", 144, 144, 56, 3, 2, 1, 144, {"batch": 8, "relu": True}),
    ("mv2 dw 384 @14 relu zp0 b8", 384, 384, 14, 3, 1, 1, 384, {"batch": 8, "relu": True}),
    ("mv2 dw 960 @7 relu zp0 b8", 960, 960, 7, 3, 1, 1, 960, {"batch": 8, "relu": True}),
    ("mv2 dw 960 @7 relu zp0 b1", 960, 960, 7, 3, 1, 1, 960, {"batch": 1, "relu": True}),
    # ResNet-18's late 3x3 layers as the model runs them (after a ReLU: zero point 0, where the
    # kernel rows in the padding are skipped).
    ("r18 l3 3x3 256 relu zp0 b1", 256, 256, 14, 3, 1, 1, 1, {"batch": 1, "relu": True}),
    ("r18 l4 3x3 512 relu zp0 b1", 512, 512, 7, 3, 1, 1, 1, {"batch": 1, "relu": True}),
    ("r18 l3 3x3 256 relu zp0 b8", 256, 256, 14, 3, 1, 1, 1, {"batch": 8, "relu": True}),
    ("r18 l4 3x3 512 relu zp0 b8", 512, 512, 7, 3, 1, 1, 1, {"batch": 8, "relu": True}),
    ("mv2 1x1 expand 24-144 @56", 24, 144, 56, 1, 1, 0, 1),
    ("mv2 1x1 project 144-24 @56", 144, 24, 56, 1, 1, 0, 1),
    ("mv2 1x1 320-1280 @7", 320, 1280, 7, 1, 1, 0, 1),
]


def bench_shape(label, cin, cout, hw, k, s, p, g, opts, batch, rounds, target_ms, reduce_range=False):
    relu = opts.get("relu", False)
    batch = opts.get("batch", batch)
    torch.manual_seed(0)
    x = torch.randn(batch, cin, hw, hw)
    w = torch.randn(cout, cin // g, k, k) * 0.1
    bias = torch.randn(cout) * 0.1
    w_scale = w.abs().amax(dim=(1, 2, 3)) / 127
    x_scale, x_zp = 0.03, 128
    out_scale, out_zp = 0.05, 128
    if relu:  # after a ReLU, into a fused ConvReLU: zero points 0
        x = x.clamp(min=0)
        x_scale, x_zp = 0.015, 0
        out_scale, out_zp = 0.02, 0
    qmax = 255
    if reduce_range:  # 7-bit codes: twice the step over the same range
        qmax, x_scale, x_zp = 127, x_scale * 2, x_zp // 2
    # torchquant
    qw = torch.round(w / w_scale.reshape(-1, 1, 1, 1)).clamp(-128, 127).to(torch.int8)
    wp, cs = ops.pack_conv_weight(qw, g)
    qx = torch.clamp(torch.round(x / x_scale) + x_zp, 0, qmax).to(torch.uint8).contiguous(
        memory_format=torch.channels_last)
    xs, xz = torch.tensor([x_scale]), torch.tensor([x_zp], dtype=torch.int32)
    os_, oz = torch.tensor([out_scale]), torch.tensor([out_zp], dtype=torch.int32)
    geo = ([k, k], [s, s], [p, p], [1, 1])

    def tq():
        return ops.conv_int8(qx, xs, xz, wp, cs, w_scale, bias, *geo, g, os_, oz, relu, torch.uint8)

    # torch.ao x86
    torch.backends.quantized.engine = "x86"
    ao_cls = torch.ao.nn.intrinsic.quantized.ConvReLU2d if relu else torch.ao.nn.quantized.Conv2d
    aoq = ao_cls(cin, cout, k, s, p, groups=g)
    aoq.set_weight_bias(torch.quantize_per_channel(w, w_scale.double(), torch.zeros(cout, dtype=torch.long), 0,
                                                   torch.qint8), bias)
    aoq.scale, aoq.zero_point = out_scale, out_zp
    ax = torch.quantize_per_tensor(x, x_scale, x_zp, torch.quint8) if qmax == 255 else \
        torch._make_per_tensor_quantized_tensor(qx.contiguous(), x_scale, x_zp)  # (the same 7-bit codes)
    ax = ax.contiguous(memory_format=torch.channels_last)

    def ao():
        return aoq(ax)

    xf = x.contiguous(memory_format=torch.channels_last)
    wf = w.contiguous(memory_format=torch.channels_last)

    def fp32():
        y = F.conv2d(xf, wf, bias, s, p, 1, g)
        return F.relu(y) if relu else y

    t = interleaved_us({"tq": tq, "ao": ao, "fp32": fp32}, rounds, target_ms)
    return t


def main():
    run_layers("int8 conv per layer, batch {batch}, uint8 in / uint8 out", SHAPES,
               lambda shape, *run, **kw: bench_shape(*shape[:8], shape[8] if len(shape) > 8 else {}, *run, **kw), 28,
               flags=[("reduce-range", "7-bit activations for both libraries (torch.ao's x86 activation range)")])


if __name__ == "__main__":
    main()
