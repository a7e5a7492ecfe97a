"""Quantized convolution modules and their eager flow: fusion (BN folding as torch.ao's),
prepare / convert / prepare_qat for Conv1d/2d/3d, ConvReLU, ConvBn, ConvBnReLU (torchquant's
and torch.ao's fused modules), against torch.ao's converted modules (same weights, same
calibration data: within 1 LSB), state dicts, errors."""
import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchquant as tq
from torchquant import QTensor, reference
from torchquant.nn import intrinsic as tqi
from torchquant.nn import qat as tqat
from torchquant.nn import quantized as tqq

ao = pytest.importorskip("torch.ao.quantization")
import torch.ao.nn.intrinsic as ao_nni  # noqa: E402
import torch.ao.nn.intrinsic.qat as ao_nniqat  # noqa: E402


def _qconfigs():
    """The same recipe for both: per-tensor uint8 activations with reduce_range (fbgemm's kernels
    saturate without it), symmetric per-channel int8 weights."""
    ours = tq.QConfig(activation=tq.MinMaxObserver.with_args(reduce_range=True),
                      weight=tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                                    qscheme=torch.per_channel_symmetric))
    theirs = ao.QConfig(activation=ao.MinMaxObserver.with_args(reduce_range=True),
                        weight=ao.PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                                      qscheme=torch.per_channel_symmetric))
    return ours, theirs


CONVS = [
    lambda: nn.Conv1d(6, 10, 3, stride=2, padding=1),
    lambda: nn.Conv2d(3, 16, 3, padding=1),
    lambda: nn.Conv2d(16, 24, 3, stride=2, padding=1, groups=4),
    lambda: nn.Conv2d(24, 24, 3, padding=2, dilation=2, groups=24),
    lambda: nn.Conv2d(24, 40, 1, bias=False),
    lambda: nn.Conv3d(4, 8, 3, padding=1),
]
INPUTS = {1: (2, 6, 15), 2: None, 3: (2, 4, 5, 6, 7)}


def _input(conv, seed):
    g = torch.Generator().manual_seed(seed)
    nsp = conv.weight.dim() - 2
    shape = INPUTS[nsp] or (2, conv.in_channels, 13, 11)
    return torch.randn(shape, generator=g)


def _wrap(conv, relu, stub_mod):
    layers = [stub_mod.QuantStub(), conv] + ([nn.ReLU()] if relu else []) + [stub_mod.DeQuantStub()]
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("make", CONVS, ids=["1d", "2d", "2d-grouped-strided", "2d-depthwise-dilated", "1x1", "3d"])
@pytest.mark.parametrize("relu", [False, True])
def test_matches_torch_ao_within_1_lsb(make, relu):
    torch.manual_seed(0)
    conv = make()
    ours_qc, theirs_qc = _qconfigs()
    calib = [_input(conv, s) for s in range(4)]
    x = _input(conv, 99)

    ours = _wrap(copy.deepcopy(conv), relu, tq)
    if relu:
        ours = tq.fuse_modules(ours, [["1", "2"]])
    ours.qconfig = ours_qc
    ours = tq.prepare(ours)
    for c in calib:
        ours(c)
    ours = tq.convert(ours)

    theirs = _wrap(copy.deepcopy(conv), relu, ao)
    if relu:
        theirs = ao.fuse_modules(theirs, [["1", "2"]])
    theirs.qconfig = theirs_qc
    prev = torch.backends.quantized.engine
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    try:
        theirs = ao.prepare(theirs)
        for c in calib:
            theirs(c)
        theirs = ao.convert(theirs)
        want = theirs(x)
    finally:
        torch.backends.quantized.engine = prev

    qmod = ours[1]
    assert type(qmod).__name__ == ("ConvReLU" if relu else "Conv") + f"{conv.weight.dim() - 2}d"
    assert float(qmod.scale) == pytest.approx(float(theirs[1].scale), rel=1e-6)
    assert int(qmod.zero_point) == int(theirs[1].zero_point)
    got = ours(x)
    lsb = float(qmod.scale)
    assert (got - want).abs().max().item() <= lsb * 1.001
    # And bit-identical with the reference on the int8 weights the module holds.
    q = ours[0](x)
    ref = reference.conv_int8(q.data, q.scale, q.zero_point, qmod.qweight, qmod.weight_scale, qmod.bias,
                              list(qmod.stride), list(qmod.padding), list(qmod.dilation), qmod.groups, qmod.scale,
                              qmod.zero_point, relu, torch.uint8)
    assert torch.equal(qmod(q).data, ref)


def _conv_bn(d=2, relu=False):
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[d](4, 6, 3, padding=1)
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[d](6)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    mods = [conv, bn] + ([nn.ReLU()] if relu else [])
    return nn.Sequential(*mods).eval()


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("relu", [False, True])
def test_bn_folding_equals_torch_ao(d, relu):
    m = _conv_bn(d, relu)
    names = ["0", "1", "2"] if relu else ["0", "1"]
    ours = tq.fuse_modules(m, [names])
    theirs = ao.fuse_modules(m, [names])
    oc = ours[0][0] if relu else ours[0]
    tc = theirs[0][0] if relu else theirs[0]
    assert type(ours[0]).__name__ == (f"ConvReLU{d}d" if relu else f"Conv{d}d")
    assert torch.equal(oc.weight, tc.weight) and torch.equal(oc.bias, tc.bias)
    assert isinstance(ours[1], nn.Identity)


def test_linear_bn_folding_equals_torch_ao():
    m = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7)).eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
    ours, theirs = tq.fuse_modules(m, [["0", "1"]]), ao.fuse_modules(m, [["0", "1"]])
    assert torch.equal(ours[0].weight, theirs[0].weight) and torch.equal(ours[0].bias, theirs[0].bias)


def test_fusion_needs_eval_for_bn():
    with pytest.raises(ValueError, match="eval mode"):
        tq.fuse_modules(_conv_bn().train(), [["0", "1"]])
    fused = tq.fuse_modules_qat(_conv_bn(relu=True).train(), [["0", "1", "2"]])
    assert type(fused[0]) is tqi.ConvBnReLU2d


class _Net(nn.Module):
    def __init__(self, stub):
        super().__init__()
        self.quant = stub.QuantStub()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 4, 1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 8 * 8, 10)
        self.dequant = stub.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.dequant(self.fc(self.flatten(self.conv3(x))))


FUSE = [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"]]


def _sqnr(ref, got):
    return (10 * torch.log10(ref.pow(2).mean() / (ref - got).pow(2).mean())).item()


def test_issue_example_runs():
    """The model of the report: Conv2d, ReLU, Flatten, Linear between stubs."""
    model = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 10),
                          tq.DeQuantStub()).eval()
    model.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepared = tq.prepare(model)
    for _ in range(4):
        prepared(torch.randn(8, 3, 8, 8))
    q = tq.convert(prepared)
    assert type(q) is tqq.FusedReLUSequential and type(q[1]) is tqq.Conv2d  # the ReLU in the conv's epilogue
    x = torch.randn(4, 3, 8, 8)
    assert _sqnr(model(x), q(x)) > 25


def test_static_flow_with_torch_ao_fused_modules():
    """torchvision's fuse_model() calls torch.ao's fuse_modules: prepare takes its fused modules."""
    torch.manual_seed(0)
    net = _Net(tq).eval()
    fused = ao.fuse_modules(net, FUSE)
    assert type(fused.conv1) is ao_nni.ConvReLU2d
    fused.qconfig = tq.get_default_qconfig("x86")
    prepared = tq.prepare(fused)
    for _ in range(4):
        prepared(torch.randn(4, 3, 8, 8))
    q = tq.convert(prepared)
    assert type(q.conv1) is tqq.ConvReLU2d and type(q.conv2) is tqq.ConvReLU2d and type(q.conv3) is tqq.Conv2d
    x = torch.randn(4, 3, 8, 8)
    assert _sqnr(net(x), q(x)) > 20
    # Same with torchquant's own fusion: the same int8 model, bit for bit.
    fused2 = tq.fuse_modules(net, FUSE)
    fused2.qconfig = tq.get_default_qconfig("x86")
    prepared2 = tq.prepare(fused2)
    torch.manual_seed(0)
    for _ in range(4):
        prepared2(torch.randn(4, 3, 8, 8))
    torch.manual_seed(0)
    prepared3 = tq.prepare(fused)
    for _ in range(4):
        prepared3(torch.randn(4, 3, 8, 8))
    assert torch.equal(tq.convert(prepared2)(x), tq.convert(prepared3)(x))


def test_activations_stay_channels_last():
    net = _Net(tq).eval()
    fused = tq.fuse_modules(net, FUSE)
    fused.qconfig = tq.get_default_qconfig("x86")
    prepared = tq.prepare(fused)
    prepared(torch.randn(2, 3, 8, 8))
    q = tq.convert(prepared)
    a = q.quant(torch.randn(2, 3, 8, 8))
    b = q.conv1(a)
    assert b.data.is_contiguous(memory_format=torch.channels_last)
    assert q.conv2(b).data.is_contiguous(memory_format=torch.channels_last)


def test_qat_convbn_matches_torch_ao_and_converts():
    torch.manual_seed(0)
    net = _Net(tq).train()
    ours = tq.fuse_modules_qat(net, FUSE)
    ours.qconfig = tq.QConfig(
        activation=tq.FakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, reduce_range=False),
        weight=tq.FakeQuantize.with_args(observer=tq.MovingAveragePerChannelMinMaxObserver, dtype=torch.qint8,
                                         qscheme=torch.per_channel_symmetric, quant_min=-128, quant_max=127, ch_axis=0))
    ours = tq.prepare_qat(ours)
    assert type(ours.conv1) is tqat.ConvBnReLU2d and type(ours.conv3) is tqat.Conv2d

    twin = _Net(ao).train()  # torch.ao's own stubs, which its prepare_qat observes
    twin.load_state_dict(net.state_dict())
    theirs = ao.fuse_modules_qat(twin, FUSE)
    theirs.qconfig = ao.QConfig(
        activation=ao.FakeQuantize.with_args(observer=ao.MovingAverageMinMaxObserver, reduce_range=False),
        weight=ao.FakeQuantize.with_args(observer=ao.MovingAveragePerChannelMinMaxObserver, dtype=torch.qint8,
                                         qscheme=torch.per_channel_symmetric, quant_min=-128, quant_max=127, ch_axis=0))
    theirs = ao.prepare_qat(theirs)
    assert type(theirs.conv1) is ao_nniqat.ConvBnReLU2d

    opt_o = torch.optim.SGD(ours.parameters(), lr=0.01)
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.01)
    for step in range(4):
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        yo, yt = ours(x), theirs(x)
        torch.testing.assert_close(yo, yt, rtol=1e-4, atol=1e-4)
        for y, opt in ((yo, opt_o), (yt, opt_t)):
            opt.zero_grad()
            y.square().mean().backward()
            opt.step()
    torch.testing.assert_close(ours.conv1.bn.running_mean, theirs.conv1.bn.running_mean)

    # freeze_bn_stats: running statistics stay put in training mode; update_bn_stats resumes.
    ours.apply(tqat.freeze_bn_stats)
    before = ours.conv1.bn.running_mean.clone()
    ours(torch.randn(4, 3, 8, 8))
    assert torch.equal(before, ours.conv1.bn.running_mean) and not ours.conv1.bn.training
    ours.train()
    assert not ours.conv1.bn.training  # a frozen BN stays frozen under .train()
    ours.apply(tqat.update_bn_stats)
    ours(torch.randn(4, 3, 8, 8))
    assert not torch.equal(before, ours.conv1.bn.running_mean)
    ours.apply(tqat.freeze_bn_stats)

    ours.eval()
    x = torch.randn(4, 3, 8, 8)
    y_qat = ours(x)
    q = tq.convert(ours)
    assert type(q.conv1) is tqq.ConvReLU2d and type(q.conv3) is tqq.Conv2d
    assert _sqnr(y_qat, q(x)) > 25


def test_state_dict_weights_only_and_repr(tmp_path):
    net = _Net(tq).eval()
    fused = tq.fuse_modules(net, FUSE)
    fused.qconfig = tq.get_default_qconfig("x86")
    prepared = tq.prepare(fused)
    prepared(torch.randn(2, 3, 8, 8))
    q = tq.convert(prepared)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert set(k for k in sd if k.startswith("conv1.")) == {
        "conv1.qweight", "conv1.weight_scale", "conv1.weight_zero_point", "conv1.bias", "conv1.scale",
        "conv1.zero_point", "conv1.float_input_scale", "conv1.float_input_zero_point"}
    p2 = tq.prepare(fused)
    p2(torch.randn(2, 3, 8, 8) * 3)  # other qparams, replaced by the load
    q2 = tq.convert(p2)
    q2.load_state_dict(sd)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(q(x), q2(x))
    r = repr(q.conv2)
    assert r.startswith("ConvReLU2d(8, 8, kernel_size=(3, 3), stride=(1, 1), scale=") and "groups=8" in r
    assert "padding=(1, 1)" in r


def test_unbatched_input_and_bad_input():
    net = nn.Sequential(tq.QuantStub(), nn.Conv1d(4, 6, 3), tq.DeQuantStub()).eval()
    net.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(net)
    p(torch.randn(2, 4, 10))
    q = tq.convert(p)
    x = torch.randn(4, 10)
    assert torch.equal(q(x), q(x.unsqueeze(0)).squeeze(0))
    with pytest.raises(RuntimeError, match=r"Expected 2D \(unbatched\) or 3D \(batched\) input to conv1d"):
        q(torch.randn(1, 4, 10, 3))
    # A float tensor: quantized with the input range the conv saw at calibration (with one
    # warning); a conv that saw none (built directly) names the QuantStub it needs.
    xf = torch.randn(1, 4, 10)
    with pytest.warns(UserWarning, match="Conv1d '1' received a float tensor"):
        y = q[1](xf)
    ref = q[1](q[0](xf)).dequantize()
    assert (y.dequantize() - ref).abs().max() <= 0.1 * ref.abs().max() + 0.1
    with pytest.raises(TypeError, match="add a torchquant.QuantStub"):
        tqq.Conv1d(4, 6, 3)(xf)
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        tqq.Conv2d(3, 8, 3, groups=2)
    with pytest.raises(ValueError, match=r"padding_mode must be one of \('zeros', 'reflect', 'replicate', "
                                         r"'circular'\), but got padding_mode='mirror'"):
        tqq.Conv2d(4, 8, 3, padding_mode="mirror")


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("d,shape", [(1, (2, 4, 9)), (2, (2, 4, 7, 6)), (3, (1, 4, 5, 6, 4)), (2, (4, 7, 6))])
def test_padding_modes_pad_the_codes_then_convolve(mode, d, shape):
    # torch.ao converts reflect-padded Conv1d/2d (not Conv3d); torchquant pads the int8 codes with
    # the mode (exact copies) and runs the kernel unpadded: bit-identical to padding by hand.
    torch.manual_seed(0)
    conv = getattr(nn, f"Conv{d}d")(4, 6, 3, padding=(1,) * (d - 1) + (2,), padding_mode=mode)
    x = torch.randn(shape)
    q = _converted(conv.eval(), x)
    assert q[1].padding_mode == mode
    plain = getattr(tqq, f"Conv{d}d")(4, 6, 3, padding=0)
    plain.load_state_dict(q[1].state_dict())
    qx = q[0](x)
    pad = [p for k in reversed(conv.padding) for p in (k, k)]
    want = plain(F.pad(qx if qx.dim() == d + 2 else qx.unsqueeze(0), pad, mode))
    got = q[1](qx)
    assert torch.equal(got.data, (want.data if qx.dim() == d + 2 else want.data.squeeze(0)))
    ref = conv(x)
    assert _sqnr(ref, q(x)) > 25


@pytest.mark.parametrize("d,kernel,dilation,mode,shape", [
    (1, 4, 1, "zeros", (2, 4, 9)),
    (1, 2, 3, "zeros", (4, 9)),             # unbatched
    (2, 2, 1, "zeros", (2, 4, 7, 6)),
    (2, (2, 3), (1, 2), "zeros", (2, 4, 7, 6)),
    (2, 3, 1, "zeros", (2, 4, 7, 6)),        # symmetric: the kernel pads
    (2, 4, 1, "reflect", (2, 4, 7, 6)),
    (3, (2, 3, 4), 1, "zeros", (1, 4, 5, 6, 4)),
])
def test_padding_same_with_even_kernels(d, kernel, dilation, mode, shape):
    # padding='same' that needs one more on the right (torch's rule) pads the codes with the zero
    # point (the real 0), or with the mode, then runs the kernel unpadded: bit-identical to
    # padding by hand, and the output has the input's size.
    torch.manual_seed(1)
    conv = getattr(nn, f"Conv{d}d")(4, 6, kernel, padding="same", dilation=dilation, padding_mode=mode)
    x = torch.randn(shape)
    q = _converted(conv.eval(), x)
    assert q[1](q[0](x)).shape == conv(x).shape
    plain = getattr(tqq, f"Conv{d}d")(4, 6, kernel, padding=0, dilation=dilation)
    plain.load_state_dict(q[1].state_dict())
    qx = q[0](x)
    batched = qx if qx.dim() == d + 2 else qx.unsqueeze(0)
    pad = list(conv._reversed_padding_repeated_twice)
    if mode == "zeros":
        zp = float(batched.zero_point)
        codes = (F.pad(batched.data.float() - zp, pad) + zp).to(batched.data.dtype)
        padded = tq.QTensor(codes, batched.scale, batched.zero_point, None, batched.qmin, batched.qmax)
    else:
        padded = F.pad(batched, pad, mode)
    want = plain(padded).data
    got = q[1](qx).data
    assert torch.equal(got, want if qx.dim() == d + 2 else want.squeeze(0))
    assert _sqnr(conv(x), q(x)) > 25
    if conv._reversed_padding_repeated_twice[0::2] != conv._reversed_padding_repeated_twice[1::2]:
        assert q[1].padding == "same" and "padding=same" in repr(q[1])
    torch.testing.assert_close(torch.export.export(q, (x,)).module()(x), q(x), rtol=0, atol=0)


def test_module_to_and_conv3d_flow():
    net = nn.Sequential(tq.QuantStub(), nn.Conv3d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv3d(5, 5, 1),
                        tq.DeQuantStub()).eval()
    net.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(net)
    for _ in range(3):
        p(torch.randn(2, 3, 4, 5, 6))
    q = tq.convert(p)
    x = torch.randn(2, 3, 4, 5, 6)
    y = q(x)
    assert _sqnr(net(x), y) > 25
    assert torch.equal(copy.deepcopy(q).to("cpu")(x), y)


def test_converted_conv_model_exports():
    """torch.export traces the int8 convolutions through their fake kernels: same output."""
    net = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, groups=8, padding=1), tq.DeQuantStub()).eval()
    net.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(net)
    p(torch.randn(2, 3, 8, 8))
    q = tq.convert(p)
    x = torch.randn(2, 3, 8, 8)
    ep = torch.export.export(q, (x,))
    assert torch.equal(ep.module()(x), q(x))


@pytest.mark.parametrize("make", [lambda: tqq.Conv2d(4, 6, 3), lambda: tqq.ConvReLU1d(4, 6, 3, groups=2),
                                  lambda: tqq.ConvTranspose2d(4, 6, 3)], ids=["conv2d", "convrelu1d", "convt2d"])
@pytest.mark.parametrize("key,value,match", [
    ("weight_zero_point", lambda sd: torch.tensor([0, 3, 0, 0, 0, 0], dtype=torch.int32),
     r"weight_zero_point: the quantized \w+'s int8 weights are symmetric \(zero point 0\), got non-zero "
     r"values at channel\(s\) 1"),
    ("qweight", lambda sd: torch.full(sd["qweight"].shape, 0.7),
     r"qweight: the quantized \w+'s weight must be torch.int8, got dtype torch.float32"),
])
def test_quantized_conv_load_state_dict_refuses_what_it_would_ignore_or_cast(make, key, value, match):
    # As the quantized Linear's: a float qweight was cast to int8 (0.7 -> 0) and a non-zero
    # weight zero point kept though the kernel never reads it.
    m = make()
    sd = m.state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    sd[key] = value(sd)
    with pytest.raises(RuntimeError, match=match):
        m.load_state_dict(sd)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    m.load_state_dict(before)


def _converted(float_conv, x):
    m = nn.Sequential(tq.QuantStub(), float_conv, tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    tq.calibrate(p, [x], progress=False)
    return tq.convert(p)


@pytest.mark.parametrize("conv,good,bad", [
    (lambda: nn.Conv2d(3, 8, 3), (1, 3, 9, 9), (1, 4, 9, 9)),  # 3 and 4 channels pack alike at 3x3
    (lambda: nn.Conv2d(3, 8, 3), (3, 9, 9), (4, 9, 9)),        # unbatched
    (lambda: nn.Conv3d(3, 8, 3), (1, 3, 5, 5, 5), (1, 4, 5, 5, 5)),
    (lambda: nn.Conv1d(6, 4, 1), (2, 6, 7), (2, 5, 7)),
    (lambda: nn.Conv2d(4, 8, 3, groups=2), (1, 4, 9, 9), (1, 6, 9, 9)),
    (lambda: nn.ConvTranspose2d(3, 8, 3), (1, 3, 5, 5), (1, 4, 5, 5)),
])
def test_wrong_input_channels_give_torchs_error(conv, good, bad):
    # A converted 3x3 conv of 3 channels ran on 4 and returned wrong values without an error.
    torch.manual_seed(0)
    f = conv().eval()
    q = _converted(f, torch.randn(good))
    x = torch.randn(bad)
    with pytest.raises(RuntimeError) as ef:
        f(x)
    with pytest.raises(RuntimeError) as eq:
        q(x)
    assert str(eq.value) == str(ef.value)


@pytest.mark.parametrize("conv,shape,fmt", [
    (lambda: nn.ConvTranspose2d(4, 8, 3), (1, 4, 5, 5), torch.channels_last),  # a 5-D packed weight
    (lambda: nn.Conv3d(4, 8, 3), (1, 4, 5, 5, 5), torch.channels_last_3d),      # a 4-D packed weight
    (lambda: nn.Conv2d(4, 8, 3), (1, 4, 6, 6), torch.channels_last),
])
def test_to_memory_format_keeps_the_outputs(conv, shape, fmt):
    torch.manual_seed(0)
    x = torch.randn(shape)
    q = _converted(conv().eval(), x)
    want = q(x)
    moved = copy.deepcopy(q).to(memory_format=fmt)
    assert torch.equal(moved(x.contiguous(memory_format=fmt)), want)


def test_torch_ao_observer_switches_act_on_torchquant_fake_quants():
    # A torch.ao QAT script after the import swap calls torch.ao's functions on torchquant's modules.
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), tq.DeQuantStub()).train()
    m = tq.fuse_modules_qat(m, [["1", "2"]])
    m.qconfig = tq.get_default_qat_qconfig()
    p = tq.prepare_qat(m)
    fqs = [x for x in p.modules() if isinstance(x, tq.FakeQuantizeBase)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p.apply(torch.ao.quantization.disable_observer)
        assert fqs and all(int(f.observer_enabled[0]) == 0 for f in fqs)
        p.apply(torch.ao.quantization.disable_fake_quant)
        assert all(int(f.fake_quant_enabled[0]) == 0 for f in fqs)
    p.apply(tq.freeze_bn_stats)
    assert p[1].freeze_bn and not p[1].bn.training
    p.apply(tq.update_bn_stats)
    assert not p[1].freeze_bn


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("with_bn", [True, False])
def test_conv_relu6_fuses_into_the_kernels_relu(d, with_bn):
    # [Conv, (BatchNorm,) ReLU6] fuses into ConvReLU: observed after the ReLU6, the output qparams
    # cannot represent more than 6, so the kernel's ReLU with them is exactly the ReLU6 on the
    # codes of the same conv (bit for bit), and finer than the unfused conv's pre-activation range.
    torch.manual_seed(d)
    conv = getattr(nn, f"Conv{d}d")(4, 8, 3, padding=1)
    mods = [conv] + ([getattr(nn, f"BatchNorm{d}d")(8)] if with_bn else []) + [nn.ReLU6()]
    m = nn.Sequential(tq.QuantStub(), *mods, tq.DeQuantStub()).eval()
    with torch.no_grad():
        conv.weight.mul_(4)
    if with_bn:
        with torch.no_grad():
            m[2].running_var.uniform_(0.5, 2)
            m[2].weight.uniform_(1, 3)
            m[2].bias.normal_(2, 2)
    x = torch.randn(2, 4, *([6] * d)) * 3
    groups = tq.find_fusable_modules(m)
    assert groups == [[str(i) for i in range(1, len(mods) + 1)]] and tq.find_fusable_modules(m, qat=True) == groups
    fused = tq.fuse_modules(m, groups)
    assert isinstance(fused[1], getattr(tqi, f"ConvReLU{d}d")) and isinstance(fused[1][1], nn.ReLU6)
    torch.testing.assert_close(fused(x), m(x))
    fused.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(fused)
    p(x)
    q = tq.convert(p)
    assert type(q[1]) is getattr(tqq, f"ConvReLU{d}d")
    qx = q[0](x)
    plain = getattr(tqq, f"Conv{d}d")(4, 8, 3, padding=1)
    plain.load_state_dict(q[1].state_dict())
    want = F.relu6(plain(qx))
    got = q[1](qx)
    assert torch.equal(got.data, want.data) and float(got.dequantize().max()) <= 6.0
    assert float((m(x) >= 6).float().mean()) > 0  # some outputs saturate at 6
    unfused = copy.deepcopy(m)
    unfused.qconfig = tq.get_default_qconfig("x86")
    pu = tq.prepare(unfused)
    pu(x)
    assert _sqnr(m(x), q(x)) > _sqnr(m(x), tq.convert(pu)(x))


def test_conv_relu6_clamps_at_6_whatever_the_output_qparams():
    # reduce_range (7-bit) output qparams represent up to 2x the observed max: the kernel's ReLU
    # alone would not clamp at 6, so the module clamps the codes at quantize(6) after it, exactly as
    # a quantized ReLU6 on the codes; the same holds for qparams loaded later (a larger scale).
    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 6, 3), nn.ReLU6(), tq.DeQuantStub()).eval()
    x = torch.randn(2, 3, 7, 7) * 4
    for reduce_range in (True, False):
        f = tq.fuse_modules(copy.deepcopy(m), [["1", "2"]])
        f.qconfig = tq.QConfig(activation=tq.MinMaxObserver.with_args(reduce_range=reduce_range),
                               weight=tq.default_per_channel_weight_observer)
        p = tq.prepare(f)
        p(x)
        q = tq.convert(p)
        assert type(q[1]) is tqq.ConvReLU2d and q[1]._relu6 and "relu6=True" in repr(q[1])
        qx = q[0](x)
        relu_only = copy.deepcopy(q[1])
        relu_only._relu6 = False
        y = q[1](qx)
        assert torch.equal(y.data, F.relu6(relu_only(qx)).data)
        assert float(y.dequantize().max()) <= 6.0 + float(q[1].scale) / 2
        assert torch.equal(q[1](qx).data, y.data)  # the cached bound, reused
        # qparams loaded afterwards that reach past 6: still clamped at 6
        sd = q[1].state_dict()
        sd["scale"] = sd["scale"] * 3
        q[1].load_state_dict(sd)
        relu_only.load_state_dict(sd)
        y3 = q[1](qx)
        half_step = float(sd["scale"]) / 2  # quantize(6) is the nearest code to 6
        assert float(y3.dequantize().max()) <= 6.0 + half_step and float(relu_only(qx).dequantize().max()) > 6.5
        assert torch.equal(y3.data, F.relu6(relu_only(qx)).data)
        # the bound is a Python int: the module exports and compiles without graph breaks
        class Run(nn.Module):
            def __init__(self, conv):
                super().__init__()
                self.conv = conv

            def forward(self, data):
                return self.conv(QTensor._make(data, qx.scale, qx.zero_point, None, qx.qmin, qx.qmax)).data

        run = Run(q[1])
        assert torch.equal(torch.export.export(run, (qx.data,)).module()(qx.data), y3.data)
        assert torch.equal(torch.compile(run, fullgraph=True)(qx.data), y3.data)


def test_qat_conv_bn_relu6():
    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(), tq.DeQuantStub()).train()
    with torch.no_grad():
        m[2].weight.fill_(4.0)
        m[2].bias.fill_(3.0)
    tq.fuse_modules_qat(m, tq.find_fusable_modules(m, qat=True), inplace=True)
    assert isinstance(m[1], tqi.ConvBnReLU2d)
    m.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(m)
    assert isinstance(p[1], tqat.ConvBnReLU2d) and p[1]._relu6
    x = torch.randn(4, 3, 8, 8) * 3
    for _ in range(3):
        y = p(x)
        y.sum().backward()
    assert float(y.max()) <= 6.0 + 1e-6 and float((y >= 6 - 0.05).float().mean()) > 0
    p.eval()
    fq = p(x)
    q = tq.convert(p)
    assert type(q[1]) is tqq.ConvReLU2d
    assert _sqnr(fq, q(x)) > 30
    relu_only = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 8, 3), nn.ReLU6(), tq.DeQuantStub()).train()
    tq.fuse_modules_qat(relu_only, [["1", "2"]], inplace=True)
    relu_only.qconfig = tq.get_default_qat_qconfig("x86")
    pr = tq.prepare_qat(relu_only)
    assert isinstance(pr[1], tqat.ConvReLU2d) and pr[1]._relu6 and float(pr(x * 10).max()) <= 6.0 + 1e-6


@pytest.mark.parametrize("relu6", [False, True])
def test_qat_conv_to_float_keeps_the_fused_activation(relu6):
    # to_float of a QAT ConvReLU / ConvBnReLU gives torch.ao's fused float ConvReLU with the same
    # activation (a ReLU6 stays a ReLU6) and the same float function as the QAT module's float math
    torch.manual_seed(0)
    act = nn.ReLU6() if relu6 else nn.ReLU()
    for with_bn in (False, True):
        mods = [nn.Conv2d(3, 8, 3)] + ([nn.BatchNorm2d(8)] if with_bn else []) + [act]
        m = nn.Sequential(tq.QuantStub(), *mods, tq.DeQuantStub()).train()
        with torch.no_grad():
            mods[0].weight.mul_(6)
        tq.fuse_modules_qat(m, [[str(i) for i in range(1, len(mods) + 1)]], inplace=True)
        m.qconfig = tq.get_default_qat_qconfig("x86")
        p = tq.prepare_qat(m)
        assert p[1]._relu6 == relu6 and ("relu6=True" in repr(p[1])) == relu6
        x = torch.randn(2, 3, 8, 8) * 3
        p(x)
        p.eval()
        back = p[1].to_float()
        assert type(back) is tqi.ConvReLU2d and type(back[1]) is type(act)
        y = back(x)
        assert (float(y.max()) <= 6.0) if relu6 else (float(y.max()) > 6.0)


@pytest.mark.parametrize("make,earlier", [
    (lambda: tq.nn.quantized.Conv2d(8, 16, 3), lambda p: p[:-32].view(1, 1, -1, 16)),          # 4-D panels
    (lambda: tq.nn.quantized.Conv2d(8, 8, 3, groups=8), lambda p: p.reshape(9, 8)),            # [taps, C]
    (lambda: tq.nn.quantized.ConvTranspose2d(8, 16, 3), lambda p: p[:-32].view(1, 1, -1, 8, 16)),  # 5-D panels
], ids=["conv", "depthwise", "transposed"])
def test_a_module_pickled_with_an_earlier_conv_packing_repacks_on_load(make, earlier):
    # torch.save(model) carries the kernel layout; the conv packings had other shapes before
    # they recorded the weight's kernel, and such a pickle failed at its first call.
    import io

    from torchquant.nn._state_dict import note_packed

    torch.manual_seed(0)
    m = make()
    m.qweight.copy_(torch.randint(-127, 128, m.qweight.shape, dtype=torch.int8))
    m._repack()
    x = tq.quantize_per_tensor(torch.randn(1, 8, 6, 6), 0.05, 128, torch.quint8)
    want, now = m(x), m._packed_weight.shape
    m._buffers["_packed_weight"] = earlier(m._packed_weight).clone()
    note_packed(m, ("qweight",), "_packed_weight")
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert again._packed_weight.shape == now and torch.equal(again(x).data, want.data)


_CONV_KINDS = [  # (quantized class, float conv, input shape)
    (tqq.Conv1d, lambda: nn.Conv1d(4, 6, 3, padding=1), (2, 4, 9)),
    (tqq.Conv2d, lambda: nn.Conv2d(4, 8, 3, groups=2), (2, 4, 7, 7)),
    (tqq.ConvReLU2d, lambda: nn.Conv2d(4, 6, 3), (2, 4, 7, 7)),
    (tqq.Conv2d, lambda: nn.Conv2d(4, 4, 3, groups=4, bias=False), (2, 4, 7, 7)),  # depthwise
    (tqq.Conv3d, lambda: nn.Conv3d(4, 6, 3), (1, 4, 4, 5, 5)),
    (tqq.ConvReLU3d, lambda: nn.Conv3d(4, 6, 2), (1, 4, 4, 5, 5)),
]
_CONV_IDS = ["1d", "2d-grouped", "relu2d", "depthwise-nobias", "3d", "relu3d"]


def _converted_kind(cls, make, shape, seed=0):
    torch.manual_seed(seed)
    f = make().eval()
    if cls._relu:
        f = tqi.ConvReLU1d(f, nn.ReLU()) if isinstance(f, nn.Conv1d) else (
            tqi.ConvReLU2d(f, nn.ReLU()) if isinstance(f, nn.Conv2d) else tqi.ConvReLU3d(f, nn.ReLU()))
    q = _converted(f, torch.randn(shape))
    assert type(q[1]) is cls
    return q


def _geometry(m):
    return dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=m.kernel_size, stride=m.stride,
                padding=m.padding, dilation=m.dilation, groups=m.groups, bias=m.bias is not None)


@pytest.mark.parametrize("cls,make,shape", _CONV_KINDS, ids=_CONV_IDS)
def test_constructor_honours_device_and_takes_torch_aos_dtype_none(cls, make, shape):
    # device= was ignored (the buffers were always the CPU's: a 'meta' skeleton held CPU memory,
    # device='cuda' gave a CPU module), and torch.ao's default dtype=None was refused.
    q = _converted_kind(cls, make, shape)
    geo = _geometry(q[1])
    skeleton = cls(**geo, device="meta", dtype=None)
    assert skeleton.dtype == torch.quint8
    assert {b.device.type for b in skeleton.buffers()} == {"meta"}
    assert skeleton._packed_weight is not None  # (the layout's shape for the device, for to_empty)
    # the skeleton flow: materialized, loaded, and the same as the converted module
    m = skeleton.to_empty(device="cpu")
    m.load_state_dict(q[1].state_dict())
    x = q[0](torch.randn(shape))
    assert torch.equal(m(x).data, q[1](x).data)
    m = cls(**geo, device=torch.device("cpu"), dtype=torch.qint8)
    assert m.dtype == torch.qint8 and {b.device.type for b in m.buffers()} == {"cpu"}
    with pytest.raises(ValueError, match="torch.quint8 and torch.qint8 activations, got torch.float32"):
        cls(**geo, dtype=torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls,make,shape", _CONV_KINDS, ids=_CONV_IDS)
def test_constructor_on_cuda_gives_a_cuda_module(cls, make, shape):
    q = _converted_kind(cls, make, shape)
    m = cls(**_geometry(q[1]), device="cuda")
    assert {b.device.type for b in m.buffers()} == {"cuda"}
    m.load_state_dict(q[1].state_dict())
    want = copy.deepcopy(q[1]).to("cuda")
    assert m._packed_weight.shape == want._packed_weight.shape
    x = q[0](torch.randn(shape)).to("cuda")
    assert torch.equal(m(x).data, want(x).data)


def _torch_qweight(m, per_tensor=False):
    """m's weight as a torch.ao quantized tensor (what torch.ao's set_weight_bias takes)."""
    if per_tensor:
        return torch._make_per_tensor_quantized_tensor(m.qweight, float(m.weight_scale[0]), 0)
    return torch._make_per_channel_quantized_tensor(m.qweight, m.weight_scale.double(),
                                                     torch.zeros(m.out_channels, dtype=torch.long), 0)


def _with_output_qparams_of(m, src):
    m.load_state_dict({"scale": src.scale, "zero_point": src.zero_point}, strict=False)
    return m


@pytest.mark.parametrize("cls,make,shape", _CONV_KINDS, ids=_CONV_IDS)
def test_set_weight_bias_takes_torch_aos_and_its_own_weights(cls, make, shape):
    # torch.ao's quantized convs have set_weight_bias beside weight() / bias() / _weight_bias().
    from torchquant.nn._compact import is_compact

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's quantized tensors are deprecated)
        a, b = _converted_kind(cls, make, shape, 0), _converted_kind(cls, make, shape, 1)
        x = a[0](torch.randn(shape))
        want = a[1](x)
        m = _with_output_qparams_of(copy.deepcopy(b[1]), a[1])  # b's weights, a's output qparams
        assert is_compact(m) and not torch.equal(m(x).data, want.data)
        # a torch quantized tensor, per channel: the next call uses the new weights
        m.set_weight_bias(_torch_qweight(a[1]), a[1].bias)
        assert torch.equal(m(x).data, want.data) and is_compact(m)
        sd = m.state_dict()
        for k in ("qweight", "weight_scale", "weight_zero_point", "bias"):
            assert (sd.get(k) is None) == (k not in a[1].state_dict()), k  # (no bias: none)
            assert k not in sd or torch.equal(sd[k], a[1].state_dict()[k]), k
        # another module's weight() (a QTensor), and a module's own back, which changes nothing
        m.set_weight_bias(*b[1]._weight_bias())
        assert torch.equal(m.qweight, b[1].qweight)
        m.set_weight_bias(*a[1]._weight_bias())
        before = {k: v.clone() for k, v in m.state_dict().items()}
        m.set_weight_bias(*m._weight_bias())
        assert torch.equal(m(x).data, want.data)
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
        # per-tensor weights (a QTensor or torch's), against a module built from_float with them
        f = make().eval()
        torch.manual_seed(2)
        fm = nn.Sequential(tq.QuantStub(), tqi.ConvReLU2d(f, nn.ReLU()) if cls is tqq.ConvReLU2d else (
            tqi.ConvReLU3d(f, nn.ReLU()) if cls is tqq.ConvReLU3d else f), tq.DeQuantStub()).eval()
        fm.qconfig = tq.QConfig(activation=tq.MinMaxObserver, weight=tq.default_weight_observer)  # per tensor
        p = tq.prepare(fm)
        p(torch.randn(shape))
        ref = tq.convert(p)[1]
        x = tq.quantize_per_tensor(torch.randn(shape), 0.03, 120, torch.quint8)
        for w in (_torch_qweight(ref, per_tensor=True),
                  tq.QTensor(ref.qweight.clone(), ref.weight_scale[:1].clone(), torch.zeros(1, dtype=torch.int32))):
            m = _with_output_qparams_of(copy.deepcopy(b[1]), ref)
            m.set_weight_bias(w, ref.bias)
            assert torch.equal(m(x).data, ref(x).data)
            assert torch.equal(m.weight_scale, ref.weight_scale)


def test_set_weight_bias_bias_none_and_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _converted_kind(tqq.Conv2d, lambda: nn.Conv2d(4, 6, 3), (2, 4, 7, 7))
        m, x = q[1], q[0](torch.randn(2, 4, 7, 7))
        w, b = m._weight_bias()
        # no bias: as a zero bias (and the module reads as one without)
        m0 = copy.deepcopy(m)
        m0.set_weight_bias(w, None)
        assert m0.bias is None and "bias=False" in repr(m0)
        mz = copy.deepcopy(m)
        mz.set_weight_bias(w, torch.zeros(6))
        assert torch.equal(m0(x).data, mz(x).data)
        # a module built without one takes a bias
        nob = tqq.Conv2d(4, 6, 3, bias=False)
        nob.load_state_dict({k: v for k, v in m.state_dict().items() if k != "bias"}, strict=False)
        nob.set_weight_bias(w, b)
        assert torch.equal(nob(x).data, m(x).data)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        wf = w.dequantize()
        bad = [
            (wf, TypeError, r"argument 'w' must be a torchquant QTensor or a torch quantized tensor.*float"),
            (torch.quantize_per_tensor(wf, 0.01, 0, torch.quint8), ValueError, r"argument 'w' must be qint8.*quint8"),
            (tq.quantize_per_tensor(wf, 0.01, 3, torch.qint8), ValueError, r"argument 'w'.*zero point 0.*\b3\b"),
            (tq.quantize_per_tensor(wf[:, :3], 0.01, 0, torch.qint8), ValueError,
             r"argument 'w' must have shape \[6, 4, 3, 3\].*\[6, 3, 3, 3\]"),
            (tq.quantize_per_channel(wf, torch.full((4,), 0.01), torch.zeros(4, dtype=torch.int32), 1, torch.qint8),
             ValueError, r"argument 'w'.*axis 0.*axis 1"),
            (torch.quantize_per_channel(wf, torch.full((6,), 0.01, dtype=torch.double), torch.ones(6, dtype=torch.long),
                                        0, torch.qint8), ValueError, r"argument 'w'.*zero point 0"),
            (tq.QTensor(w.data.clone(), torch.zeros(6), torch.zeros(6, dtype=torch.int32), 0), ValueError,
             r"argument 'w'.*scales must be > 0 and finite"),
        ]
        for wbad, err, match in bad:
            with pytest.raises(err, match=match):
                m.set_weight_bias(wbad, b)
        for bbad, err, match in [(torch.zeros(5), ValueError, r"argument 'b' must have shape \[6\].*got \[5\]"),
                                 (torch.zeros(6, dtype=torch.int64), TypeError, r"argument 'b'.*float"),
                                 ([0.0] * 6, TypeError, r"argument 'b'")]:
            with pytest.raises(err, match=match):
                m.set_weight_bias(w, bbad)
        # a refused call changes nothing
        for k, v in m.state_dict().items():
            assert torch.equal(v, before[k]), k


def test_set_weight_bias_writes_into_the_modules_tensors():
    # Written as load_state_dict writes (into the module's tensors): a state dict taken before
    # holds the module's tensors, as torch's; the bias given is copied, not kept.
    q = _converted_kind(tqq.Conv2d, lambda: nn.Conv2d(4, 6, 3), (2, 4, 7, 7))
    m = copy.deepcopy(q[1])
    bias = torch.randn(6, requires_grad=True)
    w = tq.quantize_per_channel(torch.randn(6, 4, 3, 3), torch.full((6,), 0.02), torch.zeros(6, dtype=torch.int32), 0,
                                torch.qint8)
    m.set_weight_bias(w, bias)
    assert m.bias is not bias and not m.bias.requires_grad and torch.equal(m.bias, bias.detach())
    assert torch.equal(m.qweight, w.data) and torch.equal(m.weight.dequantize(), w.dequantize())
    x = q[0](torch.randn(2, 4, 7, 7))
    ref = reference.conv_int8(x.data, x.scale, x.zero_point, w.data, m.weight_scale, m.bias, 1, 0, 1, 1, m.scale,
                              m.zero_point, False, torch.uint8)
    assert torch.equal(m(x).data, ref)
    # a state dict taken before holds the module's tensors, which the call wrote into (as a load)
    sd = m.state_dict()
    m.set_weight_bias(*q[1]._weight_bias())
    assert torch.equal(sd["qweight"], q[1].qweight) and torch.equal(sd["bias"], q[1].bias)


def test_quantized_or_integer_tensor_input_is_named_as_what_it_is():
    # A torch quantized tensor or raw codes were reported as "a float Tensor".
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _converted_kind(tqq.Conv2d, lambda: nn.Conv2d(4, 6, 3), (2, 4, 8, 8))
        xt = torch.quantize_per_tensor(torch.randn(2, 4, 8, 8), 0.05, 128, torch.quint8)
    with pytest.raises(TypeError, match=r"Conv2d received a torch quantized tensor \(dtype torch.quint8\).*"
                                        r"torchquant.quantize_per_tensor.*add a torchquant.QuantStub\(\)") as e:
        q[1](xt)
    assert "float" not in str(e.value).split("takes")[0]
    with pytest.raises(TypeError, match=r"Conv2d received an integer tensor \(dtype torch.uint8\).*QTensor.*"
                                        r"add a torchquant.QuantStub\(\)"):
        q[1](torch.randint(0, 255, (2, 4, 8, 8), dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"Conv2d received an integer tensor \(dtype torch.int8\)"):
        tqq.Conv2d(4, 6, 3)(torch.zeros(2, 4, 8, 8, dtype=torch.int8))
    with pytest.raises(TypeError, match=r"Conv2d received a float Tensor, but a static quantized convolution takes a "
                                        r"QTensor: add a torchquant.QuantStub\(\) before it"):
        tqq.Conv2d(4, 6, 3)(torch.randn(2, 4, 8, 8))
    with pytest.raises(TypeError, match=r"Conv2d received a list, but"):
        tqq.Conv2d(4, 6, 3)([1.0])


def test_repr_of_a_meta_skeleton():
    # A skeleton on the meta device (to_empty / load_state_dict route) has no qparam values to
    # print: its repr raised "Tensor.item() cannot be called on meta tensors".
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Hardswish(), nn.Flatten(),
                      nn.Linear(4 * 36, 5), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(torch.randn(2, 3, 8, 8))
    q = tq.convert(p)
    assert "scale=" in repr(q)
    meta = repr(q.to("meta"))
    assert meta.count("scale=(meta), zero_point=(meta)") == 5, meta
    assert "meta" in repr(tq.nn.quantized.Conv2d(3, 4, 3, device="meta"))
