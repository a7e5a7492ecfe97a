"""CPU int8 transposed convolution: torchquant against torch.ao's int8 ConvTranspose2d (fbgemm
engine) and fp32 F.conv_transpose2d, per layer shape of a DCGAN generator (4x4, stride 2) and a
UNet decoder (2x2, stride 2 upsampling), measured in one process.

    python benchmarks/bench_conv_transpose.py [--threads 2] [--rounds 5] [--target-ms 40] [--batch 1]

Each implementation is timed as the 10th percentile of single-call times, interleaved in
rounds (bench_linear.interleaved_us). All take and give their natural activation format:
  torchquant    ops.conv_transpose_int8, uint8 channels-last in, uint8 channels-last out
                (requantized), per-output-channel weights
  torch.ao      torch.ao.nn.quantized.ConvTranspose2d on a channels-last quint8 tensor (fbgemm
                engine: the x86 and onednn engines give wrong ConvTranspose results in this
                torch), quint8 out, per-tensor weights (it has no per-channel ConvTranspose)
  fp32          F.conv_transpose2d, float32 (oneDNN)
Ratios are anchor_time / torchquant_time (> 1: torchquant is faster).
"""
import os
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_linear import interleaved_us  # noqa: E402
from common import run_layers  # noqa: E402

import torchquant  # noqa: E402,F401

warnings.filterwarnings("ignore")
ops = torch.ops.torchquant

# (label, Cin, Cout, H (= W) of the input, kernel, stride, padding)
SHAPES = [
    ("dcgan 512-256 4x4/2 @4", 512, 256, 4, 4, 2, 1),
    ("dcgan 256-128 4x4/2 @8", 256, 128, 8, 4, 2, 1),
    ("dcgan 128-64 4x4/2 @16", 128, 64, 16, 4, 2, 1),
    ("dcgan 64-3 4x4/2 @32", 64, 3, 32, 4, 2, 1),
    ("unet 1024-512 2x2/2 @16", 1024, 512, 16, 2, 2, 0),
    ("unet 512-256 2x2/2 @32", 512, 256, 32, 2, 2, 0),
    ("unet 256-128 2x2/2 @64", 256, 128, 64, 2, 2, 0),
    ("unet 128-64 2x2/2 @128", 128, 64, 128, 2, 2, 0),
]


def bench_shape(label, cin, cout, hw, k, s, p, batch, rounds, target_ms):
    torch.manual_seed(0)
    x = torch.randn(batch, cin, hw, hw)
    w = torch.randn(cin, cout, k, k) * 0.1
    bias = torch.randn(cout) * 0.1
    x_scale, x_zp = 0.03, 128
    out_scale, out_zp = 0.05, 128
    # torchquant: per output channel (axis 1 of the [Cin, Cout, k, k] weight)
    w_scale = w.abs().amax(dim=(0, 2, 3)) / 127
    qw = torch.round(w / w_scale.reshape(1, -1, 1, 1)).clamp(-128, 127).to(torch.int8)
    wp, cs = ops.pack_conv_transpose_weight(qw, 1)
    qx = torch.clamp(torch.round(x / x_scale) + x_zp, 0, 255).to(torch.uint8).contiguous(
        memory_format=torch.channels_last)
    xs, xz = torch.tensor([x_scale]), torch.tensor([x_zp], dtype=torch.int32)
    os_, oz = torch.tensor([out_scale]), torch.tensor([out_zp], dtype=torch.int32)
    geo = ([k, k], [s, s], [p, p], [0, 0], [1, 1])

    def tq():
        return ops.conv_transpose_int8(qx, xs, xz, wp, cs, w_scale, bias, *geo, 1, os_, oz, False, torch.uint8)

    torch.backends.quantized.engine = "fbgemm"
    aoq = torch.ao.nn.quantized.ConvTranspose2d(cin, cout, k, s, p)
    aoq.set_weight_bias(torch.quantize_per_tensor(w, float(w.abs().max()) / 127, 0, torch.qint8), bias)
    aoq.scale, aoq.zero_point = out_scale, out_zp
    # channels-last, as torch.ao's quantized convolutions compute: an NCHW input would add a
    # layout conversion to each call
    ax = torch.quantize_per_tensor(x, x_scale, x_zp, torch.quint8).contiguous(memory_format=torch.channels_last)

    def ao():
        return aoq(ax)

    def fp32():
        return F.conv_transpose2d(x, w, bias, s, p)

    return interleaved_us({"tq": tq, "ao": ao, "fp32": fp32}, rounds, target_ms)


def main():
    run_layers("int8 ConvTranspose2d per layer, batch {batch}, uint8 in / uint8 out", SHAPES,
               lambda shape, *run: bench_shape(*shape, *run), 26)


if __name__ == "__main__":
    main()
