"""The typed entry points (torchquant._C, used by the quantized modules' forward) against the
same ops called through torch.ops: same results bit for bit, same errors, and used only where
Python's __torch_function__ handling has nothing to do."""
import warnings

import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import torchquant
from torchquant import _fastcall

ops = torch.ops.torchquant


class Record(TorchFunctionMode):
    """Records the name of every function that reaches __torch_function__."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


class _DispatchLog(TorchDispatchMode):
    """Records the name of every op that reaches __torch_dispatch__ (behind the dispatcher)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _linear_args(device, m, k, n, xdtype, per_row, bias, out_dtype, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = (0, 256) if xdtype == torch.uint8 else (-128, 128)
    x = torch.randint(lo, hi, (m, k), generator=g, dtype=torch.int32).to(xdtype)
    rows = m if per_row else 1
    x_scale = torch.rand(rows, generator=g) * 0.05 + 0.001
    x_zp = torch.randint(lo, hi, (rows,), generator=g, dtype=torch.int32)
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int32).to(torch.int8)
    w_scale = torch.rand(n, generator=g) * 0.01 + 1e-4
    b = torch.randn(n, generator=g) if bias else None
    out_scale = out_zp = None
    if out_dtype in (torch.int8, torch.uint8):
        out_scale = torch.tensor([0.05])
        out_zp = torch.tensor([3 if out_dtype == torch.int8 else 130], dtype=torch.int32)
    w_packed, col_sums = ops.pack_weight(w.to(device))
    t = lambda v: None if v is None else v.to(device)  # noqa: E731
    return (t(x), t(x_scale), t(x_zp), w_packed, col_sums, t(w_scale), t(b), t(out_scale), t(out_zp))


@pytest.mark.parametrize("shape", [(1, 7, 5), (3, 33, 17), (64, 128, 48), (0, 16, 8)])
@pytest.mark.parametrize("case", ["u8_int8out_relu", "s8_floatout", "u8_perrow_nobias_u8out"])
def test_linear_int8_typed_equals_torch_ops(isa, device, shape, case):
    xdtype = torch.int8 if case.startswith("s8") else torch.uint8
    out_dtype = {"u8_int8out_relu": torch.int8, "s8_floatout": None, "u8_perrow_nobias_u8out": torch.uint8}[case]
    args = _linear_args(device, *shape, xdtype, "perrow" in case, "nobias" not in case, out_dtype, sum(shape))
    relu = "relu" in case
    want = ops.linear_int8.default(*args, relu, out_dtype)
    got = _fastcall.linear_int8(*args, relu, out_dtype)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("shape", [(1, 7, 5), (5, 33, 17), (0, 16, 8)])
@pytest.mark.parametrize("bias,relu", [(True, False), (False, True)])
def test_linear_dynamic_typed_equals_torch_ops(isa, device, shape, bias, relu):
    m, k, n = shape
    g = torch.Generator().manual_seed(m * 100 + k)
    x = (torch.randn(m, k, generator=g) * 3).to(device)
    x[:, 0] = 0.5  # ties of the row quantizer's rounding
    w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int32).to(torch.int8).to(device)
    w_scale = (torch.rand(n, generator=g) * 0.01 + 1e-4).to(device)
    b = torch.randn(n, generator=g).to(device) if bias else None
    wp, cs = ops.pack_weight(w)
    want = ops.linear_dynamic.default(x, wp, cs, w_scale, b, relu)
    assert torch.equal(_fastcall.linear_dynamic(x, wp, cs, w_scale, b, relu), want)


@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("dtype,qmin,qmax", [(torch.uint8, 0, 255), (torch.int8, -128, 127), (torch.int8, -8, 7)])
def test_quantize_dequantize_typed_equal_torch_ops(isa, device, axis, dtype, qmin, qmax):
    g = torch.Generator().manual_seed(qmax)
    x = torch.randn(6, 37, generator=g) * 4
    x[0, :5] = torch.tensor([0.5, 1.5, -0.5, 1e9, -1e9]) * 0.05  # ties and saturation
    x = x.to(device)[:, ::2]  # non-contiguous
    c = 1 if axis is None else x.shape[axis]
    scale = (torch.rand(c, generator=g) * 0.1 + 0.01).to(device)
    zp = torch.randint(qmin, qmax + 1, (c,), generator=g, dtype=torch.int32).to(device)
    want_q = ops.quantize.default(x, scale, zp, axis, qmin, qmax, dtype)
    q = _fastcall.quantize(x, scale, zp, axis, qmin, qmax, dtype)
    assert q.dtype == dtype and torch.equal(q, want_q)
    for out_dtype in (None, torch.float64):
        want = ops.dequantize.default(q, scale, zp, axis, out_dtype)
        got = _fastcall.dequantize(q, scale, zp, axis, out_dtype)
        assert got.dtype == want.dtype and torch.equal(got, want)


def _error(f, *args):
    with pytest.raises(Exception) as info:
        f(*args)
    return info.value


@pytest.mark.parametrize("case", ["2d_relu_u8out", "1d_s8_floatout_groups", "3d_nobias_s8out"])
def test_conv_int8_typed_equals_torch_ops(isa, device, case):
    g = torch.Generator().manual_seed(len(case))
    nsp = int(case[0])
    groups = 2 if "groups" in case else 1
    xdtype = torch.int8 if "s8" in case else torch.uint8
    c_in, c_out = 6, 8
    x = torch.randint(-128 if xdtype == torch.int8 else 0, 128 if xdtype == torch.int8 else 256,
                      (2, c_in) + (5,) * nsp, generator=g, dtype=torch.int32).to(xdtype)
    w = torch.randint(-128, 128, (c_out, c_in // groups) + (3,) * nsp, generator=g, dtype=torch.int32).to(torch.int8)
    w_packed, col_sums = ops.pack_conv_weight(w.to(device), groups)
    s, z = torch.tensor([0.05], device=device), torch.tensor([3], dtype=torch.int32, device=device)
    ws = (torch.rand(c_out, generator=g) * 0.01 + 1e-4).to(device)
    b = None if "nobias" in case else torch.randn(c_out, generator=g).to(device)
    out_dtype = torch.uint8 if "u8out" in case else torch.int8 if "s8out" in case else None
    os_, oz = (None, None) if out_dtype is None else (torch.tensor([0.2], device=device),
                                                      torch.tensor([7], dtype=torch.int32, device=device))
    args = (x.to(device), s, z, w_packed, col_sums, ws, b, [3] * nsp, [1] * nsp, [1] * nsp, [1] * nsp, groups, os_, oz,
            "relu" in case, out_dtype)
    want = ops.conv_int8.default(*args)
    got = _fastcall.conv_int8(*args)
    assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride()
    assert torch.equal(got, want)
    bad = list(args)
    bad[11] = 4  # groups that do not divide the channels: the same error
    assert str(_error(_fastcall.conv_int8, *bad)) == str(_error(ops.conv_int8.default, *bad))


def test_typed_errors_equal_torch_ops():
    x = torch.randn(4, 8)
    s, z = torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32)
    w = torch.randint(-128, 128, (5, 8), dtype=torch.int8)
    wp, cs = ops.pack_weight(w)
    ws = torch.full((5,), 0.01)
    xq = torch.randint(0, 256, (4, 8), dtype=torch.uint8)
    cases = [
        ("quantize", (x, torch.tensor([0.0]), z, None, 0, 255, torch.uint8)),  # scale 0
        ("quantize", (x, s, torch.tensor([300], dtype=torch.int32), None, 0, 255, torch.uint8)),  # zp out of range
        ("quantize", (x, s, z, 5, 0, 255, torch.uint8)),  # axis out of range
        ("quantize", (x, s, z, None, 0, 255, torch.float32)),  # dtype
        ("dequantize", (x, s, z, None, None)),  # float q
        ("linear_int8", (xq[:, :7], s, z, wp, cs, ws, None, None, None, False, None)),  # K mismatch
        ("linear_int8", (xq, s, z, wp, cs, ws[:4], None, None, None, False, None)),  # w_scale length
        ("linear_int8", (xq, s, z, wp, cs, ws, None, None, None, False, torch.uint8)),  # no out qparams
        ("linear_dynamic", (xq, wp, cs, ws, None, False)),  # integer x
        ("linear_dynamic", (x[:, :3], wp, cs, ws, None, False)),  # K mismatch
        ("int8_mm", (w, w)),  # K mismatch
        ("int8_mm", (xq, w.t())),  # uint8 a
    ]
    for name, args in cases:
        want = _error(getattr(ops, name).default, *args)
        got = _error(getattr(_fastcall, name), *args)
        assert type(got) is type(want), (name, type(got), type(want), str(want))
        assert str(got) == str(want), (name, str(got), str(want))


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(torchquant.QuantStub(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8),
                      torchquant.DeQuantStub()).eval()
    m.qconfig = torchquant.per_channel_qconfig
    p = torchquant.prepare(m)
    with torch.no_grad():
        p(torch.randn(64, 16))
    static = torchquant.convert(p)
    dynamic = torchquant.quantize_dynamic(
        nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval(), {nn.Linear}, dtype=torch.qint8)
    return static, dynamic


@pytest.fixture
def counted(monkeypatch):
    """Counts the typed calls the modules make."""
    calls = []
    for name in ("quantize", "dequantize", "int8_mm", "linear_int8", "linear_dynamic"):
        f = getattr(_fastcall, name)

        def wrapped(*args, _f=f, _name=name):
            calls.append(_name)
            return _f(*args)

        monkeypatch.setattr(_fastcall, name, wrapped)
    return calls


def test_modules_take_the_typed_path_and_agree_with_torch_ops(counted, monkeypatch):
    static, dynamic = _model()
    x = torch.randn(3, 16)
    ys, yd = static(x), dynamic(x)
    assert counted == ["quantize", "linear_int8", "linear_int8", "dequantize", "linear_dynamic", "linear_dynamic"]
    counted.clear()
    monkeypatch.setattr(_fastcall, "enabled", False)
    assert torch.equal(static(x), ys) and torch.equal(dynamic(x), yd)
    assert counted == []


def test_torch_function_modes_and_subclasses_see_torch_ops_calls(counted):
    static, dynamic = _model()
    x = torch.randn(3, 16)
    ys, yd = static(x), dynamic(x)
    counted.clear()

    with Record() as mode:
        assert torch.equal(static(x), ys) and torch.equal(dynamic(x), yd)
    assert counted == []
    for op in ("quantize", "linear_int8", "dequantize", "linear_dynamic"):
        assert f"torchquant.{op}.default" in mode.seen, (op, mode.seen)

    class Tagged(torch.Tensor):
        seen = []

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            cls.seen.append(str(func))
            return super().__torch_function__(func, types, args, kwargs)

    xt = x.as_subclass(Tagged)
    static(xt)
    dynamic(xt)
    # torch.Tensor.__torch_function__ hands back the subclass, so it reaches every later op too
    assert counted == []
    for op in ("quantize", "linear_int8", "dequantize", "linear_dynamic"):
        assert f"torchquant.{op}.default" in Tagged.seen, (op, Tagged.seen)


def test_compile_and_export_trace_torch_ops(counted):
    static, dynamic = _model()
    x = torch.randn(3, 16)
    for model in (static, dynamic):
        eager = model(x)
        counted.clear()
        assert torch.equal(torch.compile(model, fullgraph=True, backend="aot_eager")(x), eager)
        ep = torch.export.export(model, (x,))
        targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        assert any(t.startswith("torchquant.") for t in targets), targets
        assert torch.equal(ep.module()(x), eager)
        assert counted == []  # tracing went through torch.ops


def test_fastcall_env_switch_read_at_import():
    import subprocess
    import sys

    code = "import torchquant._fastcall as f; print(f.enabled)"
    for value, want in (("0", "False"), ("off", "False"), ("1", "True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**__import__("os").environ, "TORCHQUANT_FASTCALL": value})
        assert out.stdout.strip() == want


def test_qtensor_dequantize_dtype_is_checked_before_either_path(monkeypatch):
    q = torchquant.QTensor(torch.randint(0, 256, (3, 4), dtype=torch.uint8), torch.tensor([0.1]),
                           torch.tensor([3], dtype=torch.int32), None, 0, 255)
    for enabled in (True, False):
        monkeypatch.setattr(_fastcall, "enabled", enabled)
        for bad in ("float16", 3):
            with pytest.raises(TypeError, match="argument 'dtype' must be a torch.dtype, got"):
                q.dequantize(bad)
        with pytest.raises(RuntimeError, match="argument 'out_dtype' must be a floating-point dtype, got Int"):
            q.dequantize(torch.int32)
        assert q.dequantize(torch.float16).dtype == torch.float16


def test_dispatch_modes_see_the_typed_calls(counted):
    """A __torch_dispatch__ mode (a profiler, a logging mode) sits behind the dispatcher, which
    the typed path goes through: it sees every torchquant op, with the GIL released around the
    call and taken back for the mode's Python code."""
    static, dynamic = _model()
    x = torch.randn(3, 16)
    ys, yd = static(x), dynamic(x)
    counted.clear()
    with _DispatchLog() as mode:
        assert torch.equal(static(x), ys) and torch.equal(dynamic(x), yd)
    assert counted == ["quantize", "linear_int8", "linear_int8", "dequantize", "linear_dynamic", "linear_dynamic"]
    seen = [o for o in mode.ops if o.startswith("torchquant.")]
    assert seen == ["torchquant.quantize.default", "torchquant.linear_int8.default", "torchquant.linear_int8.default",
                    "torchquant.dequantize.default", "torchquant.linear_dynamic.default",
                    "torchquant.linear_dynamic.default"]


@pytest.mark.parametrize("shape", [(1, 7, 5), (6, 64, 64), (33, 100, 17), (0, 8, 4)])
def test_int8_mm_typed_equals_torch_ops(isa, device, shape):
    m, k, n = shape
    g = torch.Generator().manual_seed(m + k + n)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int32).to(torch.int8).to(device)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int32).to(torch.int8).to(device)
    want = ops.int8_mm.default(a, b)
    assert torch.equal(_fastcall.int8_mm(a, b), want)
    assert torch.equal(_fastcall.int8_mm(a, b.t().contiguous().t()), want)


def test_public_gemm_functions_take_the_typed_path_outside_modes(counted):
    g = torch.Generator().manual_seed(5)
    a = torch.randint(-128, 128, (3, 8), generator=g, dtype=torch.int32).to(torch.int8)
    w = torch.randint(-128, 128, (4, 8), generator=g, dtype=torch.int32).to(torch.int8)
    wp, cs = torchquant.pack_weight(w)
    ws = torch.full((4,), 0.01)
    xq = torch.randint(0, 256, (3, 8), generator=g, dtype=torch.int32).to(torch.uint8)
    x = torch.randn(3, 8, generator=g)
    calls = [lambda: torchquant.int8_mm(a, w.t()),
             lambda: torchquant.linear_int8(xq, 0.1, 128, wp, cs, ws, None, 0.05, 3, True, torch.uint8),
             lambda: torchquant.linear_dynamic(x, wp, cs, ws, torch.ones(4))]
    want = [ops.int8_mm(a, w.t()),
            ops.linear_int8(xq, torch.tensor([0.1]), torch.tensor([128], dtype=torch.int32), wp, cs, ws, None,
                            torch.tensor([0.05]), torch.tensor([3], dtype=torch.int32), True, torch.uint8),
            ops.linear_dynamic(x, wp, cs, ws, torch.ones(4), False)]
    for f, y in zip(calls, want):
        assert torch.equal(f(), y)
    assert counted == ["int8_mm", "linear_int8", "linear_dynamic"]
    counted.clear()

    with Record() as mode:
        for f, y in zip(calls, want):
            assert torch.equal(f(), y)
    assert counted == []
    for op in ("int8_mm", "linear_int8", "linear_dynamic"):
        assert any(s in (f"torchquant.{op}", f"torchquant.{op}.default") for s in mode.seen), (op, mode.seen)
    # a tensor subclass among the weights' tensors goes through torch.ops as well
    torchquant.linear_dynamic(x, wp, cs, torch.nn.Parameter(ws, requires_grad=False))
    assert counted == []


def test_quantize_functions_take_the_typed_path_and_check_axis(counted):
    x = torch.randn(3, 4)
    q = torchquant.quantize_per_tensor(x, 0.1, 3, torch.quint8)
    qc = torchquant.quantize_per_channel(x, torch.full((4,), 0.1), torch.zeros(4, dtype=torch.int32), -1, torch.qint8)
    assert counted == ["quantize", "quantize"]
    assert torch.equal(q.int_repr(), ops.quantize(x, torch.tensor([0.1]), torch.tensor([3], dtype=torch.int32), None,
                                                  0, 255, torch.uint8))
    assert qc.axis == 1
    for bad in (1.5, "1", None):
        with pytest.raises(TypeError, match="quantize_per_channel: argument 'axis' must be an integer"):
            torchquant.quantize_per_channel(x, torch.full((4,), 0.1), torch.zeros(4, dtype=torch.int32), bad,
                                            torch.qint8)


def test_public_functions_odd_arguments_same_either_way(monkeypatch):
    """None where a tensor is required, relu / out_dtype / axis of other types: the public
    functions answer as torch.ops does (same value, or same error type and message) whether the
    typed path is enabled or not; pybind11 rejected some of them with its own TypeError, and
    refused an out_dtype given as an int that torch.ops takes."""
    np = pytest.importorskip("numpy")
    g = torch.Generator().manual_seed(11)
    w = torch.randint(-128, 128, (4, 8), generator=g, dtype=torch.int32).to(torch.int8)
    wp, cs = torchquant.pack_weight(w)
    ws = torch.full((4,), 0.01)
    xq = torch.randint(0, 256, (3, 8), generator=g, dtype=torch.int32).to(torch.uint8)
    x = torch.randn(3, 8, generator=g)
    sc, zp = torch.full((8,), 0.1), torch.zeros(8, dtype=torch.int32)
    s1, z1 = torch.tensor([0.1]), torch.tensor([128], dtype=torch.int32)
    L, D = torchquant.linear_int8, torchquant.linear_dynamic
    calls = [
        lambda: L(None, s1, z1, wp, cs, ws),
        lambda: L(xq, 0.1, 128, None, cs, ws),
        lambda: L(xq, 0.1, 128, wp, None, ws),
        lambda: L(xq, 0.1, 128, wp, cs, None),
        lambda: L(xq, 0.1, 128, wp, cs, ws, relu="yes"),
        lambda: L(xq, 0.1, 128, wp, cs, ws, relu=np.bool_(True)),
        lambda: L(xq, 0.1, 128, wp, cs, ws, relu=1),
        lambda: L(xq, 0.1, 128, wp, cs, ws, out_dtype="float16"),
        lambda: L(xq, 0.1, 128, wp, cs, ws, out_dtype=5),  # torch.float16's ScalarType number
        lambda: D(None, wp, cs, ws),
        lambda: D(x, None, cs, ws),
        lambda: D(x, wp, cs, ws, relu="yes"),
        lambda: D(x, wp, cs, ws, relu=np.bool_(True)),
        lambda: torchquant.quantize_per_channel(x, sc, zp, 2 ** 70, torch.qint8),
        lambda: torchquant.quantize_per_channel(x, sc, zp, np.int64(1), torch.qint8),
    ]

    def outcome(f):
        try:
            y = f()
        except Exception as e:  # noqa: BLE001  (the error itself is what is compared)
            return type(e), str(e)
        y = y.int_repr() if isinstance(y, torchquant.QTensor) else y
        return y.dtype, y.tolist()

    for i, f in enumerate(calls):
        monkeypatch.setattr(_fastcall, "enabled", True)
        typed = outcome(f)
        monkeypatch.setattr(_fastcall, "enabled", False)
        assert typed == outcome(f), (i, typed)


def test_cpp_warnings_inside_the_op_same_either_way(monkeypatch):
    """A TORCH_WARN raised inside the op's call (here vmap's batching fallback, which warns that
    linear_dynamic has no batching rule) is handled alike on both paths: torch.ops installs no
    Python warning handler, so the typed path must not either (it turned the warning into a
    Python warning, an error under -W error, on the typed path only)."""
    from torch.func import vmap

    set_fallback_warning = getattr(torch._C._functorch, "_set_vmap_fallback_warning_enabled", None)
    if set_fallback_warning is not None:
        set_fallback_warning(True)
    g = torch.Generator().manual_seed(4)
    w = torch.randint(-128, 128, (4, 8), generator=g, dtype=torch.int32).to(torch.int8)
    wp, cs = torchquant.pack_weight(w)
    ws = torch.full((4,), 0.01)
    x = torch.randn(3, 2, 8, generator=g)
    seen = []
    for enabled in (True, False):
        monkeypatch.setattr(_fastcall, "enabled", enabled)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            y = vmap(lambda t: torchquant.linear_dynamic(t, wp, cs, ws))(x)
        seen.append([str(r.message) for r in rec])
        assert torch.equal(y, torch.stack([ops.linear_dynamic(t, wp, cs, ws, None) for t in x]))
    assert seen[0] == seen[1], seen


def test_quantize_per_tensor_names_a_non_tensor_x():
    for bad in (None, [0.5, 1.0]):
        with pytest.raises(TypeError, match="quantize_per_tensor: argument 'x' must be a tensor, got"):
            torchquant.quantize_per_tensor(bad, 0.1, 0, torch.qint8)


# ---------------------------------------------------------------- cases that small deliberate bugs got through
class _Tagged(torch.Tensor):
    pass


class _Mode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_fastcall_usable_checks_every_argument():
    """Mutant: usable() not checking the type of its third tensor (a tensor subclass given as a
    zero point or weight would skip its __torch_function__)."""
    t = torch.ones(2)
    sub = t.as_subclass(_Tagged)
    assert _fastcall.usable(t, t, t) == _fastcall.enabled
    for args in ((sub, t, t), (t, sub, t), (t, t, sub), (torch.nn.Parameter(t), t, t)):
        assert not _fastcall.usable(*args), [type(a).__name__ for a in args]
    with _Mode():
        assert not _fastcall.usable(t, t, t)


def test_quantized_modules_route_subclass_qparams_through_torch_ops(monkeypatch):
    """The same through a module: a DeQuantize of a QTensor whose zero point is a subclass must
    take torch.ops (which honours the subclass), not the typed path."""
    calls = []
    f = _fastcall.dequantize
    monkeypatch.setattr(_fastcall, "dequantize", lambda *a: calls.append(1) or f(*a))
    monkeypatch.setattr(_fastcall, "enabled", True)
    data = torch.randint(0, 256, (3, 4), dtype=torch.uint8)
    plain = torchquant.QTensor(data, torch.tensor([0.1]), torch.tensor([3], dtype=torch.int32), None, 0, 255)
    dq = torchquant.nn.quantized.DeQuantize()
    want = dq(plain)
    assert calls == [1]
    tagged = torchquant.QTensor(data, torch.tensor([0.1]), torch.tensor([3], dtype=torch.int32).as_subclass(_Tagged),
                                None, 0, 255)
    assert torch.equal(dq(tagged).as_subclass(torch.Tensor), want)
    assert calls == [1]


@pytest.mark.parametrize("grad_mode", ["enabled", "no_grad", "inference_mode"])
def test_typed_path_keeps_autograd_and_modes_in_every_grad_mode(grad_mode):
    """With grad mode off the typed calls go below the autograd keys (as inference mode does):
    the outputs, their requires_grad / grad_fn, and what a dispatch mode sees are those of
    torch.ops in each mode."""
    ctx = {"enabled": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[grad_mode]
    x = torch.randn(4, 8, requires_grad=True)
    s, z = torch.tensor([0.05]), torch.tensor([3], dtype=torch.int32)
    results = []
    for quantize, dequantize in ((ops.quantize.default, ops.dequantize.default),
                                 (_fastcall.quantize, _fastcall.dequantize)):
        with ctx(), _DispatchLog() as mode:
            q = quantize(x, s, z, None, -128, 127, torch.int8)
            y = dequantize(q, s, z, None, None)
            w = dequantize(q, torch.tensor([0.05], requires_grad=True), z, None, None)
        results.append((q, y, w, [o for o in mode.ops if o.startswith("torchquant.")]))
    (q0, y0, w0, seen0), (q1, y1, w1, seen1) = results
    assert torch.equal(q0, q1) and torch.equal(y0, y1) and torch.equal(w0, w1)
    for a, b in ((q0, q1), (y0, y1), (w0, w1)):
        assert a.requires_grad == b.requires_grad
        assert (a.grad_fn is None) == (b.grad_fn is None)
        assert a.is_inference() == b.is_inference()
    assert seen0 == seen1 == ["torchquant.quantize.default", "torchquant.dequantize.default",
                              "torchquant.dequantize.default"]
