"""Quantized ConvTranspose1d/2d/3d modules and their eager flow: prepare / convert of models
with nn.ConvTranspose*d, close to fp32 and no worse than torch.ao's converted modules on the
same calibration, bit-identical with the reference on the int8 weights they hold, output_size,
unbatched input, state dicts, errors."""
import copy
import io

import pytest
import torch
from torch import nn

import torchquant as tq
from torchquant import reference
from torchquant.nn import quantized as tqq

ao = pytest.importorskip("torch.ao.quantization")


def _sqnr(ref, got):
    return (10 * torch.log10(ref.pow(2).mean() / (ref - got).pow(2).mean())).item()


class _Decoder(nn.Module):
    """A DCGAN-like generator tail and a UNet-like 2x2 upsampling."""

    def __init__(self, stubs):
        super().__init__()
        self.quant = stubs.QuantStub()
        self.up1 = nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.up2 = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dequant = stubs.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.up2(self.relu(self.up1(self.quant(x)))))


def _calib(n=6, shape=(4, 32, 6, 6)):
    return [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in range(n)]


def _ao_convert(model, calib):
    prev = torch.backends.quantized.engine
    # qnnpack: in this torch, torch.ao's x86 and onednn engines give wrong ConvTranspose results
    # (SQNR below 0 dB) on every shape tried, fbgemm on 2x2 kernels (UNet upsampling).
    torch.backends.quantized.engine = "qnnpack"
    try:
        p = ao.prepare(model)
        for c in calib:
            p(c)
        q = ao.convert(p)
        return q, prev
    except Exception:
        torch.backends.quantized.engine = prev
        raise


def test_decoder_close_to_fp32_and_no_worse_than_torch_ao():
    torch.manual_seed(0)
    net = _Decoder(tq).eval()
    calib = _calib()
    x = torch.randn(4, 32, 6, 6, generator=torch.Generator().manual_seed(99))
    ref = net(x)

    ours = copy.deepcopy(net)
    ours.qconfig = tq.get_default_qconfig("x86")  # per-channel weights, histogram activations
    p = tq.prepare(ours)
    for c in calib:
        p(c)
    q = tq.convert(p)
    assert type(q.up1) is tqq.ConvTranspose2d and type(q.up2) is tqq.ConvTranspose2d
    got = q(x)
    assert got.shape == ref.shape == (4, 8, 24, 24)

    twin = _Decoder(ao).eval()
    twin.load_state_dict(net.state_dict())
    # Histogram activations and per-tensor weights: torch.ao rejects per-channel weight observers
    # for ConvTranspose.
    twin.qconfig = ao.get_default_qconfig("qnnpack")
    theirs, prev = _ao_convert(twin, calib)
    try:
        want = theirs(x)
    finally:
        torch.backends.quantized.engine = prev
    ours_db, theirs_db = _sqnr(ref, got), _sqnr(ref, want)
    assert ours_db > 30, ours_db
    assert ours_db >= theirs_db - 1.0, (ours_db, theirs_db)


@pytest.mark.parametrize("per_channel", [False, True])
def test_same_recipe_as_torch_ao_within_1_lsb(per_channel):
    """torch.ao's recipe (MinMax activations with reduce_range, per-tensor symmetric weights):
    the same qparams and outputs within one output step. Per channel (which torch.ao lacks):
    bit-identical with the reference on the module's int8 weights."""
    torch.manual_seed(1)
    conv = nn.ConvTranspose2d(12, 10, 3, stride=2, padding=1, output_padding=1, groups=2)
    net = nn.Sequential(tq.QuantStub(), copy.deepcopy(conv), tq.DeQuantStub()).eval()
    wobs = (tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
            if per_channel else tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric))
    net.qconfig = tq.QConfig(activation=tq.MinMaxObserver.with_args(reduce_range=True), weight=wobs)
    calib = _calib(4, (2, 12, 5, 7))
    p = tq.prepare(net)
    for c in calib:
        p(c)
    q = tq.convert(p)
    x = torch.randn(2, 12, 5, 7, generator=torch.Generator().manual_seed(7))
    qmod = q[1]
    xq = q[0](x)
    want_ref = reference.conv_transpose_int8(xq.data, xq.scale, xq.zero_point, qmod.qweight, qmod.weight_scale,
                                             qmod.bias, list(qmod.stride), list(qmod.padding),
                                             list(qmod.output_padding), list(qmod.dilation), qmod.groups, qmod.scale,
                                             qmod.zero_point, False, torch.uint8)
    assert torch.equal(qmod(xq).data, want_ref)
    if per_channel:
        assert len(set(qmod.weight_scale.tolist())) == 10
        return
    twin = nn.Sequential(ao.QuantStub(), copy.deepcopy(conv), ao.DeQuantStub()).eval()
    twin.qconfig = ao.QConfig(activation=ao.MinMaxObserver.with_args(reduce_range=True),
                              weight=ao.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric))
    theirs, prev = _ao_convert(twin, calib)
    try:
        want = theirs(x)
    finally:
        torch.backends.quantized.engine = prev
    assert float(qmod.scale) == pytest.approx(float(theirs[1].scale), rel=1e-6)
    assert int(qmod.zero_point) == int(theirs[1].zero_point)
    assert torch.equal(qmod.qweight, theirs[1].weight().int_repr())
    assert (q(x) - want).abs().max().item() <= float(qmod.scale) * 1.001


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.ConvTranspose1d(6, 5, 3, stride=2, padding=1, output_padding=1), (3, 6, 11)),
    (lambda: nn.ConvTranspose1d(8, 8, 4, stride=3, dilation=2, groups=4, bias=False), (2, 8, 9)),
    (lambda: nn.ConvTranspose2d(6, 9, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1)), (2, 6, 7, 5)),
    (lambda: nn.ConvTranspose3d(4, 6, 2, stride=2), (2, 4, 3, 4, 5)),
    (lambda: nn.ConvTranspose3d(4, 4, 3, stride=(1, 2, 2), padding=1, output_padding=(0, 1, 1), groups=2),
     (1, 4, 3, 4, 4)),
], ids=["1d", "1d-grouped-dilated", "2d-asymmetric", "3d", "3d-grouped"])
def test_flow_shapes_and_accuracy(make, shape):
    torch.manual_seed(2)
    conv = make()
    net = nn.Sequential(tq.QuantStub(), conv, tq.DeQuantStub()).eval()
    net.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(net)
    for s in range(3):
        p(torch.randn(shape, generator=torch.Generator().manual_seed(s)))
    q = tq.convert(p)
    assert type(q[1]).__name__ == type(conv).__name__
    x = torch.randn(shape, generator=torch.Generator().manual_seed(50))
    y = q(x)
    ref = net(x)
    assert y.shape == ref.shape
    assert _sqnr(ref, y) > 20
    out = q[1](q[0](x))
    assert out.data.movedim(1, -1).is_contiguous()  # channels-last memory


def _converted(conv, shape):
    net = nn.Sequential(tq.QuantStub(), conv, tq.DeQuantStub()).eval()
    net.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(net)
    p(torch.randn(shape))
    return net, tq.convert(p)


def test_output_size_and_unbatched():
    conv = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1)
    net, q = _converted(conv, (2, 4, 5, 5))
    x = torch.randn(2, 4, 5, 5)
    qx = q[0](x)
    for size in ([9, 9], [10, 10], [2, 6, 10, 9]):
        y = q[1](qx, output_size=size)
        assert y.shape == conv(x, output_size=size).shape
    y10 = q[1](qx, output_size=[10, 10]).dequantize()
    # The extra row and column: only the bias reaches them where no tap lands (output_padding 1).
    xs = reference.conv_transpose_int8(qx.data, qx.scale, qx.zero_point, q[1].qweight, q[1].weight_scale, q[1].bias,
                                       2, 1, 1, 1, 1, q[1].scale, q[1].zero_point, False, torch.uint8)
    assert torch.equal(q[1](qx, output_size=[10, 10]).data, xs)
    assert y10.shape == (2, 6, 10, 10)
    with pytest.raises(ValueError, match="requested an output size of"):
        q[1](qx, output_size=[12, 12])
    xu = torch.randn(4, 5, 5)
    assert torch.equal(q(xu), q(xu.unsqueeze(0)).squeeze(0))
    assert q[1](q[0](xu), output_size=[10, 10]).shape == (6, 10, 10)


def test_state_dict_weights_only_repr_and_to():
    conv = nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1, groups=2)
    net, q = _converted(conv, (2, 6, 4, 4))
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert {k for k in sd if k.startswith("1.")} == {
        "1.qweight", "1.weight_scale", "1.weight_zero_point", "1.bias", "1.scale", "1.zero_point", "1.float_input_scale",
        "1.float_input_zero_point"}
    assert sd["1.qweight"].shape == (6, 2, 4, 4) and sd["1.qweight"].dtype == torch.int8
    _, q2 = _converted(copy.deepcopy(conv), (2, 6, 4, 4))
    q2.load_state_dict(sd)
    x = torch.randn(2, 6, 4, 4)
    assert torch.equal(q(x), q2(x))
    assert torch.equal(copy.deepcopy(q).to("cpu")(x), q(x))
    r = repr(q[1])
    assert r.startswith("ConvTranspose2d(6, 4, kernel_size=(4, 4), stride=(2, 2), scale=") and "groups=2" in r
    assert "padding=(1, 1)" in r
    w = q[1].weight
    assert w.data.shape == (4, 3, 4, 4) and w.axis == 0  # Conv's layout: per output channel
    # A module built directly and loaded from the state dict.
    m = tqq.ConvTranspose2d(6, 4, 4, stride=2, padding=1, groups=2)
    m.load_state_dict({k[2:]: v for k, v in sd.items() if k.startswith("1.")})
    qx = q[0](x)
    assert torch.equal(m(qx).data, q[1](qx).data)


def test_prepare_qat_converts_conv_transpose():
    """torch.ao has no QAT ConvTranspose: prepare_qat leaves it float (observed), convert
    quantizes it with the qconfig's weight FakeQuantize."""
    net = _Decoder(tq).train()
    net.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(net)
    assert type(p.up1) is nn.ConvTranspose2d
    for c in _calib(3):
        p(c)
    q = tq.convert(p.eval())
    assert type(q.up1) is tqq.ConvTranspose2d
    x = torch.randn(2, 32, 6, 6)
    assert _sqnr(net.eval()(x), q(x)) > 25


def test_compile_and_export():
    net, q = _converted(nn.ConvTranspose2d(4, 6, 2, stride=2), (2, 4, 5, 5))
    x = torch.randn(2, 4, 5, 5)
    ep = torch.export.export(q, (x,))
    assert torch.equal(ep.module()(x), q(x))


def test_bad_input():
    net, q = _converted(nn.ConvTranspose1d(4, 6, 3), (2, 4, 10))
    with pytest.raises(RuntimeError, match=r"Expected 2D \(unbatched\) or 3D \(batched\) input to conv_transpose1d"):
        q(torch.randn(1, 4, 10, 3))
    xf = torch.randn(1, 4, 10)
    with pytest.warns(UserWarning, match="ConvTranspose1d '1' received a float tensor"):
        y = q[1](xf)
    ref = q[1](q[0](xf)).dequantize()
    assert (y.dequantize() - ref).abs().max() <= 0.1 * ref.abs().max() + 0.1
    with pytest.raises(TypeError, match="add a torchquant.QuantStub"):
        tqq.ConvTranspose1d(4, 6, 3)(xf)
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        tqq.ConvTranspose2d(3, 8, 3, groups=2)
    with pytest.raises(ValueError, match="out_channels must be divisible by groups"):
        tqq.ConvTranspose2d(4, 5, 3, groups=2)
    with pytest.raises(ValueError, match="output_padding must be smaller than either stride or dilation"):
        tqq.ConvTranspose2d(4, 4, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match='Only "zeros" padding mode'):
        tqq.ConvTranspose2d(4, 4, 3, padding_mode="reflect")
    # A per-channel weight observer along another axis than the output channel's.
    net = nn.Sequential(tq.QuantStub(), nn.ConvTranspose2d(4, 6, 3), tq.DeQuantStub()).eval()
    net.qconfig = tq.QConfig(activation=tq.MinMaxObserver,
                             weight=tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, ch_axis=1,
                                                                           qscheme=torch.per_channel_symmetric))
    p = tq.prepare(net)
    p(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="ch_axis=0"):
        tq.convert(p)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("groups,bias", [(1, True), (1, False), (2, True), (3, False)])
def test_fuse_convtranspose_bn(dims, groups, bias):
    # [ConvTranspose, BatchNorm] folds for inference (torch.ao's fuse_convtranspose_bn), also with
    # groups > 1, where torch's fuse_conv_bn_eval(transpose=True) broadcasts the BatchNorm's scale
    # over the weight's [Cin, Cout / groups] as if it were [Cin, Cout]: a shape error, or a weight of
    # the wrong shape where Cout / groups == 1
    torch.manual_seed(dims * 10 + groups)
    CT, BN = getattr(nn, f"ConvTranspose{dims}d"), getattr(nn, f"BatchNorm{dims}d")
    m = nn.Sequential(tq.QuantStub(), CT(6, 12, 3, stride=2, groups=groups, bias=bias), BN(12),
                      tq.DeQuantStub()).eval()
    with torch.no_grad():
        m[2].running_mean.normal_()
        m[2].running_var.uniform_(0.25, 4)
        m[2].weight.normal_()
        m[2].bias.normal_()
    x = torch.randn(2, 6, *([5] * dims))
    want = m(x)
    groups_found = tq.find_fusable_modules(m)
    assert groups_found == [["1", "2"]] and tq.find_fusable_modules(m, qat=True) == []
    before = copy.deepcopy(m.state_dict())
    fused = tq.fuse_modules(m, groups_found)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # the original untouched
    assert type(fused[1]) is CT and isinstance(fused[2], nn.Identity)
    torch.testing.assert_close(fused(x), want, rtol=1e-5, atol=1e-5)
    direct = tq.fuse_convtranspose_bn(False, m[1], m[2])
    assert torch.equal(direct.weight, fused[1].weight) and torch.equal(direct.bias, fused[1].bias)
    if groups == 1:  # torch's own fold, bit for bit
        from torch.nn.utils.fusion import fuse_conv_bn_eval
        t = fuse_conv_bn_eval(m[1], m[2], transpose=True)
        assert torch.equal(t.weight, fused[1].weight) and torch.equal(t.bias, fused[1].bias)
    fused.qconfig = tq.get_default_qconfig("x86")
    prepared = tq.prepare(fused)
    prepared(x)
    q = tq.convert(prepared)
    assert isinstance(q[1], getattr(tqq, f"ConvTranspose{dims}d"))
    assert float((q(x) - want).norm() / want.norm()) < 0.02
    with pytest.raises(ValueError, match="cannot be fused for QAT"):
        tq.fuse_modules_qat(m.train(), [["1", "2"]])
    with pytest.raises(ValueError, match="eval mode"):
        tq.fuse_modules(m.train(), [["1", "2"]])
    with pytest.raises(ValueError, match="running statistics"):
        tq.fuse_convtranspose_bn(False, m[1].eval(), BN(12, track_running_stats=False).eval())


def test_fuse_convtranspose_bn_dtypes_as_torchs():
    # no bias, bfloat16 weights, a float32 BatchNorm: the folded bias takes the weight's dtype
    convt = nn.ConvTranspose2d(4, 6, 3, bias=False).to(torch.bfloat16).eval()
    bn = nn.BatchNorm2d(6).eval()
    fused = tq.fuse_convtranspose_bn(False, convt, bn)
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    t = fuse_conv_bn_eval(convt, bn, transpose=True)
    assert fused.weight.dtype == fused.bias.dtype == torch.bfloat16
    assert torch.equal(t.weight, fused.weight) and torch.equal(t.bias, fused.bias)
    fused(torch.randn(1, 4, 5, 5, dtype=torch.bfloat16))


_KINDS = [  # (quantized class, float module, input shape)
    (tqq.ConvTranspose1d, lambda: nn.ConvTranspose1d(4, 6, 3, stride=2), (2, 4, 7)),
    (tqq.ConvTranspose2d, lambda: nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1, groups=2), (2, 6, 4, 4)),
    (tqq.ConvTranspose2d, lambda: nn.ConvTranspose2d(4, 6, 2, stride=2, bias=False), (2, 4, 4, 4)),
    (tqq.ConvTranspose3d, lambda: nn.ConvTranspose3d(4, 6, 2, stride=2), (1, 4, 3, 3, 3)),
]
_IDS = ["1d", "2d-groups", "2d-nobias", "3d"]


def _geometry(m):
    return dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=m.kernel_size, stride=m.stride,
                padding=m.padding, output_padding=m.output_padding, groups=m.groups, bias=m.bias is not None,
                dilation=m.dilation)


@pytest.mark.parametrize("cls,make,shape", _KINDS, ids=_IDS)
def test_constructor_honours_device_and_takes_torch_aos_dtype_none(cls, make, shape):
    # device= was ignored (CPU buffers whatever was asked) and torch.ao's default dtype=None refused.
    torch.manual_seed(0)
    _, q = _converted(make(), shape)
    skeleton = cls(**_geometry(q[1]), device="meta", dtype=None)
    assert skeleton.dtype == torch.quint8
    assert {b.device.type for b in skeleton.buffers()} == {"meta"} and skeleton._packed_weight is not None
    m = skeleton.to_empty(device="cpu")
    m.load_state_dict(q[1].state_dict())
    x = q[0](torch.randn(shape))
    assert torch.equal(m(x).data, q[1](x).data)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls,make,shape", _KINDS, ids=_IDS)
def test_constructor_on_cuda_gives_a_cuda_module(cls, make, shape):
    torch.manual_seed(0)
    _, q = _converted(make(), shape)
    m = cls(**_geometry(q[1]), device="cuda")
    assert {b.device.type for b in m.buffers()} == {"cuda"}
    m.load_state_dict(q[1].state_dict())
    want = copy.deepcopy(q[1]).to("cuda")
    x = q[0](torch.randn(shape)).to("cuda")
    assert torch.equal(m(x).data, want(x).data)


@pytest.mark.parametrize("cls,make,shape", _KINDS, ids=_IDS)
def test_set_weight_bias_takes_weight_s_layout_back(cls, make, shape):
    # torch.ao's set_weight_bias; here w is in the layout weight() gives (Conv's, per output channel).
    import warnings

    from torchquant.nn._compact import is_compact

    torch.manual_seed(0)
    _, a = _converted(make(), shape)
    _, b = _converted(make(), shape)
    x = a[0](torch.randn(shape))
    want = a[1](x)
    m = copy.deepcopy(b[1])  # b's weights, a's output qparams
    m.load_state_dict({"scale": a[1].scale, "zero_point": a[1].zero_point}, strict=False)
    assert is_compact(m) and not torch.equal(m(x).data, want.data)
    wa, ba = copy.deepcopy(a[1])._weight_bias()
    m.set_weight_bias(wa, ba)
    assert torch.equal(m(x).data, want.data) and is_compact(m)
    assert torch.equal(m.qweight, a[1].qweight) and torch.equal(m.weight_scale, a[1].weight_scale)
    # a torch quantized tensor of the same values
    m.set_weight_bias(*b[1]._weight_bias())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's quantized tensors are deprecated)
        wt = torch._make_per_channel_quantized_tensor(wa.data, wa.scale.double(),
                                                       torch.zeros(wa.shape[0], dtype=torch.long), 0)
    m.set_weight_bias(wt, ba)
    assert torch.equal(m(x).data, want.data)
    # its own back: nothing changes
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.set_weight_bias(*m._weight_bias())
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert torch.equal(m(x).data, want.data)
    if m.in_channels != m.out_channels:  # nn.ConvTranspose's layout: named in the error
        with pytest.raises(ValueError, match=r"argument 'w' must have shape .*Conv's layout.*not nn.ConvTranspose's"):
            m.set_weight_bias(tq.QTensor(m.qweight.clone(), torch.full((1,), 0.1), torch.zeros(1, dtype=torch.int32)),
                              ba)
