"""The eager-mode API: torch.ao's names and flow on torchquant's int8 kernels."""
import io
import warnings

import pytest
import torch
import torch.nn as nn

import torchquant
from torchquant.nn import quantized as nnq


def test_seed_example_runs_with_one_import_changed():
    # The lesson's code, verbatim except `import torch.ao.quantization as tq` -> `import torchquant as tq`
    # and the comparison, which uses the same model's fp32 outputs instead of a fresh MLP().
    import torch
    import torch.nn as nn
    import torchquant as tq

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = tq.QuantStub()  # float → int8 at the boundary
            self.fc1 = nn.Linear(128, 256)
            self.act = nn.ReLU()
            self.fc2 = nn.Linear(256, 10)
            self.dequant = tq.DeQuantStub()  # int8 → float on the way out

        def forward(self, x):
            x = self.quant(x)
            x = self.act(self.fc1(x))
            x = self.fc2(x)
            return self.dequant(x)

    # 1) Train or load an fp32 model.
    model_fp32 = MLP().eval()
    reference_fp32 = __import__("copy").deepcopy(model_fp32)  # the fix: keep the same weights to compare with
    # 2) Attach a per-channel int8 config and insert observers.
    model_fp32.qconfig = tq.get_default_qconfig("fbgemm")  # per-channel weights, per-tensor acts
    tq.prepare(model_fp32, inplace=True)
    # 3) Calibrate: run a handful of real batches so observers learn the activation ranges.
    with torch.no_grad():
        for _ in range(32):
            model_fp32(torch.randn(64, 128))
    # 4) Convert: swap every float module for its int8 equivalent.
    model_int8 = tq.convert(model_fp32, inplace=False)
    # Compare outputs on a fresh batch.
    x = torch.randn(16, 128)
    with torch.no_grad():
        y_fp = reference_fp32(x)  # the same model in fp32
        y_int = model_int8(x)
    print("max |Δy| :", float((y_fp - y_int).abs().max()))

    assert type(model_int8.fc1) is nnq.Linear and type(model_int8.fc2) is nnq.Linear
    assert type(model_int8.quant) is nnq.Quantize and type(model_int8.dequant) is nnq.DeQuantize
    assert float((y_fp - y_int).abs().max()) < 0.03
    assert model_int8.fc1.qweight.dtype == torch.int8


class MNISTMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torchquant.QuantStub()
        self.fc1 = nn.Linear(784, 256)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(256, 256)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(256, 10)
        self.dequant = torchquant.DeQuantStub()

    def forward(self, x):
        x = self.quant(x.flatten(1))
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.dequant(self.fc3(x))


def _calibrated(model, qconfig, batches=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    model.qconfig = qconfig
    prepared = torchquant.prepare(model)
    with torch.no_grad():
        for _ in range(batches):
            prepared(torch.rand(32, 784, generator=gen))
    return prepared


@pytest.mark.parametrize("backend", torchquant.qconfig.BACKENDS)
def test_every_backend_name_runs_torchquant_kernels(backend):
    torch.manual_seed(0)
    m = MNISTMLP()
    q = torchquant.convert(_calibrated(m, torchquant.get_default_qconfig(backend)))
    assert all(type(getattr(q, n)) is nnq.Linear for n in ("fc1", "fc2", "fc3"))
    x = torch.rand(8, 784)
    torch.testing.assert_close(q(x), m(x), atol=0.05, rtol=0)


def test_prepare_does_not_modify_the_input_model():
    m = MNISTMLP()
    m.qconfig = torchquant.per_channel_qconfig
    before = {k: v.clone() for k, v in m.state_dict().items()}
    prepared = torchquant.prepare(m)
    assert not hasattr(m.fc1, "activation_post_process") and hasattr(prepared.fc1, "activation_post_process")
    prepared(torch.rand(8, 784))
    converted = torchquant.convert(prepared, inplace=False)
    assert type(prepared.fc1) is nn.Linear and type(converted.fc1) is nnq.Linear
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_state_dict_is_plain_tensors_and_round_trips(tmp_path):
    torch.manual_seed(1)
    m = MNISTMLP()
    q = torchquant.convert(_calibrated(m, torchquant.per_channel_qconfig))
    sd = q.state_dict()
    assert all(type(v) is torch.Tensor for v in sd.values())
    assert sd["fc1.qweight"].dtype == torch.int8 and sd["fc1.weight_scale"].dtype == torch.float32
    assert sd["fc1.zero_point"].dtype == torch.int32 and sd["fc1.bias"].dtype == torch.float32
    assert not any("packed" in k for k in sd)
    f = tmp_path / "q.pt"
    torch.save(sd, f)
    loaded = torch.load(f, weights_only=True)
    # A fresh model, prepared and converted after calibrating on other data, takes the state dict.
    fresh = torchquant.convert(_calibrated(MNISTMLP(), torchquant.per_channel_qconfig, seed=5))
    fresh.load_state_dict(loaded)
    x = torch.rand(16, 784)
    assert torch.equal(fresh(x), q(x))
    fp32 = io.BytesIO()
    torch.save(m.state_dict(), fp32)
    int8 = io.BytesIO()
    torch.save(sd, int8)
    assert len(fp32.getvalue()) / len(int8.getvalue()) >= 3.8


def test_per_tensor_weights_and_qconfig_none_skips():
    torch.manual_seed(2)
    m = MNISTMLP()
    m.fc3.qconfig = None  # stays float: the model must dequantize before it
    m.eval()

    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            x = self.inner.quant(x)
            x = self.inner.relu1(self.inner.fc1(x))
            x = self.inner.relu2(self.inner.fc2(x))
            return self.inner.fc3(self.inner.dequant(x))

    w = Wrapped(m)
    w.qconfig = torchquant.per_tensor_qconfig
    p = torchquant.prepare(w)
    with torch.no_grad():
        for _ in range(3):
            p(torch.rand(32, 784))
    q = torchquant.convert(p)
    assert type(q.inner.fc1) is nnq.Linear and type(q.inner.fc3) is nn.Linear
    assert q.inner.fc1.weight_scale.unique().numel() == 1  # per tensor, expanded per channel
    x = torch.rand(4, 784)
    torch.testing.assert_close(q(x), w(x), atol=0.05, rtol=0)


def test_convert_before_calibration_names_the_module():
    m = MNISTMLP().eval()
    m.qconfig = torchquant.per_channel_qconfig
    p = torchquant.prepare(m)
    with pytest.raises(RuntimeError, match="quant"):
        torchquant.convert(p)


def test_prepare_without_qconfig_warns():
    with pytest.warns(UserWarning, match="nothing will be quantized"):
        torchquant.prepare(MNISTMLP())


def test_unsupported_modules_warn_and_fall_back_to_float():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = torchquant.QuantStub()
            self.fc = nn.Linear(8, 8)
            self.norm = nn.Softmax(-1)
            self.dequant = torchquant.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.norm(self.fc(self.quant(x))))

    m = M().eval()
    m.qconfig = torchquant.per_channel_qconfig
    with pytest.warns(UserWarning, match=r"norm \(Softmax\)"):
        p = torchquant.prepare(m)
    p(torch.randn(16, 8))
    q = torchquant.convert(p)
    with pytest.warns(UserWarning, match="Softmax has no int8 implementation"):
        y = q(torch.randn(4, 8))
    assert y.dtype == torch.float32 and y.shape == (4, 8)


def test_float_into_quantized_linear_says_add_a_quantstub():
    m = nn.Sequential(nn.Linear(8, 4)).eval()
    m.qconfig = torchquant.per_channel_qconfig
    p = torchquant.prepare(m)
    p(torch.randn(4, 8))
    q = torchquant.convert(p)
    with pytest.raises(TypeError, match="add a torchquant.QuantStub"):
        q(torch.randn(2, 8))


def test_qtensor_through_torch_functions():
    q = torchquant.quantize_per_tensor(torch.randn(2, 3, 4), 0.05, 128, torch.quint8)
    f = torch.flatten(q, 1)
    assert isinstance(f, torchquant.QTensor) and f.shape == (2, 12)
    r = torch.relu(q)
    assert isinstance(r, torchquant.QTensor) and torch.equal(r.dequantize(), q.dequantize().relu())
    with pytest.warns(UserWarning, match="no int8 implementation"):
        s = torch.tanh(q)
    assert torch.equal(s, torch.tanh(q.dequantize()))


def test_fuse_modules_linear_relu():
    torch.manual_seed(3)
    m = MNISTMLP().eval()
    fused = torchquant.fuse_modules(m, [["fc1", "relu1"], ["fc2", "relu2"]])
    assert type(fused.fc1) is torchquant.nn.intrinsic.LinearReLU and type(fused.relu1) is nn.Identity
    assert type(m.fc1) is nn.Linear  # not inplace
    x = torch.rand(4, 784)
    assert torch.equal(fused(x), m(x))
    q = torchquant.convert(_calibrated(fused, torchquant.per_channel_qconfig))
    assert type(q.fc1) is nnq.LinearReLU
    torch.testing.assert_close(q(x), m(x), atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="cannot fuse"):
        torchquant.fuse_modules(m, ["relu1", "fc2"])


def test_fuse_modules_index_out_of_range_names_the_group():
    m = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(ValueError, match=r"fuse_modules: cannot find module .*index 5.* in group \['0', '5'\]"):
        torchquant.fuse_modules(m, ["0", "5"])


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_linear_with_no_inputs_or_no_outputs_converts():
    # An empty weight has nothing to quantize: its observer saw no data and convert raised
    # "run calibration data through the model", which no calibration could satisfy.
    for k, n in ((0, 3), (4, 0)):
        m = nn.Sequential(nn.Linear(k, n)).eval()
        x = torch.randn(2, k)
        d = torchquant.quantize_dynamic(m)
        assert type(d[0]) is nnq.DynamicLinear
        torch.testing.assert_close(d(x), m(x))  # in_features=0: the bias alone
        # per-tensor weights too
        d = torchquant.quantize_dynamic(m, {nn.Linear: torchquant.default_qconfig})
        torch.testing.assert_close(d(x), m(x))


@pytest.mark.parametrize("learnable", [False, True])
def test_fake_quantize_passes_empty_batches(learnable):
    # An empty batch has no statistics: FakeQuantize raised "observed no finite data" on it in
    # training (an empty last batch, or a layer that saw no tokens), or a shape error later.
    cls = torchquant.LearnableFakeQuantize if learnable else torchquant.FakeQuantize
    for kw in ({}, dict(observer=torchquant.observer.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                        quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=1)):
        fq = cls(**kw)
        for shape in ((0, 5), (5, 0)):
            x = torch.zeros(shape, requires_grad=True)
            y = fq(x)
            assert y.shape == x.shape
            y.sum().backward()
        x = torch.randn(4, 5)
        assert fq(x).shape == x.shape  # and data afterwards still works
        assert fq(torch.zeros(0, 5)).shape == (0, 5)


def test_learnable_fake_quantize_quant_max_zero():
    # LSQ's gradient scale 1 / sqrt(numel * quant_max) divided by zero for quant_max = 0.
    fq = torchquant.LearnableFakeQuantize(quant_min=-128, quant_max=0, dtype=torch.qint8)
    x = torch.randn(8, 4) - 2
    y = fq(x)
    y.sum().backward()
    assert torch.isfinite(fq.scale.grad).all()


def test_nested_sequential_and_modulelist():
    torch.manual_seed(4)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(2)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    m = nn.Sequential(torchquant.QuantStub(), Block(), nn.Dropout(0.1), nn.Linear(16, 4), torchquant.DeQuantStub()).eval()
    m.qconfig = torchquant.get_default_qconfig("x86")
    p = torchquant.prepare(m)
    with torch.no_grad():
        p(torch.randn(64, 16))
    q = torchquant.convert(p)
    assert type(q[1].layers[0][0]) is nnq.LinearReLU and type(q[3]) is nnq.Linear  # Linear+ReLU folded
    x = torch.randn(8, 16)
    torch.testing.assert_close(q(x), m(x), atol=0.05, rtol=0)


def test_quantize_dynamic_sequential_and_transformer_layer():
    torch.manual_seed(5)
    seq = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    dq = torchquant.quantize_dynamic(seq, {nn.Linear}, dtype=torch.qint8)
    assert type(dq[0]) is nnq.DynamicLinear and type(seq[0]) is nn.Linear
    x = torch.randn(5, 32)
    torch.testing.assert_close(dq(x), seq(x), atol=0.05, rtol=0.05)

    layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True).eval()
    dl = torchquant.quantize_dynamic(layer, {nn.Linear}, dtype=torch.qint8)
    assert type(dl.linear1) is nnq.DynamicLinear and type(dl.linear2) is nnq.DynamicLinear
    assert type(dl.self_attn.out_proj) is type(layer.self_attn.out_proj)  # MHA reads its weight directly
    x = torch.randn(2, 10, 64)
    with torch.no_grad():
        torch.testing.assert_close(dl(x), layer(x), atol=0.1, rtol=0.05)
    with pytest.raises(ValueError, match="qint8"):
        torchquant.quantize_dynamic(seq, {nn.Linear}, dtype=torch.float16)


def test_a_module_shared_by_two_names_stays_shared():
    # One Linear under two names of one Sequential, and one Sequential under two names of a model:
    # every name must get the int8 module (named_children lists a shared module once), and
    # the sharing survives (one int8 copy per float copy).
    torch.manual_seed(8)
    lin = nn.Linear(16, 16)
    seq = nn.Sequential(lin, nn.ReLU(), lin)
    dq = torchquant.quantize_dynamic(seq, {nn.Linear}, dtype=torch.qint8)
    assert type(dq[0]) is nnq.DynamicLinear and dq[2] is dq[0]
    x = torch.randn(4, 16)
    torch.testing.assert_close(dq(x), dq[2](torch.relu(dq[0](x))))
    torch.testing.assert_close(dq(x), seq(x), atol=0.05, rtol=0.05)

    inner = nn.Sequential(nn.Linear(8, 8), nn.ReLU())

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.first, self.second = torchquant.QuantStub(), inner, inner
            self.dequant = torchquant.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.second(self.first(self.quant(x))))

    m = Twice().eval()
    m.qconfig = torchquant.get_default_qconfig("x86")
    p = torchquant.prepare(m)
    with torch.no_grad():
        p(torch.randn(64, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no module may be left in float
        q = torchquant.convert(p)
        y = q(torch.randn(4, 8))
    assert isinstance(q.first[0], nnq.Linear) and q.second is q.first
    assert y.shape == (4, 8)


def test_qat_trains_and_converts():
    torch.manual_seed(6)
    m = MNISTMLP().train()
    m.qconfig = torchquant.get_default_qat_qconfig("x86")
    p = torchquant.prepare_qat(m)
    assert type(p.fc1) is torchquant.nn.qat.Linear and type(m.fc1) is nn.Linear
    opt = torch.optim.SGD(p.parameters(), lr=0.1)
    x = torch.rand(256, 784)
    y = (x[:, :10].argmax(1))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(p(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    p.eval()
    p.apply(torchquant.disable_observer)
    q = torchquant.convert(p)
    assert type(q.fc1) is nnq.Linear
    with torch.no_grad():
        torch.testing.assert_close(q(x[:16]), p(x[:16]), atol=0.1, rtol=0)
    with pytest.raises(ValueError, match="training mode"):
        torchquant.prepare_qat(MNISTMLP().eval())


def test_learnable_qat_qconfig_gets_gradients():
    m = nn.Sequential(torchquant.QuantStub(), nn.Linear(8, 4), torchquant.DeQuantStub()).train()
    m.qconfig = torchquant.learnable_qat_qconfig
    p = torchquant.prepare_qat(m)
    p(torch.randn(16, 8)).sum().backward()
    for fq in (p[1].weight_fake_quant, p[1].activation_post_process):
        g = fq.scale.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, type(fq).__name__
    assert p[1].weight.grad.abs().sum() > 0


def test_matches_torch_ao_within_one_step():
    import torch.ao.quantization as taq

    torch.manual_seed(7)
    for engine in ("x86", "fbgemm"):
        torch.backends.quantized.engine = engine
        m = MNISTMLP().eval()
        # The same observers on both sides (reduce_range=True keeps torch.ao's kernels exact).
        m.qconfig = taq.QConfig(activation=taq.MinMaxObserver.with_args(reduce_range=True),
                                weight=taq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric))
        ours = torchquant.QConfig(activation=torchquant.observer.MinMaxObserver.with_args(reduce_range=True),
                                  weight=torchquant.observer.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric))

        class AO(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.quant, self.dequant, self.inner = taq.QuantStub(), taq.DeQuantStub(), inner

            def forward(self, x):
                x = self.quant(x)
                x = self.inner.relu1(self.inner.fc1(x))
                x = self.inner.relu2(self.inner.fc2(x))
                return self.dequant(self.inner.fc3(x))

        ao = AO(__import__("copy").deepcopy(m)).eval()
        ao.qconfig = m.qconfig
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ao_p = taq.prepare(ao)
        m.qconfig = ours
        tq_p = torchquant.prepare(m)
        calib = torch.rand(64, 784)
        with torch.no_grad():
            ao_p(calib)
            tq_p(calib)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ao_q = taq.convert(ao_p)
        tq_q = torchquant.convert(tq_p)
        x = torch.rand(32, 784)
        with torch.no_grad():
            diff = (ao_q(x) - tq_q(x)).abs().max()
        step = tq_q.fc3.scale.item()
        assert diff <= step * 1.01, (engine, diff, step)


def test_torch_compile_fullgraph_and_export():
    torch.manual_seed(8)
    q = torchquant.convert(_calibrated(MNISTMLP(), torchquant.per_channel_qconfig))
    x = torch.rand(8, 784)
    eager = q(x)
    compiled = torch.compile(q, fullgraph=True)
    assert torch.equal(compiled(x), eager)
    ep = torch.export.export(q, (x,))
    assert torch.equal(ep.module()(x), eager)


def test_dynamic_linear_compiles_exports_and_takes_other_float_dtypes():
    torch.manual_seed(9)
    d = torchquant.quantize_dynamic(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval(), {nn.Linear},
                                    dtype=torch.qint8)
    x = torch.randn(5, 16)
    eager = d(x)
    assert torch.equal(torch.compile(d, fullgraph=True)(x), eager)
    assert torch.equal(torch.export.export(d, (x,)).module()(x), eager)
    # bfloat16 / float64 x: the kernel's float32 result, returned in x's dtype
    lin = d[0]
    for dt in (torch.bfloat16, torch.float64):
        xd = x.to(dt)
        want = torch.ops.torchquant.linear_dynamic(xd.float(), lin._packed_weight, lin._col_sums, lin.weight_scale,
                                                   lin.bias, False).to(dt)
        y = lin(xd)
        assert y.dtype == dt and torch.equal(y, want)


def test_enable_disable_observer_and_fake_quant():
    m = nn.Sequential(torchquant.QuantStub(), nn.Linear(4, 4), torchquant.DeQuantStub()).train()
    m.qconfig = torchquant.get_default_qat_qconfig()
    p = torchquant.prepare_qat(m)
    x = torch.randn(8, 4)
    p.apply(torchquant.disable_fake_quant)
    assert torch.equal(p(x), m(x))
    p.apply(torchquant.enable_fake_quant)
    p.apply(torchquant.disable_observer)
    s = p[1].activation_post_process.scale.clone()
    p(x * 100)
    assert torch.equal(s, p[1].activation_post_process.scale)


@pytest.mark.cuda
def test_converted_model_moves_to_cuda_with_same_int8_results():
    torch.manual_seed(9)
    q = torchquant.convert(_calibrated(MNISTMLP(), torchquant.per_channel_qconfig))
    x = torch.rand(16, 784)
    qi = q.quant(x)
    cpu = q.fc1(qi).int_repr()
    qc = q.to("cuda")
    assert torch.equal(qc.fc1(qi.to("cuda")).int_repr().cpu(), cpu)
    assert torch.equal(qc(x.cuda()).cpu(), q.to("cpu")(x))


def test_linear_relu_in_sequential_is_folded_bit_identically():
    torch.manual_seed(10)
    m = nn.Sequential(torchquant.QuantStub(), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8), torchquant.DeQuantStub()).eval()
    m.qconfig = torchquant.per_channel_qconfig
    p = torchquant.prepare(m)
    p(torch.randn(128, 32))
    q = torchquant.convert(p)
    assert type(q[1]) is nnq.LinearReLU and type(q[2]) is nn.Identity
    # The unfolded computation: the same int8 Linear, then the int8 ReLU.
    unfolded = nnq.Linear.from_float(p[1])
    x = torch.randn(16, 32)
    qx = q[0](x)
    assert torch.equal(q[1](qx).int_repr(), nnq.ReLU()(unfolded(qx)).int_repr())


@pytest.mark.parametrize("qconfig,match", [
    ("x86", r"the 'qconfig' of the model must be a torchquant.QConfig or None, got str 'x86'; .*get_default_qconfig\('x86'\)"),
    (5, r"the 'qconfig' of the model must be a torchquant.QConfig or None, got int 5"),
])
def test_prepare_names_a_qconfig_that_is_not_one(qconfig, match):
    # model.qconfig = "x86" gave AttributeError: 'str' object has no attribute 'activation'.
    model = nn.Sequential(torchquant.QuantStub(), nn.Linear(4, 4), torchquant.DeQuantStub())
    model.qconfig = qconfig
    with pytest.raises(TypeError, match=match):
        torchquant.prepare(model)
    model.train()
    with pytest.raises(TypeError, match=match):
        torchquant.prepare_qat(model)


def test_prepare_names_the_submodule_whose_qconfig_is_wrong():
    model = nn.Sequential(torchquant.QuantStub(), nn.Linear(4, 4), torchquant.DeQuantStub())
    model.qconfig = torchquant.get_default_qconfig("x86")
    model[1].qconfig = "fbgemm"
    with pytest.raises(TypeError, match=r"the 'qconfig' of module '1' must be"):
        torchquant.prepare(model)


@pytest.mark.parametrize("activation,weight,name", [
    (None, None, "activation"), (torchquant.MinMaxObserver, None, "weight"), ("x86", torchquant.MinMaxObserver, "activation")])
def test_qconfig_fields_must_be_observer_constructors(activation, weight, name):
    # QConfig(None, None) was accepted, then prepare failed with "'NoneType' object is not callable".
    with pytest.raises(TypeError, match=rf"QConfig: argument '{name}' must be an observer or FakeQuantize class"):
        torchquant.QConfig(activation, weight)


@pytest.mark.parametrize("data,match", [
    (5, r"calibrate: argument 'data' must be an iterable of batches .*got int$"),
    (torch.randn(3, 4), r"got Tensor \(wrap a single batch in a list: \[x\]\)"),
])
def test_calibrate_names_data_that_is_not_batches(data, match):
    # torchquant.calibrate(model, 5) said "'int' object is not iterable".
    model = nn.Sequential(torchquant.QuantStub(), nn.Linear(4, 4), torchquant.DeQuantStub())
    model.qconfig = torchquant.get_default_qconfig("x86")
    prepared = torchquant.prepare(model)
    with pytest.raises(TypeError, match=match):
        torchquant.calibrate(prepared, data)


def _quantized_linear_model():
    model = nn.Sequential(torchquant.QuantStub(), nn.Linear(4, 3), torchquant.DeQuantStub())
    model.qconfig = torchquant.get_default_qconfig("x86")
    prepared = torchquant.prepare(model)
    torchquant.calibrate(prepared, [torch.randn(8, 4)], progress=False)
    return torchquant.convert(prepared)


@pytest.mark.parametrize("key,value,match", [
    ("1.weight_zero_point", torch.tensor([0, 3, 0], dtype=torch.int32),
     r"1.weight_zero_point: the quantized Linear's int8 weights are symmetric \(zero point 0\), got non-zero "
     r"values at channel\(s\) 1"),
    ("1.weight_zero_point", torch.zeros(3), r"1.weight_zero_point: must be an integer tensor, got dtype torch.float32"),
    ("1.qweight", torch.full((3, 4), 0.7), r"1.qweight: the quantized Linear's weight must be torch.int8, got dtype "
                                            r"torch.float32"),
    ("1.qweight", torch.ones(3, 4, dtype=torch.uint8), r"1.qweight: .* got dtype torch.uint8"),
])
def test_quantized_linear_load_state_dict_refuses_what_it_would_ignore_or_cast(key, value, match):
    # A non-zero weight_zero_point was loaded and then ignored; a float qweight cast to int8
    # without a word (0.7 -> 0).
    model = _quantized_linear_model()
    sd = model.state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    sd[key] = value
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=match):
            model.load_state_dict(sd, strict=strict)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.load_state_dict(before)  # a good state dict still loads


def test_convert_warns_when_the_model_was_never_prepared():
    model = nn.Sequential(torchquant.QuantStub(), nn.Linear(4, 3), torchquant.DeQuantStub())
    model.qconfig = torchquant.get_default_qconfig("x86")
    with pytest.warns(UserWarning, match=r"convert: the model has a qconfig but no observers, so nothing was "
                                         r"quantized.*call torchquant.prepare"):
        out = torchquant.convert(model)
    assert isinstance(out[1], nn.Linear)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _quantized_linear_model()  # prepared models convert without it
        torchquant.convert(nn.Sequential(nn.Linear(4, 3)))  # no qconfig: nothing to say
