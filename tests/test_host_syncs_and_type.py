"""Two properties of a model's tensors as the device sees them.

Module.type(): ``.type(torch.float32)`` / ``.type(torch.FloatTensor)`` casts every tensor of a
module, integer ones included (a float32 model's no-op). Converted modules, observers and
fake-quants keep their integer buffers (weight codes, zero points, counters, flags) as they keep
their float32 ones, so the model still runs and gives the same output.

Host reads in a QAT step: on a GPU every read of a device tensor on the host (``.item()``,
``bool(t)``, ``float(t)``, ``.tolist()``, ``nonzero``) waits for the device to drain its queue.
``OnDevice`` wraps CPU tensors in a subclass that reports another device than the CPU ("meta":
no GPU needed, and no device guard to set up; the code under test only asks whether a tensor
is on the CPU): it counts those reads, refuses ``.tolist()`` (torch refuses it for tensor
subclasses) and runs every op on the wrapped CPU tensors, so the numbers can be compared with a
plain CPU run.
"""
import copy
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_map

import torchquant as tq
from torchquant import fake_quantize as fqm
from torchquant import observer as obs

# ----------------------------------------------------------------------------- Module.type()


def _int_buffers(model):
    return {k: v.dtype for k, v in model.state_dict().items() if not (v.is_floating_point() or v.is_complex())}


def _out(y):
    return y.dequantize() if isinstance(y, tq.QTensor) else y


class _Static(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = tq.QuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.ln = nn.LayerNorm([4, 6, 6])
        self.add = nn.quantized.FloatFunctional()
        self.fc = nn.Linear(144, 5)
        self.dq = tq.DeQuantStub()

    def forward(self, x):
        x = self.relu(self.conv(self.q(x)))
        x = self.add.add(self.ln(x), x)
        return self.dq(self.fc(x.flatten(1)))


def _static_model():
    torch.manual_seed(0)
    m = _Static().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(torch.randn(4, 3, 6, 6))
    return tq.convert(p), torch.randn(2, 3, 6, 6)


def _dynamic_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8)).eval()
    return tq.quantize_dynamic(m), torch.randn(3, 16)


def _int4_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
    return tq.quantize_weight_only(m, group_size=32, progress=False), torch.randn(3, 64)


def _embedding_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.EmbeddingBag(50, 12, mode="sum"))
    m[0].qconfig = tq.float_qparams_weight_only_qconfig_4bit
    return tq.convert(tq.prepare(m)), torch.randint(0, 50, (3, 5))


@pytest.mark.parametrize("build", [_static_model, _dynamic_model, _int4_model, _embedding_model],
                         ids=["static", "dynamic", "int4", "embedding"])
@pytest.mark.parametrize("dst", [torch.float32, torch.FloatTensor, "torch.FloatTensor"])
def test_type_float32_keeps_integer_buffers_of_converted_model(build, dst):
    model, x = build()
    y = _out(model(x))
    ints = _int_buffers(model)
    assert ints and set(ints.values()) & {torch.int8, torch.uint8}
    assert model.type(dst) is model
    assert _int_buffers(model) == ints
    torch.testing.assert_close(_out(model(x)), y, rtol=0, atol=0)


def test_type_float64_of_converted_model_is_double():
    # .type(torch.float64) casts what .double() casts: the int8 state and float32 scales stay
    model, x = _static_model()
    y = _out(model(x))
    ints = _int_buffers(model)
    model.type(torch.float64)
    assert _int_buffers(model) == ints
    assert model.conv.scale.dtype == torch.float32 and model.fc.weight_scale.dtype == torch.float32
    out = _out(model(x))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, y.double(), rtol=0, atol=0)


def test_type_float32_keeps_integer_buffers_of_observers_and_fake_quants():
    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(8, 4), tq.DeQuantStub()).train()
    m.qconfig = tq.get_default_qat_qconfig("x86")
    qat = tq.prepare_qat(m)
    qat(torch.randn(5, 8))
    ints = _int_buffers(qat)
    assert {torch.int32, torch.int64, torch.uint8} <= set(ints.values())
    qat.type(torch.float32)
    assert _int_buffers(qat) == ints
    qat(torch.randn(5, 8)).sum().backward()
    assert isinstance(tq.convert(qat.eval())[1], tq.nn.quantized.Linear)



# ----------------------------------------------------------------------------- host reads

_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default)


class OnDevice(torch.Tensor):
    """A CPU tensor that says it lives elsewhere; counts the reads of it on the host."""

    reads = []

    @staticmethod
    def __new__(cls, elem):
        r = torch.Tensor._make_wrapper_subclass(cls, elem.size(), strides=elem.stride(),
                                                storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                device="meta", requires_grad=elem.requires_grad)
        r.elem = elem
        return r

    def __repr__(self):
        return f"OnDevice({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if func in _READS:
            cls.reads.append(func.__name__)
        kwargs = kwargs or {}
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            to = kwargs.get("device")
            if (to is not None and torch.device(to).type == "cpu") or (
                    func is torch.ops.aten.copy_.default and not isinstance(args[0], OnDevice)):
                cls.reads.append("copy to the host")

        def unwrap(t):
            if isinstance(t, OnDevice):
                return t.elem
            return torch.device("cpu") if isinstance(t, torch.device) else t

        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        ret = func._schema.returns
        if ret and ret[0].alias_info is not None and ret[0].alias_info.is_write:
            return args[0]  # in place: the wrapper itself (its shape cannot change: no resize_)
        return tree_map(lambda t: OnDevice(t) if isinstance(t, torch.Tensor) else t, out)


def _on_device(module):
    return module._apply(lambda t: OnDevice(t))


def _plain(t):
    return t.elem if isinstance(t, OnDevice) else t


_FAKE_QUANTS = {
    "act": lambda: fqm.default_fake_quant(),
    "weight_per_channel": lambda: fqm.default_per_channel_weight_fake_quant(),
    "embedding": lambda: fqm.default_embedding_fake_quant(),
    "fused_act": lambda: fqm.default_fused_act_fake_quant(),
    "fused_weight_per_channel": lambda: fqm.default_fused_per_channel_wt_fake_quant(),
    "fused_symmetric": lambda: fqm.fused_wt_fake_quant_range_neg_127_to_127(),
    "fused_embedding": lambda: fqm.FusedMovingAvgObsFakeQuantize(
        observer=obs.MovingAveragePerChannelMinMaxObserver, qscheme=torch.per_channel_affine_float_qparams,
        dtype=torch.quint8, quant_min=0, quant_max=255, ch_axis=0, averaging_constant=1),
}
# FakeQuantize reads its two enable flags on the host, as torch.ao's FakeQuantize does; the fused
# module reads them on the device, as torch.ao's fused kernel does.
_FLAG_READS = {k: 0 if k.startswith("fused") else 2 for k in _FAKE_QUANTS}


def _batches(seed, n=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 5, generator=g) * (i + 1) for i in range(n)]


def _warmed_up(make, x):
    """A fake-quant after one CPU step (per-channel statistics and qparams sized: a wrapper's
    shape cannot change in place)."""
    fq = make().train()
    fq(x)
    return fq


def _train_steps(fq, xs, to_device, flags=None):
    """Training forwards and backwards; the outputs, input gradients, qparams and statistics,
    as plain CPU tensors, and the host reads of each step."""
    if to_device:
        _on_device(fq)
    outs, reads = [], []
    # One step first: eps is read on the host once per tensor (here, after the move).
    OnDevice.reads = []
    fq(OnDevice(xs[0]) if to_device else xs[0])
    assert len(OnDevice.reads) <= 3, OnDevice.reads
    for i, x in enumerate(xs):
        if flags is not None:  # (fill_: `flag[0] = 1`, as enable_observer writes, makes a meta tensor of the 1)
            fq.observer_enabled.fill_(int(flags[i][0]))
            fq.fake_quant_enabled.fill_(int(flags[i][1]))
        x = x.clone().requires_grad_()
        xin = OnDevice(x.detach()).requires_grad_() if to_device else x
        OnDevice.reads = []
        y = fq(xin)
        reads.append(list(OnDevice.reads))
        g = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
        g[0, 0] = -0.0  # a signed zero must pass as it is
        y.backward(OnDevice(g) if to_device else g)
        outs.append((_plain(y).detach().clone(), _plain(xin.grad).clone()))
    state = {k: _plain(v).clone() for k, v in fq.state_dict().items()}
    return outs, state, reads


def _bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def _assert_same_bits(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(_bits(a), _bits(b))


@pytest.mark.parametrize("name", list(_FAKE_QUANTS))
def test_fake_quant_training_step_reads_no_device_tensor_on_host(name):
    xs = _batches(1)
    fq = _warmed_up(_FAKE_QUANTS[name], xs[-1])
    ref = copy.deepcopy(fq)
    outs, state, reads = _train_steps(fq, xs, to_device=True)
    assert all(len(r) == _FLAG_READS[name] for r in reads), reads
    # the same numbers as the CPU step, bit for bit
    ref_outs, ref_state, _ = _train_steps(ref, xs, to_device=False)
    for (y, gx), (ry, rgx) in zip(outs, ref_outs):
        _assert_same_bits(y, ry)
        _assert_same_bits(gx, rgx)
    assert state.keys() == ref_state.keys()
    for k in state:
        _assert_same_bits(state[k], ref_state[k])


@pytest.mark.parametrize("qconfig, per_fake_quant", [
    (tq.get_default_qat_qconfig("x86"), 2), (tq.qconfig.learnable_qat_qconfig, 2),
    (tq.qconfig.default_qat_qconfig_v2, 0)], ids=["default", "learnable", "fused"])
def test_qat_training_step_reads_flags_only(qconfig, per_fake_quant):
    torch.manual_seed(0)
    model = nn.Sequential(tq.QuantStub(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4), tq.DeQuantStub()).train()
    model.qconfig = qconfig
    qat = tq.prepare_qat(model)
    x = torch.randn(8, 16)
    qat(x)
    _on_device(qat)
    qat(OnDevice(x))  # (eps read once per tensor)
    OnDevice.reads = []
    loss = qat(OnDevice(x)).square().sum()
    loss.backward()
    n = sum(isinstance(m, fqm.FakeQuantizeBase) for m in qat.modules())
    assert n == 5 and OnDevice.reads == ["_local_scalar_dense.default"] * (n * per_fake_quant)


@pytest.mark.parametrize("name", ["fused_act", "fused_weight_per_channel", "fused_embedding"])
def test_fused_fake_quant_flags_read_on_device_give_the_same_numbers(name):
    # observer / fake-quant switched off and on between steps: the flags are read on the device
    xs = _batches(2, n=6)
    fq = _warmed_up(_FAKE_QUANTS[name], xs[-1])
    flags = [(True, True), (False, True), (True, False), (False, False), (True, True), (False, True)]
    ref = copy.deepcopy(fq)
    outs, state, reads = _train_steps(fq, xs, to_device=True, flags=flags)
    assert reads == [[]] * len(xs)
    ref_outs, ref_state, _ = _train_steps(ref, xs, to_device=False, flags=flags)
    for (y, gx), (ry, rgx) in zip(outs, ref_outs):
        _assert_same_bits(y, ry)
        _assert_same_bits(gx, rgx)
    for k in state:
        _assert_same_bits(state[k], ref_state[k])


def test_fused_fake_quant_qparams_follow_loaded_flags_and_eps_on_device():
    x = OnDevice(torch.randn(4, 4))
    fq = _on_device(fqm.default_fused_act_fake_quant().train())
    fq(x)
    before = _plain(fq.scale).clone()
    fq.observer_enabled.copy_(OnDevice(torch.tensor([0])))  # written in place, not through the method
    fq(OnDevice(torch.randn(4, 4) * 10))
    _assert_same_bits(_plain(fq.scale), before)
    # eps is read once per tensor, and again once changed
    app = fq.activation_post_process
    app.eps.fill_(1.0)
    fq.observer_enabled.fill_(1)
    fq(x)
    assert float(_plain(fq.scale)) == 1.0


def test_fake_quant_on_device_warns_and_raises_at_calculate_qparams():
    # The checks that would read the device every step wait for calculate_qparams (convert's).
    nan = torch.full((4, 3), math.nan)
    for make, data in [(fqm.default_fake_quant, nan), (fqm.default_fused_act_fake_quant, nan),
                       (fqm.default_per_channel_weight_fake_quant, torch.cat([torch.randn(1, 3), nan[:1]])),
                       (fqm.default_fused_per_channel_wt_fake_quant, torch.cat([torch.randn(1, 3), nan[:1]]))]:
        fq = make().train()
        app = fq.activation_post_process
        if app.min_val.dim() == 1:  # per channel: sized, with no data (a wrapper cannot be resized)
            for t, v in ((app.min_val, math.inf), (app.max_val, -math.inf), (fq.scale, 1.0), (fq.zero_point, 0)):
                t.resize_(data.shape[0]).fill_(v)
        _on_device(fq)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            OnDevice.reads = []
            y = fq(OnDevice(data))  # no warning, no error, no read but the flags and (once) eps
            assert len(OnDevice.reads) <= 3
        assert torch.isnan(_plain(y)).any()
        fq._apply(_plain)  # (calculate_qparams reads on the host, as it may there; a wrapper has no .tolist())
        with pytest.warns(RuntimeWarning, match="NaN"), pytest.raises(RuntimeError, match="no finite data"):
            fq.calculate_qparams()
    # on the CPU, reading is free: the step itself raises, as before
    with pytest.warns(RuntimeWarning, match="NaN"), pytest.raises(RuntimeError, match="no finite data"):
        fqm.default_fake_quant().train()(nan)


def test_fake_quant_on_device_under_compile_op_gives_the_mask():
    # The op torch.compile runs a FakeQuantize as: its mask follows the flag read on the device
    fq = _on_device(fqm.default_fused_act_fake_quant().train())
    x = OnDevice(torch.randn(4, 5) * 3)
    fq.fake_quant_enabled.fill_(0)
    y, mask = fq._forward_with_mask(x)
    assert torch.equal(_plain(y), _plain(x)) and bool(_plain(mask).all())
    fq.fake_quant_enabled.fill_(1)
    ref = copy.deepcopy(fq)
    ref._apply(_plain)
    ry, rmask = ref._forward_with_mask(_plain(x) * 4)
    y, mask = fq._forward_with_mask(x * 4)
    _assert_same_bits(_plain(y), ry)
    assert torch.equal(_plain(mask), rmask) and not bool(rmask.all())


@pytest.mark.parametrize("fake_quant_on", [True, False])
def test_fused_per_channel_fake_quant_with_its_observer_off_before_any_data_as_on_the_cpu(fake_quant_on):
    # statistics not sized for x's channels yet: whether they are sized, or the fake-quant
    # raises, depends on the flags, read on the host then, as on the CPU
    x = torch.randn(4, 3)
    results = []
    for to_device in (False, True):
        fq = fqm.default_fused_per_channel_wt_fake_quant().train()
        fq.observer_enabled.fill_(0)
        fq.fake_quant_enabled.fill_(int(fake_quant_on))
        if to_device:
            _on_device(fq)
        try:
            y = _plain(fq(OnDevice(x) if to_device else x))
            results.append(("ok", y))
        except RuntimeError as e:
            results.append(("error", str(e)))
        results[-1] += ({k: tuple(v.shape) for k, v in fq.state_dict().items()},)
    (kind, value, shapes), (dkind, dvalue, dshapes) = results
    assert kind == dkind and shapes == dshapes
    if kind == "ok":
        assert not fake_quant_on and torch.equal(value, x) and torch.equal(dvalue, x)
    else:
        assert fake_quant_on and value == dvalue and "argument 'scale' must have 4 elements" in value


def test_fake_quant_on_device_reads_an_inference_mode_eps():
    # an observer made under torch.inference_mode holds an inference tensor eps, which has no
    # version counter to cache its value by
    xs = _batches(3)
    with torch.inference_mode():
        fq = fqm.default_fused_act_fake_quant().train()
        fq(xs[0])
        ref = copy.deepcopy(fq)
        _on_device(fq)
        got = _plain(fq(OnDevice(xs[1])))
        want = ref(xs[1])
        assert torch.equal(got, want)
    # outside inference mode too (the flags and statistics are inference tensors still)
    assert torch.equal(_plain(fq._observed_qparams()[0]), ref.activation_post_process.calculate_qparams()[0])


def test_fused_fake_quant_off_on_device_keeps_the_input_layout():
    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    fq = _warmed_up(_FAKE_QUANTS["fused_weight_per_channel"], torch.randn(2, 3, 4, 5))
    fq.fake_quant_enabled.fill_(0)
    _on_device(fq)
    y = fq(OnDevice(x))
    assert y.stride() == x.stride() and torch.equal(_plain(y), x)
