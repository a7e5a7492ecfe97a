"""torch functions on QTensors that stay int8 (pooling, averaging, upsampling, activations,
shape functions, cat): equal to torch.ao's quantized kernels on the same int data."""
import re
import warnings
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchquant
from torchquant import QTensor

from conftest import TORCH_AO_ROUNDS_IN_FLOAT32

CL = torch.channels_last


def _pair(shape, dtype, zp, gen, scale=0.1, memory_format=CL):
    lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
    data = torch.randint(lo, hi + 1, shape, dtype=dtype, generator=gen)
    if len(shape) == 4:
        data = data.contiguous(memory_format=memory_format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's quantized tensors are deprecated
        ref = torch._make_per_tensor_quantized_tensor(data, scale, zp)
    return QTensor(data, torch.tensor([scale]), torch.tensor([zp], dtype=torch.int32)), ref


def _same(got, ref, tol=0):
    assert isinstance(got, QTensor)
    assert got.shape == ref.shape
    diff = (got.data.int() - ref.int_repr().int()).abs()
    assert int(diff.max()) <= tol if diff.numel() else True
    assert got.q_zero_point() == ref.q_zero_point()
    assert abs(got.q_scale() - ref.q_scale()) <= 1e-7 * ref.q_scale()


FUNCTIONS = {
    "max_pool2d": lambda x: F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True),
    "max_pool2d_module": lambda x: nn.MaxPool2d(2)(x),
    "avg_pool2d_pad": lambda x: F.avg_pool2d(x, 3, stride=1, padding=1),
    "avg_pool2d_nopad": lambda x: F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False),
    "avg_pool2d_ceil": lambda x: F.avg_pool2d(x, 2, stride=2, ceil_mode=True),
    "avg_pool2d_divisor": lambda x: F.avg_pool2d(x, 3, 2, 1, divisor_override=5),
    "adaptive_avg_pool2d_1": lambda x: F.adaptive_avg_pool2d(x, 1),
    "adaptive_avg_pool2d_module": lambda x: nn.AdaptiveAvgPool2d((3, 2))(x),
    "interpolate_nearest": lambda x: F.interpolate(x, scale_factor=2),
    "upsample_size": lambda x: nn.Upsample(size=(7, 5))(x),
    "relu": F.relu,
    "relu_inplace": lambda x: F.relu(x, inplace=True),
    "relu6": F.relu6,
    "relu6_module": lambda x: nn.ReLU6()(x),
    "hardtanh": lambda x: F.hardtanh(x, -0.5, 0.7),
    "hardsigmoid": F.hardsigmoid,
    "hardsigmoid_module": lambda x: nn.Hardsigmoid()(x),
    "sigmoid": torch.sigmoid,
    "flatten": lambda x: torch.flatten(x, 1),
    "channel_shuffle": lambda x: torch.transpose(x.view(x.size(0), 2, -1, x.shape[2], x.shape[3]), 1, 2)
    .contiguous().view(x.size(0), -1, x.shape[2], x.shape[3]),
    "permute": lambda x: x.permute(0, 2, 3, 1).reshape(x.size(0), -1),
    "chunk0": lambda x: x.chunk(2, dim=1)[0],
    "chunk1": lambda x: torch.chunk(x, 2, 1)[1],
    "split": lambda x: torch.split(x, [1, 3], 1)[1],
    "cat_same_qparams": lambda x: torch.cat([x, x], 1),
    # data movement: the codes moved, qparams kept
    "flip": lambda x: torch.flip(x, (-1,)),
    "flip_method": lambda x: x.flip(1),
    "pixel_shuffle": lambda x: F.pixel_shuffle(x, 2),
    "channel_shuffle_fn": lambda x: F.channel_shuffle(x, 2),
    "stack": lambda x: torch.stack([x, x], 1).flatten(1, 2),
    "unbind": lambda x: x.unbind(1)[2],
    "select": lambda x: x.select(1, 3),
    "movedim": lambda x: x.movedim(1, -1).contiguous(),
    "tile": lambda x: x.tile((1, 2, 1, 1)),
    "unflatten": lambda x: x.flatten(2).unflatten(2, (x.shape[2], x.shape[3])),
    "clone": lambda x: x.clone(),
    "pad_constant": lambda x: F.pad(x, (0, 1, 0, 1)),
    "clamp": lambda x: torch.clamp(x, -0.3, 0.4),
    "clamp_method": lambda x: x.clamp(min=0.0),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format])
def test_matches_torch_ao(name, dtype, memory_format):
    fn = FUNCTIONS[name]
    if memory_format is torch.contiguous_format and name.startswith(("avg_pool", "adaptive")):
        pytest.skip("torch.ao's NCHW averaging kernel rounds differently from its channels-last one; "
                    "torchquant follows the channels-last one (the layout of its convolutions)")
    if not TORCH_AO_ROUNDS_IN_FLOAT32 and name.startswith(("avg_pool", "adaptive")):
        pytest.skip("this torch build's quantized CPU kernels round ties otherwise (the 2.13.0 CPU wheel)")
    if name == "channel_shuffle_fn" and dtype == torch.int8:
        pytest.skip("torch.ao's quantized channel_shuffle takes quint8 only (torchquant's takes both)")
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()) % 1000)  # str hash() varies per process
    for shape in [(2, 4, 9, 11), (1, 4, 5, 5), (3, 4, 1, 7)]:
        for zp in ((0, 3, 255) if dtype == torch.uint8 else (-128, -5, 0, 127)):
            if name.startswith(("avg_pool", "max_pool2d")) and min(shape[2:]) < 3:
                continue
            q, ref = _pair(shape, dtype, zp, gen, memory_format=memory_format)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want = fn(ref)
            got = fn(q)
            _same(got, want)


def test_mean_is_within_one_code_of_torch_ao():
    """torch.ao's quantized mean dequantizes, averages in float and requantizes, as torchquant
    does; their float summation orders differ, so a rounding tie can land one code apart."""
    gen = torch.Generator().manual_seed(7)
    for dtype, zp in [(torch.uint8, 17), (torch.int8, -3)]:
        q, ref = _pair((2, 8, 7, 9), dtype, zp, gen)
        for dims, keep in [([2, 3], True), ([2, 3], False), (1, False)]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want = torch.mean(ref, dims, keepdim=keep)
            _same(torch.mean(q, dims, keepdim=keep), want, tol=1)
            _same(q.mean(dims, keep), want, tol=1)


def test_cat_with_different_qparams_requantizes():
    gen = torch.Generator().manual_seed(8)
    a, _ = _pair((2, 3, 4, 4), torch.uint8, 10, gen, scale=0.05)
    b, _ = _pair((2, 5, 4, 4), torch.uint8, 200, gen, scale=0.2)
    out = torch.cat([a, b], 1)
    assert isinstance(out, QTensor) and out.shape == (2, 8, 4, 4)
    want = torch.cat([a.dequantize(), b.dequantize()], 1)
    assert float((out.dequantize() - want).abs().max()) <= out.q_scale() / 2 + 1e-6
    # With a float tensor among them (a ViT's class token): all in float, with one warning.
    f = torch.randn(2, 5, 4, 4, generator=gen)
    from torchquant.qtensor import _WARNED

    _WARNED.discard("cat of QTensors and float tensors")  # warned once per process
    with pytest.warns(UserWarning, match="cat of QTensors and float tensors has no int8 implementation"):
        mixed = torch.cat([a, f], 1)
    assert type(mixed) is torch.Tensor and torch.equal(mixed, torch.cat([a.dequantize(), f], 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(torch.stack([f[:, :3], a]), torch.stack([f[:, :3], a.dequantize()]))
    with pytest.raises(TypeError, match="element 1"):  # torch's own argument check
        torch.cat([a, 3], 1)


def test_per_channel_qtensor_is_refused_by_pooling():
    q = torchquant.quantize_per_channel(torch.randn(2, 3, 4, 4), torch.full((3,), 0.1), torch.zeros(3, dtype=torch.int32), 1, torch.qint8)
    with pytest.raises(NotImplementedError, match="per-tensor quantization"):
        F.max_pool2d(q, 2)


def test_channels_last_is_kept():
    gen = torch.Generator().manual_seed(9)
    q, _ = _pair((2, 8, 6, 6), torch.uint8, 3, gen)
    for fn in (lambda x: F.max_pool2d(x, 2), lambda x: F.avg_pool2d(x, 3, 1, 1), F.relu6, lambda x: F.interpolate(x, scale_factor=2)):
        assert fn(q).data.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8])
def test_max_pool2d_channels_last_past_the_dtype_range(dtype):
    """torch's channels-last integer max_pool2d refuses an input of more pixels than the dtype's
    largest value (its bound is checked in the data's own type): a 28 x 28 activation of a
    quantized conv (channels-last) must still pool, equal to torch.ao's quantized max_pool2d."""
    gen = torch.Generator().manual_seed(11)
    q, ref = _pair((2, 8, 28, 28), dtype, 3, gen)
    assert q.data.is_contiguous(memory_format=CL)
    got = F.max_pool2d(q, 2)
    _same(got, F.max_pool2d(ref, 2))
    assert got.data.is_contiguous(memory_format=CL)
def test_bilinear_interpolate_keeps_qparams_and_is_close_to_torch_ao():
    gen = torch.Generator().manual_seed(10)
    q, ref = _pair((1, 3, 5, 6), torch.uint8, 20, gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = F.interpolate(ref, scale_factor=2, mode="bilinear", align_corners=False)
    _same(F.interpolate(q, scale_factor=2, mode="bilinear", align_corners=False), want, tol=1)


@pytest.mark.parametrize("name,fn", [
    ("leaky_relu", lambda x: F.leaky_relu(x, 0.1)),
    ("tanh", torch.tanh),
    ("tanh_method", lambda x: x.tanh()),
])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_requantized_activations_within_a_code_of_torch_ao(name, fn, dtype):
    # Computed in float on the dequantized values (tanh with torch.ao's fixed qparams, leaky_relu
    # with the input's): torch.ao's kernels may round a tie the other way.
    gen = torch.Generator().manual_seed(7)
    for zp in ((0, 128) if dtype == torch.uint8 else (-10, 0)):
        q, ref = _pair((2, 4, 5, 6), dtype, zp, gen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = fn(ref)
        _same(fn(q), want, tol=1)


def test_max_min_topk_keep_qparams_and_indices():
    gen = torch.Generator().manual_seed(8)
    q, ref = _pair((2, 4, 5, 6), torch.uint8, 3, gen)
    assert torch.equal(q.max().dequantize(), ref.max().dequantize())
    v, i = torch.max(q, 1)
    assert torch.equal(v.dequantize(), ref.dequantize().max(1).values) and torch.equal(i, ref.int_repr().max(1).indices)
    v, i = q.flatten(1).topk(3)
    assert isinstance(v, QTensor) and torch.equal(v.dequantize(), ref.dequantize().flatten(1).topk(3).values)
    assert q.ndim == 4 and q.is_quantized and q.detach().shape == q.shape
    assert torch.equal(q.flatten(2).mT.dequantize(), ref.dequantize().flatten(2).mT)
    assert q.contiguous(memory_format=CL).data.is_contiguous(memory_format=CL)


def test_pad_reflect_copies_codes_and_stack_of_different_qparams_requantizes():
    gen = torch.Generator().manual_seed(9)
    q, _ = _pair((1, 4, 5, 6), torch.int8, -3, gen)
    got = F.pad(q, (1, 2, 2, 1), mode="reflect")
    assert torch.equal(got.data, F.pad(q.data.float(), (1, 2, 2, 1), mode="reflect").to(torch.int8))
    assert got.q_scale() == q.q_scale() and got.q_zero_point() == q.q_zero_point()
    other = QTensor(q.data, torch.tensor([0.2]), torch.tensor([0], dtype=torch.int32))
    s = torch.stack([q, other], 0)
    assert s.shape == (2, 1, 4, 5, 6)
    torch.testing.assert_close(s.dequantize(), torch.stack([q.dequantize(), other.dequantize()]),
                               atol=s.q_scale() / 2 + 1e-6, rtol=0)


def test_python_arithmetic_operators_dequantize_as_torch_functions():
    g = torch.Generator().manual_seed(5)
    a = torchquant.quantize_per_tensor(torch.randn(3, 4, generator=g), 0.05, 128, torch.quint8)
    b = torchquant.quantize_per_tensor(torch.randn(3, 4, generator=g), 0.03, 120, torch.quint8)
    t = torch.randn(3, 4, generator=g)
    fa, fb = a.dequantize(), b.dequantize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "<op> has no int8 implementation", once per op
        cases = [(a + b, fa + fb), (a + 1.5, fa + 1.5), (2.0 + a, 2.0 + fa), (t + a, t + fa), (a - b, fa - fb),
                 (1.0 - a, 1.0 - fa), (a * b, fa * fb), (t * a, t * fa), (3 * a, 3 * fa), (a / 2, fa / 2),
                 (1 / (a + 10), 1 / (fa + 10)), (-a, -fa), (a @ b.t(), fa @ fb.t()), (t @ a.t(), t @ fa.t())]
        c = a
        c += b  # no __iadd__: rebinds c to the float sum, a stays as it was
    cases.append((c, fa + fb))
    for got, want in cases:
        assert type(got) is torch.Tensor and torch.equal(got, want)
    assert isinstance(a, QTensor) and torch.equal(a.dequantize(), fa)


def test_tensor_methods_without_an_int8_meaning_run_on_the_dequantized_tensor():
    g = torch.Generator().manual_seed(6)
    q = torchquant.quantize_per_tensor(torch.randn(2, 3, generator=g), 0.05, 128, torch.quint8)
    f = q.dequantize()
    with pytest.warns(UserWarning, match="new_zeros has no int8 implementation"):
        z = q.new_zeros((4, 5))
    assert z.shape == (4, 5) and z.dtype == torch.float32 and not bool(z.any())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(q.masked_fill(f > 0, 1.0), f.masked_fill(f > 0, 1.0))
        assert torch.equal(q.softmax(-1), f.softmax(-1))
    assert q.requires_grad is False and q.layout == torch.strided
    with pytest.raises(AttributeError, match="no attribute 'not_a_tensor_method'"):
        q.not_a_tensor_method
    with pytest.raises(AttributeError, match="no attribute '_private'"):
        q._private


@pytest.mark.parametrize("fn", [F.hardsigmoid, torch.sigmoid])
def test_fixed_output_functions_are_a_table_lookup_that_follows_the_qparams(fn):
    # sigmoid / hardsigmoid on a QTensor: one lookup per element in a table built per input
    # qparams tensors, equal to the float function quantized to torch.ao's fixed 1/256 qparams,
    # and rebuilt when those tensors change in place
    gen = torch.Generator().manual_seed(3)
    q, _ = _pair((2, 4, 9, 11), torch.uint8, 100, gen)

    def want(x):
        y = fn(x.dequantize())
        return torch.clamp(torch.round(y * 256), 0, 255).to(torch.uint8)

    assert torch.equal(fn(q).data, want(q)) and torch.equal(fn(q).data, want(q))
    with torch.no_grad():
        q.scale.mul_(3.0)
    assert torch.equal(fn(q).data, want(q))
    with torch.inference_mode():
        qi = QTensor._make(q.data, q.scale.clone(), q.zero_point.clone(), None, 0, 255)
        assert torch.equal(fn(qi).data, want(q))


def test_fixed_output_tables_die_with_their_qparams():
    import gc
    import weakref

    from torchquant import _qfunctions

    gen = torch.Generator().manual_seed(4)
    refs = []
    for _ in range(5):
        q, _ = _pair((2, 4, 3, 3), torch.uint8, 7, gen)
        torch.sigmoid(q)
        refs.append(weakref.ref(q.scale))
        del q
    gc.collect()
    assert all(r() is None for r in refs)
    assert not any(r() is not None and r() in _qfunctions._FIXED_TABLES for r in refs)


def _ties_input(dtype):
    # Values on half-code ties and past the range on both sides, in a non-trivial shape.
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(3)) * 4
    x[0, 0, 0, :4] = torch.tensor([0.025, -0.075, 1e4, -1e4])
    return torchquant.quantize_per_tensor(x, 0.05, 3 if dtype == torch.qint8 else 60, dtype)


EXACT_IN_PLACE = [
    ("F.relu(inplace=True)", lambda q: F.relu(q, inplace=True), lambda q: F.relu(q)),
    ("F.relu(q, True)", lambda q: F.relu(q, True), lambda q: F.relu(q)),
    ("torch.relu_", torch.relu_, lambda q: F.relu(q)),
    ("F.relu_", F.relu_, lambda q: F.relu(q)),
    ("q.relu_()", lambda q: q.relu_(), lambda q: F.relu(q)),
    ("F.relu6(inplace=True)", lambda q: F.relu6(q, inplace=True), F.relu6),
    ("F.hardtanh(inplace=True)", lambda q: F.hardtanh(q, -1.0, 2.0, inplace=True), lambda q: F.hardtanh(q, -1.0, 2.0)),
    ("F.hardtanh_", lambda q: F.hardtanh_(q, -1.0, 2.0), lambda q: F.hardtanh(q, -1.0, 2.0)),
    ("q.clamp_", lambda q: q.clamp_(-1.0, 2.0), lambda q: torch.clamp(q, -1.0, 2.0)),
    ("torch.clamp_", lambda q: torch.clamp_(q, -1.0, 2.0), lambda q: torch.clamp(q, -1.0, 2.0)),
    ("q.clip_", lambda q: q.clip_(max=2.0), lambda q: torch.clamp(q, None, 2.0)),
    ("F.leaky_relu(inplace=True)", lambda q: F.leaky_relu(q, 0.1, True), lambda q: F.leaky_relu(q, 0.1)),
    ("nn ReLU(inplace=True)", torchquant.nn.quantized.ReLU(inplace=True), F.relu),
    ("nn ReLU6(inplace=True)", torchquant.nn.quantized.ReLU6(inplace=True), F.relu6),
]


@pytest.mark.parametrize("dtype", [torch.qint8, torch.quint8])
@pytest.mark.parametrize("name,inplace,outofplace", EXACT_IN_PLACE, ids=[c[0] for c in EXACT_IN_PLACE])
def test_in_place_functions_change_the_codes_of_the_qtensor_and_its_views(name, inplace, outofplace, dtype):
    torch.manual_seed(0)
    q = _ties_input(dtype)
    expected = outofplace(_ties_input(dtype))
    assert not torch.equal(expected.data, q.data)  # the function changes something
    scale, zero_point, data = q.scale, q.zero_point, q.data
    view = q.transpose(1, 3)  # a view made before the call sees the change, as for a float tensor
    out = inplace(q)
    assert out is q and q.data is data and q.scale is scale and q.zero_point is zero_point
    assert torch.equal(q.data, expected.data)
    assert torch.equal(view.data, expected.data.transpose(1, 3))
    # On a non-contiguous QTensor: the base's codes change.
    base = _ties_input(dtype)
    out = inplace(base.transpose(1, 3))
    assert torch.equal(base.data, expected.data) and out.data.data_ptr() == base.data.data_ptr()


def test_in_place_relu_on_a_per_channel_qtensor():
    x = torch.randn(2, 4, 3) * 3
    scale, zp = torch.rand(4) * 0.1 + 0.01, torch.tensor([0, 3, -5, 9], dtype=torch.int32)
    q = torchquant.quantize_per_channel(x, scale, zp, 1, torch.qint8)
    expected = F.relu(torchquant.quantize_per_channel(x, scale, zp, 1, torch.qint8))
    assert F.relu(q, inplace=True) is q and torch.equal(q.data, expected.data)
    assert torch.equal(q.data, torch.maximum(expected.data, zp.view(1, 4, 1).to(torch.int8)))


@pytest.mark.parametrize("name,call,fn", [
    ("add_", lambda q: q.add_(1.0), lambda x: x + 1.0),
    ("mul_", lambda q: q.mul_(4.0), lambda x: x * 4.0),  # saturates: the qparams stay
    ("F.silu(inplace=True)", lambda q: F.silu(q, inplace=True), F.silu),
    ("F.silu(q, True)", lambda q: F.silu(q, True), F.silu),
    ("F.hardsigmoid(inplace=True)", lambda q: F.hardsigmoid(q, inplace=True), F.hardsigmoid),
    ("sigmoid_", lambda q: q.sigmoid_(), torch.sigmoid),
    ("fill_", lambda q: q.fill_(0.5), lambda x: torch.full_like(x, 0.5)),
])
def test_other_in_place_functions_requantize_into_the_qtensor_with_its_own_qparams(name, call, fn, monkeypatch):
    import torchquant.qtensor as qtensor_module
    monkeypatch.setattr(qtensor_module, "_WARNED_IN_PLACE", set())  # each case warns (once per function)
    q = _ties_input(torch.qint8)
    original = q.dequantize()
    data = q.data
    with pytest.warns(UserWarning, match="in place on a QTensor"):
        out = call(q)
    assert out is q and q.data is data
    expected = torch.ops.torchquant.quantize(fn(original), q.scale, q.zero_point, None, -128, 127, torch.int8)
    assert torch.equal(q.data, expected)


def test_in_place_shape_changes_are_refused_and_leave_the_qtensor_as_it_was():
    q = _ties_input(torch.qint8)
    before = q.data.clone()
    for call in (lambda: q.unsqueeze_(0), lambda: q.transpose_(0, 1)):
        with pytest.raises(RuntimeError, match="changes the (shape|layout) of a QTensor in place"):
            call()
        assert torch.equal(q.data, before) and q.shape == before.shape


def test_converted_model_keeps_the_in_place_effect_of_an_inplace_relu():
    # The float model reads the conv's output again after an inplace ReLU changed it: the
    # converted model does the same (before, its int8 ReLU wrote a new tensor and the model's
    # first output was the conv's output unrectified).
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = torchquant.QuantStub(), torchquant.DeQuantStub()
            self.conv = nn.Conv2d(3, 4, 3)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.conv(self.quant(x))
            z = self.relu(y)
            return self.dequant(y), self.dequant(z)

    torch.manual_seed(0)
    m = M().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref_y, ref_z = m(x)
    assert torch.equal(ref_y, ref_z)  # y was rectified in place
    m.qconfig = torchquant.get_default_qconfig("x86")
    p = torchquant.prepare(m)
    p(x)
    q = torchquant.convert(p)
    y, z = q(x)
    assert torch.equal(y, z) and (y >= 0).all()
    assert torch.allclose(y, ref_y, atol=0.05 * float(ref_y.abs().max()))
    q.relu.inplace = False  # what the int8 ReLU did before: a new tensor, y stays unrectified
    y, z = q(x)
    assert (y < 0).any() and torch.equal(F.relu(y), z)


def test_in_place_functions_trace_with_torch_compile():
    relu = torchquant.nn.quantized.ReLU(inplace=True)

    def run(d, s, z):
        q = QTensor(d, s, z)
        y = relu(q)
        F.hardtanh(q, -1.0, 1.0, inplace=True)
        return q.data, y.data

    d = torch.randint(-128, 128, (4, 5), dtype=torch.int8)
    s, z = torch.tensor([0.05]), torch.tensor([3], dtype=torch.int32)
    eager = run(d.clone(), s, z)
    d2 = d.clone()
    compiled = torch.compile(run, fullgraph=True)(d2, s, z)
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])
    assert torch.equal(d2, eager[0])  # the input's codes changed in place under compile too
    assert not torch.equal(d, eager[0])


def test_elementwise_max_min_of_a_qtensor_and_a_tensor_run_in_float():
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(4))
    q = torchquant.quantize_per_tensor(x, 0.05, 10, torch.quint8)
    zeros = torch.zeros(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in (torch.max, torch.min):
            for got in (fn(q, zeros), fn(zeros, q), fn(q, other=zeros), getattr(q, fn.__name__)(zeros)):
                assert isinstance(got, torch.Tensor) and torch.equal(got, fn(q.dequantize(), zeros))
            assert torch.equal(fn(q, q), q.dequantize())
    # the reductions keep the qparams
    assert isinstance(torch.max(q), QTensor) and float(torch.max(q).dequantize()) == float(q.dequantize().max())
    values, indices = torch.max(q, 1)
    assert torch.equal(values.dequantize(), q.dequantize().max(1).values) and torch.equal(indices, q.data.max(1).indices)


def test_cat_traced_equals_eager_for_equal_and_different_qparams():
    q1 = torchquant.quantize_per_tensor(torch.randn(2, 3), 0.05, 3, torch.quint8)
    q2 = torchquant.quantize_per_tensor(torch.randn(2, 3), 0.05, 3, torch.quint8)  # equal values, other tensors
    q3 = torchquant.quantize_per_tensor(torch.randn(2, 3), 0.07, 9, torch.quint8)

    def f(a, b):
        return torch.cat([a, b], 1)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    for a, b in ((q1, q2), (q1, q3)):
        e, c = f(a, b), compiled(a, b)
        assert torch.equal(e.data, c.data) and torch.equal(e.scale, c.scale) and torch.equal(e.zero_point, c.zero_point)


def test_export_takes_a_qtensor_input():
    class M(nn.Module):
        def forward(self, q):
            return F.relu(q).dequantize()

    q = torchquant.quantize_per_tensor(torch.randn(4), 0.05, 3, torch.quint8)
    ep = torch.export.export(M(), (q,))
    assert torch.equal(ep.module()(q), M()(q))


def test_quantize_functions_copy_the_qparams_they_are_given():
    x, s, z = torch.tensor([1.0, -2.0]), torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32)
    q = torchquant.quantize_per_tensor(x, s, z, torch.qint8)
    s.mul_(10)
    z.add_(5)
    assert torch.equal(q.dequantize(), torch.tensor([1.0, -2.0]))
    scales, zps = torch.tensor([0.1, 0.2]), torch.zeros(2, dtype=torch.int32)
    q = torchquant.quantize_per_channel(torch.randn(2, 3), scales, zps, 0, torch.qint8)
    before = q.dequantize()
    scales.mul_(2)
    assert torch.equal(q.dequantize(), before)
    with pytest.raises(ValueError, match=r"'scales' must be 1-D .* got shape \(1, 2\)"):
        torchquant.quantize_per_channel(torch.randn(2, 3), scales.reshape(1, 2), zps, 0, torch.qint8)


def test_python_comparisons_truth_and_numbers_use_the_values():
    a = torchquant.quantize_per_tensor(torch.tensor([1.0, 0.0]), 0.1, 0, torch.qint8)
    b = torchquant.quantize_per_tensor(torch.tensor([1.0, 0.0]), 0.1, 0, torch.qint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(a == b, torch.tensor([True, True])) and torch.equal(a != b, torch.tensor([False, False]))
        assert torch.equal(a > 0, torch.tensor([True, False])) and torch.equal(a <= 0, torch.tensor([False, True]))
        assert 1.0 in a and (a == None) is False  # noqa: E711
    one = torchquant.quantize_per_tensor(torch.tensor([0.0]), 0.1, 0, torch.qint8)
    assert bool(one) is False and float(torchquant.quantize_per_tensor(torch.tensor(1.0), 0.1, 0, torch.qint8)) == 1.0
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(a)
    assert hash(a) != hash(b) and {a: 1}[a] == 1


def test_cat_ignores_the_qparams_of_empty_inputs():
    q1 = torchquant.quantize_per_tensor(torch.tensor([0.01, 0.02, 0.03, 0.04]), 0.01, 0, torch.qint8)
    empty = torchquant.quantize_per_tensor(torch.empty(0), 1.0, 0, torch.qint8)
    for parts in ([q1, empty], [empty, q1]):
        r = torch.cat(parts)
        assert torch.equal(r.data, q1.data) and r.q_scale() == q1.q_scale()


def test_qtensor_layout_queries_describe_the_codes():
    c = torchquant.quantize_per_tensor(torch.randn(1, 3, 4, 4), 0.1, 0, torch.quint8).contiguous(
        memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no float fallback (and no warning) for these
        assert c.is_contiguous(memory_format=torch.channels_last) and c.stride() == c.data.stride()
        assert not c.is_floating_point() and c.element_size() == 1 and c.nbytes == 48
        assert c[0, 1].storage_offset() == c.data[0, 1].storage_offset() and c.nelement() == 48
        q = torchquant.quantize_per_tensor(torch.randn(2, 3), 0.1, 0, torch.qint8)
        assert q[:, :1].expand_as(q).shape == (2, 3) and q.view_as(torch.zeros(3, 2)).shape == (3, 2)
        x = torchquant.quantize_per_tensor(torch.randn(5), 0.1, 0, torch.qint8)
        assert F.elu_(x) is x and F.leaky_relu_(x, 0.1) is x
    with pytest.raises(TypeError, match="QTensor.view takes a shape, got dtype torch.uint8"):
        q.view(torch.uint8)
    assert q.to(torch.zeros(1)).data.dtype == torch.int8  # the other tensor's device, not its dtype


def test_qtensor_argument_handling_edge_cases():
    q = torchquant.quantize_per_tensor(torch.randn(2, 3), 0.1, 0, torch.qint8)
    assert torch.equal(torch.relu(input=q).data, torch.relu(q).data)
    assert torch.transpose(input=q, dim0=0, dim1=1).shape == (3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = torch.clamp(torch.randn(4), min=torchquant.quantize_per_tensor(torch.zeros(4), 0.1, 0, torch.qint8))
    assert out.dtype == torch.float32 and (out >= 0).all()
    pc = QTensor(torch.full((2, 3), -5, dtype=torch.int8), torch.tensor([.1, .2, .3]), torch.zeros(3, dtype=torch.int32),
                 axis=-1)
    assert pc.axis == 1 and pc.q_per_channel_axis() == 1 and torch.equal(torch.relu(pc).data, torch.zeros(2, 3,
                                                                                                         dtype=torch.int8))
    square = torchquant.quantize_per_channel(torch.tensor([[0.5, 0.2], [100.0, 50.0]]), torch.tensor([0.01, 1.0]),
                                             torch.tensor([0, 0], dtype=torch.int32), 0, torch.qint8)
    with pytest.raises(RuntimeError, match="t_ changes the layout of a QTensor in place"):
        square.t_()
    assert square.clone().axis == 0 and torch.equal(square.clone().data, square.data)
    q[0] = 0.3
    q[1, 1:] = torch.tensor([1.0, -1.0])
    assert q.dequantize()[0].tolist() == pytest.approx([0.3] * 3) and q.dequantize()[1, 1:].tolist() == [1.0, -1.0]


@pytest.mark.parametrize("op", ["pad", "pad_value", "hardtanh", "relu6", "clamp"])
def test_functions_with_number_bounds_trace_under_compile_and_export(op):
    # They quantized their number (the pad value, the bounds) on the host: torch.compile's
    # fullgraph mode refused the constant pad ("data-dependent expression") and torch.export
    # refused all of them.
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = torchquant.QuantStub(), torchquant.DeQuantStub()
            self.c1, self.c2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
            self.ht = nn.Hardtanh(-0.5, 0.5)

        def forward(self, x):
            y = self.c1(self.quant(x))
            if op == "pad":
                y = F.pad(y, [1, 1, 1, 1])
            elif op == "pad_value":
                y = F.pad(y, [1, 2, 0, 1], value=0.3)
            elif op == "hardtanh":
                y = self.ht(y)
            elif op == "relu6":
                y = F.relu6(y)
            else:
                y = torch.clamp(y, -0.2, 0.4)
            return self.dequant(self.c2(y))

    torch.manual_seed(0)
    m = Net().eval()
    m.qconfig = torchquant.get_default_qconfig("x86")
    p = torchquant.prepare(m)
    p(torch.randn(2, 3, 12, 12))
    q = torchquant.convert(p)
    x = torch.randn(2, 3, 12, 12)
    want = q(x)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(q, fullgraph=True, backend="eager")(x), want)
    assert torch.equal(torch.export.export(q, (x,)).module()(x), want)


def test_constant_pad_codes_match_the_quantized_float_pad():
    q = torchquant.quantize_per_tensor(torch.randn(1, 2, 3, 3), 0.05, 128, torch.quint8)
    for value in (None, 0.3, -0.07, 100.0, -100.0):
        got = F.pad(q, [1, 1, 2, 0], value=value)
        want = torchquant.quantize_per_tensor(F.pad(q.dequantize(), [1, 1, 2, 0], value=value or 0.0), 0.05, 128,
                                      torch.quint8)
        assert torch.equal(got.int_repr(), want.int_repr()), value


def test_bicubic_interpolate_returns_float_not_saturated_codes():
    # Bicubic overshoots the input's range: requantized with the input's qparams it would
    # saturate silently. It runs in float and returns float (one warning), bilinear stays int8.
    q = torchquant.quantize_per_tensor(torch.rand(1, 2, 8, 8) * 2 - 1, 0.05, 128, torch.quint8)
    from torchquant.qtensor import _WARNED

    _WARNED.discard("interpolate(mode='bicubic')")  # warned once per process
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y = F.interpolate(q, scale_factor=2, mode="bicubic")
    assert type(y) is torch.Tensor
    assert torch.equal(y, F.interpolate(q.dequantize(), scale_factor=2, mode="bicubic"))
    assert any("interpolate(mode='bicubic') has no int8 implementation" in str(w.message) for w in rec)
    assert isinstance(F.interpolate(q, scale_factor=2, mode="bilinear"), QTensor)


def test_out_of_range_dims_raise_torchs_index_error():
    # stack wrapped a negative dim past -(n + 1) onto another dim; mean's global-pool path
    # wrapped dims modulo the rank onto the spatial ones
    q = torchquant.quantize_per_tensor(torch.randn(2, 3), 0.02, 0, torch.qint8)
    for dim in (-4, -5, 3):
        with pytest.raises(IndexError, match=re.escape(f"range of [-3, 2], but got {dim})")):
            torch.stack([q, q], dim)
    assert torch.stack([q, q], -3).shape == (2, 2, 3)
    q3 = torchquant.quantize_per_tensor(torch.randn(2, 3, 4), 0.02, 0, torch.qint8)
    q4 = torchquant.quantize_per_tensor(torch.randn(2, 3, 4, 5), 0.02, 0, torch.qint8)
    for t, dims, bad in ((q4, (2, 7), 7), (q4, (6, 7), 6), (q4, (-5, 2), -5), (q3, 5, 5)):
        with pytest.raises(IndexError, match=re.escape(f"range of [{-t.dim()}, {t.dim() - 1}], but got {bad})")):
            t.mean(dims)
    with pytest.raises(RuntimeError, match="dim 2 appears multiple times"):
        q4.mean((2, -2))
    assert q4.mean((-2, -1)).shape == (2, 3)


def test_out_argument_holding_a_qtensor_is_refused():
    q = torchquant.quantize_per_tensor(torch.zeros(2, 3), 0.02, 0, torch.qint8)
    before = q.data.clone()
    with pytest.raises(TypeError, match="add: argument 'out' is .* a QTensor"):
        torch.add(torch.randn(2, 3), 0.5, out=q)
    with pytest.raises(TypeError, match="argument 'out' is .* a QTensor"):
        torch.mul(q, 2.0, out=q)
    with pytest.raises(TypeError, match="argument 'out' is .* a QTensor"):
        torch.max(q, 1, out=(q, torch.empty(2, dtype=torch.long)))
    assert torch.equal(q.data, before)


def _covering_qparams(q, fn):
    x = (torch.tensor([q.qmin, 0, q.qmax], dtype=torch.float32) - q.zero_point.float()) * q.scale
    x[1] = 0.0
    y = fn(x)
    return torchquant.choose_qparams(y.min().reshape(1), y.max().reshape(1), q.qmin, q.qmax)


@pytest.mark.parametrize("name,fn", [
    ("elu_alpha_2", lambda t: F.elu(t, alpha=2.0)),
    ("leaky_relu_negative_slope", lambda t: F.leaky_relu(t, -10.0)),
    ("leaky_relu_steep_slope", lambda t: F.leaky_relu(t, 3.0)),
    ("clamp_above_the_range", lambda t: torch.clamp(t, min=5.0)),
    ("clamp_below_the_range", lambda t: t.clamp(max=-3.0)),
    ("hardtanh_above_the_range", lambda t: F.hardtanh(t, 6.0, 7.0)),
])
def test_functions_mapping_values_outside_the_input_range_get_qparams_covering_them(name, fn):
    # They kept the input's qparams and saturated silently (elu's -0.78 came back as -0.49)
    x = torch.tensor([-0.5, -0.25, 0.0, 1.0, 4.0])
    q = torchquant.quantize_per_tensor(x, *torchquant.choose_qparams(x.min().reshape(1), x.max().reshape(1), -128,
                                                                     127), torch.qint8)
    got = fn(q)
    scale, zero_point = _covering_qparams(q, fn)
    assert torch.equal(got.scale, scale) and torch.equal(got.zero_point, zero_point) and got.dtype == torch.qint8
    torch.testing.assert_close(got.dequantize(), fn(q.dequantize()), atol=got.q_scale() / 2 + 1e-6, rtol=0)


def test_functions_inside_the_input_range_keep_its_qparams():
    q = torchquant.quantize_per_tensor(torch.tensor([-1.0, -0.3, 0.0, 4.0]), 0.02, -78, torch.qint8)
    for fn in (F.elu, lambda t: F.leaky_relu(t, 0.1), F.relu6, lambda t: F.hardtanh(t, -0.5, 0.5),
               lambda t: t.clamp(-0.2, 3.0)):
        assert fn(q).scale is q.scale
    # a slope of -0.5 maps [-1.0, 4.0] into itself: the same qparams, the same codes
    got = F.leaky_relu(q, -0.5)
    assert torch.equal(got.scale, q.scale) and torch.equal(got.zero_point, q.zero_point)
    assert torch.equal(got.data, torchquant.quantize_per_tensor(F.leaky_relu(q.dequantize(), -0.5), 0.02, -78,
                                                                torch.qint8).data)
    with pytest.raises(ValueError, match="min_val cannot be greater than max_val"):
        F.hardtanh(q, 1.0, 0.0)


def test_qtensor_iterates_as_a_tensor():
    q = torchquant.quantize_per_tensor(torch.randn(3, 2), 0.02, 0, torch.qint8)
    rows = list(q)
    assert len(rows) == 3 and all(isinstance(r, QTensor) and torch.equal(r.data, q.data[i]) for i, r in enumerate(rows))
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        list(q.max())
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        (v,) = q[0, 0]


def test_qtensor_to_takes_torchs_forms_of_arguments():
    q = torchquant.quantize_per_tensor(torch.randn(1, 3, 4, 4), 0.02, 0, torch.qint8)
    for args, kwargs in ((("cpu", torch.float16), {}), ((torch.device("cpu"), torch.float32), {}),
                         ((), {"dtype": torch.float32}), ((torch.float32,), {"copy": True})):
        with pytest.raises(TypeError, match=r"argument 'dtype'.*dequantize\(torch.float"):
            q.to(*args, **kwargs)
    with pytest.raises(TypeError, match=r"QTensor.to\(\) received an invalid combination"):
        q.to("cpu", memory_format=torch.channels_last, bad=1)
    assert q.to(q.device, q.dtype).dtype == torch.qint8 and q.to(torch.qint8).data is q.data
    assert q.to("cpu", copy=True).data is not q.data and q.to(q, copy=True).data is not q.data
    cl = q.to(memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl.data, q.data)


def test_qtensor_python_protocols_see_the_values():
    q = torchquant.quantize_per_tensor(torch.randn(2, 3), 0.02, 3, torch.qint8)
    d = q.dequantize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float fallback's warning, once per function
        cases = [(abs(q), abs(d)), (q ** 2, d ** 2), (2 ** q, 2 ** d), (q // 0.5, d // 0.5), (q % 0.5, d % 0.5),
                 (3 // (q + 5), 3 // (d + 5)), (3 % (q + 5), 3 % (d + 5)), (+q, +d)]
    for got, want in cases:
        assert type(got) is torch.Tensor and torch.equal(got, want)
    assert f"{q.max():.3f}" == f"{d.max():.3f}" and f"{q[0, 1]}" == f"{d[0, 1]}"
    with pytest.raises(TypeError, match="unsupported format string"):
        f"{q:.3f}"
    assert (np.asarray(q) == d.numpy()).all() and np.asarray(q, dtype=np.float64).dtype == np.float64
    for fn in (torch.tensor, torch.as_tensor):
        assert torch.equal(fn(q), d)
    assert torch.equal(torch.cat([q, q], axis=1).data, torch.cat([q.data, q.data], 1))
    assert torch.equal(torch.stack([q, q], axis=-1).data, torch.stack([q.data, q.data], -1))


def test_in_place_clamp_keeps_the_qparams_without_the_float_path():
    q = torchquant.quantize_per_tensor(torch.linspace(-1, 1, 16), 0.01, 0, torch.qint8)
    want = torch.clamp(q.dequantize(), min=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = q.clamp_(min=0.1)
        assert r is q and torch.allclose(q.dequantize(), want, atol=0.005)
        p = torchquant.quantize_per_tensor(torch.linspace(-1, 1, 16), 0.01, 0, torch.qint8)
        F.hardtanh(p, 0.1, 0.5, inplace=True)
        assert torch.allclose(p.dequantize(), want.clamp(max=0.5), atol=0.005)


def test_to_the_other_8bit_dtype_keeps_the_values():
    # Hugging Face's ViT and CLIP cast their input to the patch conv's weight dtype (qint8 after
    # convert): QTensor.to(torch.qint8) of a quint8 QTensor raised.
    torch.manual_seed(0)

    class Patches(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 4, stride=4)

        def forward(self, x):
            return self.conv(x.to(self.conv.weight.dtype))

    m = nn.Sequential(torchquant.QuantStub(), Patches(), torchquant.DeQuantStub()).eval()
    m.qconfig = torchquant.get_default_qconfig("x86")
    p = torchquant.prepare(m)
    p(torch.randn(2, 3, 16, 16))
    q = torchquant.convert(p)
    x = torch.randn(2, 3, 16, 16)
    qx = q[0](x)
    s = qx.to(torch.qint8)
    assert s.dtype == torch.qint8 and torch.equal(s.dequantize(), qx.dequantize())
    assert torch.equal(s.to(torch.quint8).data, qx.data) and torch.equal(qx.to(torch.quint8).data, qx.data)
    assert torch.equal(q[1].conv(s).data, q[1].conv(qx).data)
    assert torch.equal(q(x), q[2](q[1].conv(qx)))
    with pytest.raises(TypeError, match=r"argument 'dtype'"):
        qx.to(torch.float16)


@pytest.mark.parametrize("fn, shape", [(F.dropout, (2, 3, 4, 4)), (F.dropout1d, (2, 3, 4)), (F.dropout2d, (2, 3, 4, 4)),
                                       (F.dropout3d, (2, 3, 2, 4, 4)), (F.alpha_dropout, (2, 3, 4, 4)),
                                       (F.feature_alpha_dropout, (2, 3, 4, 4))])
def test_dropout_functions_in_inference_return_the_qtensor(fn, shape):
    # F.dropout2d & co. with training=False returned the dequantized float tensor (with the float
    # fallback's warning); like F.dropout they are the identity on a QTensor in inference
    q = torchquant.quantize_per_tensor(torch.randn(shape), 0.05, 128, torch.quint8)
    codes = q.data.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fn(q, 0.5, False) is q
        assert fn(q, p=0.2, training=False) is q
        assert fn(q, 0.5, False, True) is q  # in place: nothing to change
    assert torch.equal(q.data, codes)
    # training mode stays what F.dropout on a QTensor does: refused
    with pytest.raises(RuntimeError, match="training mode"):
        fn(q, 0.5, True)
    if fn is F.dropout1d:  # the float function's check of the input's dimensions, whatever the mode
        q4 = torchquant.quantize_per_tensor(torch.randn(2, 3, 4, 4), 0.05, 128, torch.quint8)
        with pytest.raises(RuntimeError, match="Expected 2D or 3D input"):
            fn(q4, 0.5, False)


def test_requires_grad_on_a_qtensor_is_refused_as_on_torchs_quantized_tensors():
    # q.requires_grad_() went through the in-place write-back path: it did nothing (requires_grad
    # stayed False) and warned that it had requantized values; int8 codes cannot require
    # gradients, and torch's quantized tensors refuse it
    q = torchquant.quantize_per_tensor(torch.randn(2, 3), 0.03, 3, torch.qint8)
    codes = q.data.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: nothing runs in float
        for call in (lambda: q.requires_grad_(), lambda: q.requires_grad_(True),
                     lambda: setattr(q, "requires_grad", True)):
            with pytest.raises(RuntimeError, match="only Tensors of floating point .*can require gradients"):
                call()
        assert q.requires_grad_(False) is q and q.requires_grad_(requires_grad=False) is q
        q.requires_grad = False
        assert q.detach_() is q and q.share_memory_() is q
        # the function forms, as __torch_function__ sees them
        assert QTensor.__torch_function__(torch.Tensor.requires_grad_, (QTensor,), (q, False)) is q
        assert QTensor.__torch_function__(torch.Tensor.detach_, (QTensor,), (q,)) is q
        with pytest.raises(RuntimeError, match="can require gradients"):
            QTensor.__torch_function__(torch.Tensor.requires_grad_, (QTensor,), (q,))
    assert q.requires_grad is False and torch.equal(q.data, codes)
    assert q.dequantize().requires_grad_().requires_grad  # what the message points to


def test_mean_reshape_and_view_take_torchs_keyword_forms():
    # torch.mean(q, axis=1), q.mean(axis=1) and q.reshape(shape=...) were TypeErrors naming
    # internal functions (_mean(), <lambda>()); torch takes them
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(11))
    q = torchquant.quantize_per_tensor(x, 0.03, 3, torch.quint8)
    want = q.mean(1)
    for got in (torch.mean(q, axis=1), q.mean(axis=1), q.mean(dim=1), torch.mean(input=q, axis=1)):
        assert isinstance(got, QTensor) and torch.equal(got.data, want.data)
    assert torch.equal(q.mean(axis=(0, 2), keepdim=True).data, q.mean((0, 2), True).data)
    q4 = torchquant.quantize_per_tensor(torch.randn(2, 3, 4, 5), 0.03, 3, torch.quint8)
    assert torch.equal(torch.mean(q4, axis=(2, 3)).data, q4.mean((2, 3)).data)  # the global-pool path
    assert torch.equal(q.mean().data, torch.mean(q).data)
    for call in (lambda: q.mean(1, dtype=torch.float32), lambda: torch.mean(q, 1, dtype=torch.float32)):
        with pytest.raises(TypeError, match=r"mean of a QTensor takes no dtype .*dequantize\(\)"):
            call()
    with pytest.raises(TypeError, match="got both argument 'dim' and its alias 'axis'"):
        q.mean(1, axis=1)
    assert torch.equal(q.reshape(shape=(6, 4)).data, q.data.reshape(6, 4))
    assert torch.equal(q.view(size=(4, 6)).data, q.data.view(4, 6))
    assert q.reshape((6, -1)).shape == q.view(-1, 4).shape == (6, 4)
    with pytest.raises(TypeError, match="QTensor.view takes a shape, got dtype torch.uint8"):
        q.view(dtype=torch.uint8)


def test_to_an_integer_dtype_points_to_int_repr():
    # the message said "use .dequantize(torch.int8) for a floating-point tensor", which raises
    q = torchquant.quantize_per_tensor(torch.randn(4), 0.03, 3, torch.qint8)
    for dtype in (torch.int8, torch.uint8, torch.int32):
        with pytest.raises(TypeError, match=r"argument 'dtype'.*\.int_repr\(\) for the integer codes") as e:
            q.to(dtype)
        assert f".dequantize({dtype})" not in str(e.value)
    with pytest.raises(TypeError, match=re.escape(".dequantize(torch.float16) for a floating-point tensor")):
        q.to(torch.float16)


def test_type_reports_torchs_quantized_tensor_type():
    # q.type() ran in float on the dequantized tensor: 'torch.FloatTensor', with a warning
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(12))
    names = {torch.qint8: "torch.quantized.QInt8Tensor", torch.quint8: "torch.quantized.QUInt8Tensor"}
    for dtype, zp in ((torch.qint8, 3), (torch.quint8, 128)):
        scales, zps = torch.tensor([0.02, 0.03, 0.04]), torch.tensor([zp] * 3)
        q = torchquant.quantize_per_tensor(x, 0.03, zp, dtype)
        qc = torchquant.quantize_per_channel(x, scales, zps, 1, dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's quantized tensors are deprecated
            t = torch.quantize_per_tensor(x, 0.03, zp, dtype)
            tc = torch.quantize_per_channel(x, scales, zps, 1, dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no float fallback
            assert q.type() == t.type() == names[dtype] and qc.type() == tc.type() == names[dtype]
            # with a dtype: as .to(dtype)
            assert q.type(dtype) is q and q.type(names[dtype]) is q
            other = torch.quint8 if dtype == torch.qint8 else torch.qint8
            assert q.type(other).dtype == other and torch.equal(q.type(other).dequantize(), q.dequantize())
        for arg in (torch.int8, torch.uint8, "torch.CharTensor"):
            with pytest.raises(TypeError, match=r"\.int_repr\(\) for the integer codes"):
                q.type(arg)
        for arg in (torch.float32, "torch.FloatTensor", torch.FloatTensor):
            with pytest.raises(TypeError, match=re.escape(".dequantize(torch.float32) for a floating-point tensor")):
                q.type(arg)
        with pytest.raises(ValueError, match="invalid type: 'torch.NotATensor'"):
            q.type("torch.NotATensor")


def test_type_takes_the_quantized_type_names_it_gives():
    q = torchquant.quantize_per_tensor(torch.randn(4), 0.1, 128, torch.quint8)
    assert q.type(q.type()) is q
    r = q.type("torch.quantized.QInt8Tensor")
    assert r.dtype == torch.qint8 and torch.equal(r.dequantize(), q.dequantize())
