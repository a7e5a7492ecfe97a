"""What decides between the typed entry points (torchquant._C) and torch.ops in the quantized
modules and the QTensor pooling functions: every tensor a call hands the op (the module's own
buffers included) and every other argument's type. Each case runs with the typed path enabled
and disabled (torchquant._fastcall.enabled, what TORCHQUANT_FASTCALL sets at import) and must
come out the same: same result, or same error type and message."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import torchquant
from torchquant import _fastcall
from torchquant import reference

np = pytest.importorskip("numpy")


class _Logged(torch.Tensor):
    """A tensor subclass whose __torch_function__ records the torchquant ops it sees."""

    seen = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if str(func).startswith("torchquant."):
            cls.seen.append(str(func))
        return super().__torch_function__(func, types, args, kwargs or {})


def _static(float_model, calib):
    float_model.eval().qconfig = torchquant.default_qconfig
    p = torchquant.prepare(float_model)
    p(calib)
    return torchquant.convert(p)


def _models():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        linear = _static(nn.Sequential(torchquant.QuantStub(), nn.Linear(8, 4), torchquant.DeQuantStub()),
                         torch.randn(16, 8))
        conv = _static(nn.Sequential(torchquant.QuantStub(), nn.Conv2d(3, 4, 3), torchquant.DeQuantStub()),
                       torch.randn(2, 3, 6, 6))
        dynamic = torchquant.quantize_dynamic(nn.Sequential(nn.Linear(8, 4)), {nn.Linear}, dtype=torch.qint8)
        lstm = torchquant.quantize_dynamic(nn.Sequential(nn.LSTM(8, 3)), {nn.LSTM}, dtype=torch.qint8)
        e = nn.EmbeddingBag(10, 4, mode="sum")
        e.qconfig = torchquant.float_qparams_weight_only_qconfig
        bag = torchquant.convert(torchquant.prepare(nn.Sequential(e)))[0]
    idx, off = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2])
    return {  # model, its inputs, the op it calls, the buffers that op takes
        "Linear": (linear, (torch.randn(2, 8),), "torchquant.linear_int8.default",
                   ["1._packed_weight", "1._col_sums", "1.weight_scale", "1.bias", "1.scale", "1.zero_point"]),
        "Conv2d": (conv, (torch.randn(1, 3, 6, 6),), "torchquant.conv_int8",
                   ["1._packed_weight", "1._col_sums", "1.weight_scale", "1.bias", "1.scale", "1.zero_point"]),
        "DynamicLinear": (dynamic, (torch.randn(2, 8),), "torchquant.linear_dynamic.default",
                          ["0._packed_weight", "0._col_sums", "0.weight_scale", "0.bias"]),
        "LSTM": (lstm, (torch.randn(2, 1, 8),), "torchquant.linear_dynamic.default",
                 ["0.ih_l0._packed_weight", "0.ih_l0._col_sums", "0.ih_l0.weight_scale", "0.ih_l0.bias"]),
        "EmbeddingBag": (bag, (idx, off), "torchquant.embedding_bag_rowwise.default", ["packed_weight"]),
    }


_MODELS = _models()
_CASES = [(name, buf) for name, (_, _, _, bufs) in _MODELS.items() for buf in bufs]


def _plain(y):
    y = y[0] if isinstance(y, tuple) else y
    return y.as_subclass(torch.Tensor)


@pytest.mark.parametrize("name,buffer", _CASES, ids=[f"{n}-{b}" for n, b in _CASES])
def test_subclass_buffer_reaches_its_torch_function_either_way(monkeypatch, name, buffer):
    """A module buffer replaced (torch.func.functional_call) by a tensor subclass with its own
    __torch_function__: the module's op reaches it through torch.ops, with the typed path
    enabled as with it disabled (the typed path checked only the input's tensors, skipped the
    subclass handler and returned a plain tensor), and the values are the module's own."""
    model, args, op, _ = _MODELS[name]
    want = _plain(model(*args))
    sub = {buffer: dict(model.named_buffers())[buffer].as_subclass(_Logged)}
    seen = {}
    for enabled in (False, True):
        monkeypatch.setattr(_fastcall, "enabled", enabled)
        _Logged.seen.clear()
        y = functional_call(model, sub, args)
        seen[enabled] = list(_Logged.seen)
        assert op in _Logged.seen, (enabled, _Logged.seen)
        assert torch.equal(_plain(y), want)
    assert seen[True] == seen[False]


@pytest.fixture
def typed_calls(monkeypatch):
    """Counts the typed calls (the typed path enabled)."""
    monkeypatch.setattr(_fastcall, "enabled", True)
    calls = []
    for op in ("linear_int8", "conv_int8", "linear_dynamic", "embedding_bag_rowwise", "adaptive_avg_pool_int8"):
        f = getattr(_fastcall, op)
        monkeypatch.setattr(_fastcall, op, lambda *a, _f=f, _op=op: calls.append(_op) or _f(*a))
    return calls


@pytest.mark.parametrize("name", list(_MODELS))
def test_plain_buffers_still_take_the_typed_path(typed_calls, name):
    """The checks of the buffers let plain ones through: a model as converted calls its op typed."""
    model, args, op, _ = _MODELS[name]
    model(*args)
    assert op.split(".")[1] in typed_calls, typed_calls


def test_usable_helpers_check_every_tensor_argument(monkeypatch):
    monkeypatch.setattr(_fastcall, "enabled", True)
    t = torch.ones(2)
    sub = t.as_subclass(_Logged)
    layer, dyn = _fastcall.usable_int8_layer, _fastcall.usable_dynamic
    assert layer(*[t] * 9) and dyn(*[t] * 5)
    assert layer(t, t, t, t, t, t, None, None, None) and dyn(t, t, t, t, None)  # optional: None is fine
    for i in range(9):
        args = [t] * 9
        args[i] = sub
        assert not layer(*args), i
        if i < 6:  # a required tensor given as None goes to torch.ops (its error names it)
            args[i] = None
            assert not layer(*args), i
    for i in range(5):
        args = [t] * 5
        args[i] = sub
        assert not dyn(*args), i
        if i < 4:
            args[i] = None
            assert not dyn(*args), i
    assert not layer(*[torch.nn.Parameter(t)] + [t] * 8)
    monkeypatch.setattr(_fastcall, "enabled", False)
    assert not layer(*[t] * 9) and not dyn(*[t] * 5)


def test_is_int64():
    for v in (0, 1, -1, 2 ** 63 - 1, -(2 ** 63)):
        assert _fastcall.is_int64(v), v
    for v in (True, 1.0, np.int64(1), 2 ** 63, -(2 ** 63) - 1, "1", None):
        assert not _fastcall.is_int64(v), v


def _outcome(f):
    try:
        y = f()
    except Exception as e:  # noqa: BLE001  (the error itself is what is compared)
        return type(e), str(e)
    y = y.int_repr() if isinstance(y, torchquant.QTensor) else y
    return y.dtype, tuple(y.shape), y.tolist()


def _both_ways(monkeypatch, f):
    """f's outcome with the typed path enabled, checked equal to its outcome with it disabled."""
    monkeypatch.setattr(_fastcall, "enabled", True)
    typed = _outcome(f)
    monkeypatch.setattr(_fastcall, "enabled", False)
    assert typed == _outcome(f)
    return typed


def _q(*shape):
    g = torch.Generator().manual_seed(3)
    return torchquant.quantize_per_tensor(torch.randn(*shape, generator=g), 0.05, 3, torch.quint8)


@pytest.mark.parametrize("output_size", [1.0, (1.0, 1.0), [1, 1.0], (1, 1.0), True, (True, True), [True, 1]],
                         ids=repr)
def test_adaptive_avg_pool2d_refuses_what_torch_refuses(monkeypatch, output_size):
    """A float output size (1.0 == 1) took the global-average shortcut with the typed path
    enabled and was refused without it; torch refuses it: a TypeError naming the argument."""
    q = _q(1, 2, 4, 4)
    with pytest.raises(TypeError):
        F.adaptive_avg_pool2d(torch.randn(1, 2, 4, 4), output_size)
    kind, msg = _both_ways(monkeypatch, lambda: F.adaptive_avg_pool2d(q, output_size))
    assert kind is TypeError and "'output_size'" in msg, msg


@pytest.mark.parametrize("output_size", [np.array([2, 2]), np.array([1, 1]), torch.tensor([1, 1]),
                                         torch.tensor([3, 2]), [np.int64(1), 1], (1, 1), [1, 1], 1, (2, None)],
                         ids=repr)
def test_adaptive_avg_pool2d_takes_array_like_sizes(monkeypatch, output_size):
    """An array as output_size (torch takes one): the shortcut's `in` compared it elementwise
    and raised that its truth value is ambiguous. The result is the plain-torch oracle's, of
    torch's shape."""
    q = _q(1, 2, 5, 4)
    shape = F.adaptive_avg_pool2d(q.dequantize(), output_size).shape
    size = [4 if o is None else int(o) for o in output_size] if not isinstance(output_size, int) else [1, 1]
    want = reference.adaptive_avg_pool_int8(q.int_repr(), q.zero_point, size)
    dtype, got_shape, got = _both_ways(monkeypatch, lambda: F.adaptive_avg_pool2d(q, output_size))
    assert got_shape == tuple(shape) == tuple(want.shape)
    assert got == want.tolist()


def _bag():
    return _MODELS["EmbeddingBag"][0]


@pytest.mark.parametrize("attr,value,names", [
    ("padding_idx", 2.0, "padding_idx"), ("padding_idx", 2 ** 64, "padding_idx"), ("padding_idx", "2", "padding_idx"),
    ("padding_idx", np.int64(2), None), ("padding_idx", 2, None),
    ("include_last_offset", "yes", "include_last_offset"), ("include_last_offset", 1, None),
    ("include_last_offset", np.bool_(True), None), ("include_last_offset", True, None),
    ("embedding_dim", 4.0, "embedding_dim"),
], ids=lambda v: repr(v) if not isinstance(v, str) else v)
def test_embedding_bag_odd_attributes_same_either_way(monkeypatch, attr, value, names):
    """An EmbeddingBag attribute of another type than the op takes: pybind11's TypeError
    ('incompatible function arguments', the binding's signature and the tensors' reprs) with
    the typed path, torch.ops's conversion or error naming the argument without it."""
    bag = _bag()
    monkeypatch.setattr(bag, attr, value)
    off = torch.tensor([0, 2, 4]) if attr == "include_last_offset" else torch.tensor([0, 2])
    out = _both_ways(monkeypatch, lambda: bag(torch.tensor([1, 2, 3, 4]), off))
    if names is not None:
        assert isinstance(out[0], type) and issubclass(out[0], Exception) and f"'{names}'" in out[1], out


def test_dynamic_and_conv_odd_attributes_same_either_way(monkeypatch):
    """The same for a DynamicLinear's reduce_range and a quantized Conv's groups."""
    dyn = _MODELS["DynamicLinear"][0]
    monkeypatch.setattr(dyn[0], "reduce_range", "yes")
    out = _both_ways(monkeypatch, lambda: dyn(torch.ones(2, 8)))
    assert out[0] is RuntimeError and "'reduce_range'" in out[1], out
    lstm = _MODELS["LSTM"][0]
    monkeypatch.setattr(lstm[0], "reduce_range", "yes")
    out = _both_ways(monkeypatch, lambda: lstm(torch.ones(2, 1, 8))[0])
    assert out[0] is RuntimeError and "'reduce_range'" in out[1], out
    conv = _MODELS["Conv2d"][0]
    x = torch.ones(1, 3, 6, 6)
    for groups in (1.0, 2 ** 64):
        monkeypatch.setattr(conv[1], "groups", groups)
        out = _both_ways(monkeypatch, lambda: conv(x))
        assert out[0] is RuntimeError and "'groups'" in out[1], out


@pytest.mark.parametrize("call,name", [
    (lambda q: F.avg_pool2d(q, 2, divisor_override=2 ** 64), "divisor_override"),
    (lambda q: F.max_pool2d(q, 2 ** 70), "kernel_size"),
    (lambda q: F.max_pool2d(q, (2, 2 ** 64)), "kernel_size"),
    (lambda q: F.max_pool2d(q, 2, 2 ** 63), "stride"),
    (lambda q: F.max_pool2d(q, 2, 2, 2 ** 63), "padding"),
    (lambda q: F.avg_pool2d(q, 2 ** 64), "kernel_size"),
    (lambda q: F.adaptive_avg_pool2d(q, 2 ** 64), "output_size"),
    (lambda q: F.adaptive_avg_pool2d(q, (2, 2 ** 63)), "output_size"),
    (lambda q: F.adaptive_avg_pool1d(q[0], 2 ** 64), "output_size"),
    (lambda q: F.max_pool2d(q, True), "kernel_size"),
], ids=["avg_divisor_2**64", "max_kernel_2**70", "max_kernel_(2,2**64)", "max_stride_2**63", "max_padding_2**63",
        "avg_kernel_2**64", "adaptive_2**64", "adaptive_(2,2**63)", "adaptive1d_2**64", "max_kernel_True"])
def test_pooling_out_of_range_ints_same_either_way(monkeypatch, call, name):
    """An int outside int64 (or a bool, which torch refuses) in a pooling argument: the same
    error naming the argument with the typed path as without (pybind11's TypeError or
    ValueError before, torch.ops's schema error without it)."""
    q = _q(1, 2, 6, 6)
    kind, msg = _both_ways(monkeypatch, lambda: call(q))
    assert kind in (RuntimeError, TypeError) and f"'{name}'" in msg, (kind, msg)


def test_avg_pool_divisor_override_values(monkeypatch):
    """divisor_override as torch takes it: an int or an integer scalar (numpy, 0-d tensor),
    same result either way and equal to the plain-torch oracle's."""
    q = _q(1, 2, 6, 6)
    want = reference.avg_pool_int8(q.int_repr(), q.zero_point, [2, 2], [2, 2], [0, 0], divisor_override=3)
    for d in (3, np.int64(3), torch.tensor(3)):
        out = _both_ways(monkeypatch, lambda: F.avg_pool2d(q, 2, divisor_override=d))
        assert out[2] == want.tolist(), d
