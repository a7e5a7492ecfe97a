"""CNN modules besides convolution: FloatFunctional -> QFunctional (torchquant's and torch.ao's
FloatFunctional), quantized BatchNorm / BN-ReLU / activations / norms, bn-relu fusion, and a
module with no int8 version staying float inside a quantized model."""
import copy
import io
import operator
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchquant as tq
from torchquant import QTensor, reference
from torchquant.nn import quantized as nnq


def _calibrate_convert(model, batches, qconfig=None):
    model.qconfig = qconfig or tq.get_default_qconfig("x86")
    p = tq.prepare(model)
    with torch.no_grad():
        for x in batches:
            p(x)
    return tq.convert(p)


class Residual(nn.Module):
    def __init__(self, ff_cls):
        super().__init__()
        self.quant = tq.QuantStub()
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 16)
        self.ff = ff_cls()
        self.ff2 = ff_cls()
        self.ff3 = ff_cls()
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        y = self.ff.add_relu(self.fc1(x), x)
        z = self.ff2.mul(self.fc2(y), y)
        return self.dequant(self.ff3.cat([y, z], 1))


@pytest.mark.parametrize("ff_cls", [nnq.FloatFunctional, torch.ao.nn.quantized.FloatFunctional])
def test_float_functional_becomes_qfunctional(ff_cls):
    torch.manual_seed(0)
    m = Residual(ff_cls).eval()
    batches = [torch.randn(32, 16) for _ in range(4)]
    q = _calibrate_convert(m, batches)
    assert type(q.ff) is nnq.QFunctional and type(q.ff3) is nnq.QFunctional
    x = torch.randn(8, 16)
    with torch.no_grad():
        ref, y = m(x), q(x)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    sq = 10 * torch.log10(ref.pow(2).sum() / (ref - y).pow(2).sum())
    assert sq > 25, float(sq)
    # The QFunctional's add is the kernel's: the same bytes as the oracle.
    a = q.quant(x)
    b = q.fc1(a)
    got = q.ff.add_relu(b, a)
    want = reference.add(b.data, b.scale, b.zero_point, a.data, a.scale, a.zero_point, q.ff.scale, q.ff.zero_point, True)
    assert torch.equal(got.data, want)


def test_qfunctional_scalar_ops():
    q = tq.quantize_per_tensor(torch.linspace(-2, 3, 50), 0.05, 60, torch.quint8)
    f = nnq.QFunctional(0.1, 0, torch.quint8)
    for c in (0.5, -0.25, 10.0, 0.0):
        y = f.add_scalar(q, c)
        assert isinstance(y, QTensor)
        assert float((y.dequantize() - (q.dequantize() + c)).abs().max()) <= y.q_scale() / 2 + 1e-6
        z = f.mul_scalar(q, c)
        assert float((z.dequantize() - q.dequantize() * c).abs().max()) <= max(z.q_scale(), 1e-6) / 2 + 1e-6
    # add_scalar by a multiple of the scale keeps the codes (the zero point moves)
    y = f.add_scalar(q, 0.5)
    assert torch.equal(y.data, q.data) and y.q_zero_point() == 50


def test_qfunctional_quantizes_float_operands():
    f = nnq.QFunctional(0.02, 128, torch.quint8)
    q = tq.quantize_per_tensor(torch.randn(4, 5), 0.02, 128, torch.quint8)
    y = f.add(q, torch.ones(4, 5))
    assert torch.allclose(y.dequantize(), (q.dequantize() + 1).clamp(max=(255 - 128) * 0.02), atol=0.021)


@pytest.mark.parametrize("float_mod, qcls", [
    (nn.BatchNorm2d(6), nnq.BatchNorm2d), (nn.Hardswish(), nnq.Hardswish), (nn.ELU(0.7), nnq.ELU),
    (nn.LeakyReLU(0.2), nnq.LeakyReLU), (nn.Sigmoid(), nnq.Sigmoid), (nn.LayerNorm([6, 5, 5]), nnq.LayerNorm),
    (nn.GroupNorm(3, 6), nnq.GroupNorm), (nn.InstanceNorm2d(6, affine=True), nnq.InstanceNorm2d),
    (nn.ReLU6(), nnq.ReLU6), (nn.Dropout(0.3), nnq.Dropout), (nn.PReLU(6, 0.3), nnq.PReLU), (nn.PReLU(), nnq.PReLU),
])
def test_float_computing_modules(float_mod, qcls):
    torch.manual_seed(1)
    if isinstance(float_mod, nn.BatchNorm2d):
        float_mod.running_mean.uniform_(-1, 1)
        float_mod.running_var.uniform_(0.5, 2)
        float_mod.weight.data.uniform_(0.5, 1.5)
    m = nn.Sequential(tq.QuantStub(), float_mod, tq.DeQuantStub()).eval()
    batches = [torch.randn(4, 6, 5, 5) for _ in range(3)]
    q = _calibrate_convert(m, batches)
    assert type(q[1]) is qcls
    x = batches[0]
    with torch.no_grad():
        y = q(x)
        ref = m(x)
    out = q[1](q[0](x))
    assert isinstance(out, QTensor)
    # within the two roundings (input and output quantization) plus the op's slope
    tol = 3 * (q[0].scale.item() + (out.q_scale()))
    assert float((y - ref).abs().max()) <= tol


def test_bn_relu_fusion_and_torch_ao_bn_relu():
    torch.manual_seed(2)
    m = nn.Sequential(tq.QuantStub(), nn.BatchNorm2d(4), nn.ReLU(), tq.DeQuantStub()).eval()
    m[1].running_mean.uniform_(-1, 1)
    fused = tq.fuse_modules(m, [["1", "2"]])
    assert type(fused[1]) is tq.nn.intrinsic.BNReLU2d and type(fused[2]) is nn.Identity
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(fused(x), m(x))
    q = _calibrate_convert(fused, [torch.randn(2, 4, 3, 3)])
    assert type(q[1]) is nnq.BNReLU2d
    assert float(q(x).min()) >= 0
    ao_fused = torch.ao.quantization.fuse_modules(m, [["1", "2"]])
    q2 = _calibrate_convert(ao_fused, [torch.randn(2, 4, 3, 3)])
    assert type(q2[1]) is nnq.BNReLU2d


def test_pooling_modules_stay_and_run_int8():
    m = nn.Sequential(tq.QuantStub(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2),
                      tq.DeQuantStub()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "stays in float" warning for pooling
        q = _calibrate_convert(m, [torch.randn(2, 3, 8, 8)])
        assert type(q[1]) is nn.MaxPool2d
        y = q(torch.randn(2, 3, 8, 8))
    assert y.shape == (2, 2)


class WithFloatModule(nn.Module):
    """quant -> fc -> Softmax (no int8 version) -> fc -> dequant, and a float-region module."""

    def __init__(self):
        super().__init__()
        self.pre = nn.Softmin(-1)
        self.quant = tq.QuantStub()
        self.fc1 = nn.Linear(8, 8)
        self.soft = nn.Softmax(-1)
        self.fc2 = nn.Linear(8, 4)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.fc2(self.soft(self.fc1(self.quant(self.pre(x))))))


def test_module_without_int8_version_stays_float_and_the_model_runs():
    torch.manual_seed(3)
    m = WithFloatModule().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    with pytest.warns(UserWarning, match=r"stay in float: pre \(Softmin\), soft \(Softmax\)") as rec:
        p = tq.prepare(m)
    assert len([w for w in rec if "stay in float" in str(w.message)]) == 1
    for _ in range(3):
        p(torch.randn(16, 8))
    q = tq.convert(p)
    assert type(q.soft) is nn.Softmax and type(q.fc2) is nnq.Linear
    x = torch.randn(4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = q(x)
        # before the QuantStub the Softmin gets float and returns float; inside, Softmax's output is quantized
        assert isinstance(q.pre(x), torch.Tensor)
        mid = q.soft(q.fc1(q.quant(x)))
    assert isinstance(mid, QTensor)
    with torch.no_grad():
        ref = m(x)
    assert float((y - ref).abs().max()) < 0.05


def test_float_functional_under_qat():
    torch.manual_seed(4)
    m = Residual(torch.ao.nn.quantized.FloatFunctional).train()
    m.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(m)
    assert isinstance(p.ff.activation_post_process, tq.FakeQuantize)
    opt = torch.optim.SGD(p.parameters(), lr=0.01)
    for _ in range(3):
        loss = p(torch.randn(8, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    q = tq.convert(p.eval())
    assert type(q.ff) is nnq.QFunctional
    x = torch.randn(4, 16)
    with torch.no_grad():
        assert float((q(x) - p(x)).abs().max()) < 0.1


def test_uncalibrated_qfunctional_raises_when_called():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = tq.QuantStub()
            self.unused = nnq.FloatFunctional()
            self.dequant = tq.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.quant(x))

    q = _calibrate_convert(M().eval(), [torch.randn(2, 3)])
    assert type(q.unused) is nnq.QFunctional
    a = q.quant(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="'unused'.*never called during calibration"):
        q.unused.add(a, a)


def test_module_never_run_in_calibration_stays_float():
    """An auxiliary head that runs only in training (googlenet's aux1/aux2) has empty observers:
    convert leaves it float with a warning naming it; with no calibration at all, convert raises."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = tq.QuantStub()
            self.fc = nn.Linear(4, 4)
            self.aux = nn.Linear(4, 2)
            self.dequant = tq.DeQuantStub()

        def forward(self, x):
            y = self.fc(self.quant(x))
            return self.dequant(self.aux(y) if self.training else y)

    m = M().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    with pytest.raises(RuntimeError, match="could not be quantized"):
        tq.convert(p)
    p(torch.randn(8, 4))
    with pytest.warns(UserWarning, match=r"never ran during calibration and stay in float: aux \(Linear\)"):
        q = tq.convert(p)
    assert type(q.fc) is nnq.Linear and type(q.aux) is nn.Linear
    assert q(torch.randn(2, 4)).shape == (2, 4)


class _FunctionalResidual(nn.Module):
    """A block written as models usually are, with `+` and `*` instead of FloatFunctional (as
    torchvision's RegNet, MNASNet and EfficientNet blocks)."""

    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.gate = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = torch.relu(self.conv1(self.quant(x)))
        x = self.conv2(x) + x  # QTensor + QTensor
        x = torch.sigmoid(self.gate(x)) * x  # squeeze-excitation-like gate
        return self.dequant(self.head(x))


def test_functional_arithmetic_between_int8_modules_runs():
    torch.manual_seed(0)
    model = _FunctionalResidual().eval()
    calib = [torch.randn(2, 3, 12, 12) for _ in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _calibrate_convert(model, calib)
    x = torch.randn(2, 3, 12, 12)
    with pytest.warns(UserWarning) as record:
        y = q(x)
    messages = " ".join(str(w.message) for w in record)
    assert "Conv2d 'head' received a float tensor" in messages  # named, with its class
    assert all(type(m) is nnq.Conv2d for m in (q.conv2, q.gate, q.head))
    with torch.no_grad():
        ref = model(x)
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (ref - y).pow(2).sum())
    assert sqnr > 25, float(sqnr)
    # The same block before this support raised TypeError at `+`; torch.ao's converted model
    # cannot run it either (its quantized tensors have no add).


def test_float_input_qparams_are_saved_and_loaded():
    """The qparams a module quantizes float inputs with come from calibration: they are in the
    state dict, so a model rebuilt from other calibration data and loaded gives the same outputs
    (a skeleton calibrated on data of another range kept its own, 28x off, and loaded silently)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _calibrate_convert(_FunctionalResidual().eval(), [torch.randn(2, 3, 12, 12) for _ in range(3)])
        torch.manual_seed(1)
        skeleton = _calibrate_convert(_FunctionalResidual().eval(), [0.05 * torch.rand(2, 3, 12, 12)])
        x = torch.randn(2, 3, 12, 12)
        sd = q.state_dict()
        assert {"conv2.float_input_scale", "conv2.float_input_zero_point", "head.float_input_scale"} <= set(sd)
        assert not torch.equal(skeleton.head.float_input_scale, q.head.float_input_scale)
        buf = io.BytesIO()
        torch.save(sd, buf)
        buf.seek(0)
        skeleton.load_state_dict(torch.load(buf, weights_only=True))
        assert torch.equal(skeleton(x), q(x))
        sd["head.float_input_scale"] = torch.tensor([0.0])
        with pytest.raises(RuntimeError, match="float_input_scale.*> 0"):
            skeleton.load_state_dict(sd)
        # half of the pair is an error; a module saved without them (it raised on a float input)
        # loads as one without them
        del sd["head.float_input_scale"]
        with pytest.raises(RuntimeError, match="head.float_input_zero_point"):
            copy.deepcopy(skeleton).load_state_dict(sd)
        del sd["head.float_input_zero_point"]
        skeleton.load_state_dict(sd)
        assert "float_input_scale" not in skeleton.head._buffers
        with pytest.raises(TypeError, match="add a torchquant.QuantStub"):
            skeleton(x)
        # a state dict from before the qparams were saved (version 1) keeps the skeleton's own
        old = {k: v for k, v in q.state_dict().items() if "float_input" not in k}
        old = type(sd)(old)
        old._metadata = {k: dict(v, version=1) if k in ("conv2", "gate", "head") else v
                         for k, v in q.state_dict()._metadata.items()}
        fresh = _calibrate_convert(_FunctionalResidual().eval(), [0.05 * torch.rand(2, 3, 12, 12)])
        own = fresh.head.float_input_scale.clone()
        fresh.load_state_dict(old)
        assert torch.equal(fresh.head.float_input_scale, own)
        # the buffers follow a dtype cast unchanged and a deep copy
        assert torch.equal(copy.deepcopy(q).half()(x), q(x).half())  # the output follows the cast


def test_float_input_fallback_compiles_fullgraph():
    """The one-time warning of a float input (and of a function run in float) is not traced:
    torch.compile(fullgraph=True) works on the first call, and gives eager's result."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = _calibrate_convert(_FunctionalResidual().eval(), [torch.randn(2, 3, 12, 12) for _ in range(3)])
    x = torch.randn(2, 3, 12, 12)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(q, fullgraph=True, backend="eager")
        y = compiled(x)
        assert torch.equal(y, q(x))


class _Block(nn.Module):
    """A ResNet basic block: one ReLU module after the first BatchNorm and after the add."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block = _Block()
        self.tap = nn.Conv2d(4, 4, 1)  # its output feeds two modules: not fused with either
        self.bn_a, self.bn_b = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 64, 8), nn.ReLU())

    def forward(self, x):
        x = self.block(self.stem(x))
        t = self.tap(x)
        return self.head(self.bn_a(t) + self.bn_b(t))


def test_find_fusable_modules_follows_the_calls():
    torch.manual_seed(0)
    model = _Net().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    groups = tq.find_fusable_modules(model)
    assert groups == [["stem.0", "stem.1", "stem.2"], ["block.conv1", "block.bn1"], ["block.conv2", "block.bn2"],
                      ["head.1", "head.2"]]
    assert type(model.block.relu) is nn.ReLU  # the model is not changed
    fused = tq.fuse_modules(model, groups)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-5)
    assert type(fused.block.relu) is nn.ReLU  # still there for the residual


def test_find_fusable_modules_names_what_it_cannot_trace():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x  # data-dependent: torch.fx cannot trace it

    with pytest.raises(RuntimeError, match="find_fusable_modules: torch.fx could not trace the model"):
        tq.find_fusable_modules(Branchy())


class _Arith(nn.Module):
    """Arithmetic between modules as plain models write it, and some that must stay as it is."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.relu = nn.ReLU()
        self.pos = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        a = self.relu(self.conv1(x))
        b = self.conv2(a)
        b += a                          # in place, followed by the shared ReLU module: add_relu
        b = self.relu(b)
        c = F.relu(self.conv3(b) + b)   # add_relu through F.relu
        d = c * 0.5 + 1.0               # mul_scalar, add_scalar
        e = 2 * d                       # a number on the left
        f = torch.cat([e, c], 1)        # cat
        g = f[:, :8] * f[:, 8:]         # mul
        h = g + self.pos                # a parameter: left as it is
        n = h.size(1) + 1               # shape arithmetic: left as it is
        k = h - c                       # sub: no FloatFunctional method, left as it is
        pooled = torch.cat([k.mean((2, 3)), h.amax((2, 3))], 1)
        return self.fc(pooled) * (n - 8)


def test_make_quantizable_rewrites_functional_arithmetic():
    torch.manual_seed(0)
    model = _Arith().eval()
    x = torch.randn(2, 4, 6, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = tq.make_quantizable(model, x)
    assert isinstance(model, _Arith) and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert set(gm.state_dict()) == set(before)  # the same names: a checkpoint loads into either
    methods = sorted(n.target for n in gm.graph.nodes if n.op == "call_method"
                     and isinstance(n.args[0], torch.fx.Node) and n.args[0].op == "get_attr"
                     and isinstance(gm.get_submodule(n.args[0].target), tq.nn.quantized.FloatFunctional))
    assert methods == ["add_relu", "add_relu", "add_scalar", "cat", "cat", "mul", "mul_scalar", "mul_scalar"]
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert ops.count(__import__("operator").sub) == 2  # h - c, n - 8
    assert sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == "relu") == 1  # the first use
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))  # float: the same ops
    wrapped = nn.Sequential(tq.QuantStub(), gm, tq.DeQuantStub()).eval()
    wrapped.qconfig = tq.get_default_qconfig("x86")
    prepared = tq.prepare(wrapped)
    gen = torch.Generator().manual_seed(1)
    for _ in range(8):
        prepared(torch.randn(8, 4, 6, 6, generator=gen))
    q = tq.convert(prepared)
    functionals = [m for m in q.modules() if isinstance(m, nnq.QFunctional)]
    assert len(functionals) == 8  # one per rewritten call
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = q(x)
    fallbacks = {str(w.message).split(" ")[0] for w in caught if "no int8 implementation" in str(w.message)}
    # left in float: the parameter add, sub, amax, and the product with a traced int (n - 8)
    assert fallbacks <= {"add", "sub", "amax", "mean", "mul"}  # each warns once per process
    ref = model(x)
    assert (10 * torch.log10(ref.pow(2).mean() / (ref - y).pow(2).mean())) > 15


def test_make_quantizable_keeps_training_state_and_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    model[1].eval()  # a frozen BatchNorm stays frozen
    stats = model[1].running_mean.clone()
    gm = tq.make_quantizable(model, torch.randn(2, 3, 5, 5))
    assert gm.training and gm.get_submodule("0").training and not gm.get_submodule("1").training
    assert torch.equal(gm.get_submodule("1").running_mean, stats) and torch.equal(model[1].running_mean, stats)


def test_make_quantizable_names_what_it_cannot_trace_or_run():
    class Branchy(nn.Module):
        def forward(self, x):
            return x + 1 if x.sum() > 0 else x

    with pytest.raises(RuntimeError, match="make_quantizable: torch.fx could not trace.*torchquant.quantize_dynamic"):
        tq.make_quantizable(Branchy(), torch.randn(2))

    class WithKwargs(nn.Module):
        def forward(self, x, **kwargs):
            return x + 1

    with pytest.raises(TypeError, match=r"'example_kwargs' needs a forward whose parameters are all named .*"
                                        r"also takes \*args or \*\*kwargs"):
        tq.make_quantizable(WithKwargs(), example_kwargs={"x": torch.randn(2)})
    with pytest.raises(RuntimeError, match="make_quantizable: running the traced model"):
        tq.make_quantizable(nn.Sequential(nn.Linear(4, 2)), torch.randn(2, 5))
    with pytest.raises(TypeError, match="argument 'model' must be an nn.Module"):
        tq.make_quantizable(lambda x: x, torch.randn(2))


@pytest.mark.parametrize("act", [nn.SiLU(), nn.GELU(), nn.GELU(approximate="tanh"), nn.Mish(), nn.Tanh(),
                                 nn.Softplus(beta=2.0), nn.CELU(0.5), nn.Hardswish(), nn.ELU(0.7),
                                 nn.LeakyReLU(0.2), nn.Sigmoid(), nn.PReLU(init=0.3)], ids=lambda m: repr(m))
@pytest.mark.parametrize("act_dtype", [torch.quint8, torch.qint8])
def test_elementwise_activations_are_one_table_lookup(act, act_dtype):
    # An elementwise activation converts to a module that looks each code up in a 256-entry
    # table: bit for bit the dequantize -> float function -> quantize of the same qparams.
    torch.manual_seed(2)
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 6, 3), act, nn.Conv2d(6, 4, 1), tq.DeQuantStub()).eval()
    observer = tq.MinMaxObserver.with_args(dtype=act_dtype, qscheme=torch.per_tensor_affine)
    m.qconfig = tq.QConfig(activation=observer, weight=tq.default_per_channel_weight_observer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "stays in float" warning, no float fallback
        p = tq.prepare(m)
        for _ in range(3):
            p(torch.randn(2, 3, 12, 12) * 2)
        q = tq.convert(p)
        x = torch.randn(2, 3, 12, 12) * 2
        y = q(x)
    lookup = q[2]
    assert isinstance(lookup, (nnq.LookupActivation, nnq.Hardswish, nnq.ELU, nnq.LeakyReLU, nnq.Sigmoid, nnq.PReLU))
    qx = q[1](q[0](x))
    got = lookup(qx)
    lo, hi = (0, 255) if act_dtype == torch.quint8 else (-128, 127)
    want = torch.ops.torchquant.quantize(act(qx.dequantize()), lookup.scale, lookup.zero_point, None, lo, hi,
                                         qx.data.dtype)
    assert torch.equal(got.data, want) and got.data.is_contiguous(memory_format=torch.channels_last)
    ref = m(x)
    assert float(10 * torch.log10(ref.pow(2).mean() / (ref - y).pow(2).mean())) > 25
    # the table is built once per input qparams, and again when they change in place
    table = lookup._table_cache[2]
    lookup(qx)
    assert lookup._table_cache[2] is table
    with torch.no_grad():
        q[1].scale.mul_(1.5)  # the producing conv's output scale, as a load_state_dict would change it
    qx2 = q[1](q[0](x))
    want2 = torch.ops.torchquant.quantize(act(qx2.dequantize()), lookup.scale, lookup.zero_point, None, lo, hi,
                                          qx2.data.dtype)
    assert torch.equal(lookup(qx2).data, want2) and lookup._table_cache[2] is not table
    assert torch.equal(copy.deepcopy(q)(x), q(x))
    assert torch.equal(torch.export.export(q, (x,)).module()(x), q(x))
    # under inference_mode (qparams that are inference tensors: no version counter), same codes
    y_now = q(x)
    with torch.inference_mode():
        assert torch.equal(q(x), y_now)
        qx3 = q[1](q[0](x))
        qx3 = QTensor._make(qx3.data, qx3.scale.clone(), qx3.zero_point.clone(), None, qx3.qmin, qx3.qmax)
        assert qx3.scale.is_inference() and torch.equal(lookup(qx3).data, want2)
    # qparams swapped through .data (no version bump) rebuild the table too
    s_old = q[1].scale.detach().clone()
    q[1].scale.data = s_old * 0.5
    qx4 = q[1](q[0](x))
    want4 = torch.ops.torchquant.quantize(act(qx4.dequantize()), lookup.scale, lookup.zero_point, None, lo, hi,
                                          qx4.data.dtype)
    assert torch.equal(lookup(qx4).data, want4)


def test_lookup_table_follows_the_function_settings_and_any_layout():
    torch.manual_seed(0)
    q = nnq.LookupActivation(nn.ELU(1.0), scale=0.03, zero_point=60)
    x = torch.randn(2, 5, 7, 3) * 2
    qx = tq.quantize_per_tensor(x, 0.02, 128, torch.quint8)
    def want(mod):
        return torch.ops.torchquant.quantize(mod.fn(qx.dequantize()), mod.scale, mod.zero_point, None, 0, 255,
                                             torch.uint8)
    assert torch.equal(q(qx).data, want(q))
    q.fn.alpha = 0.3  # the function's setting changes: the table follows
    assert torch.equal(q(qx).data, want(q))
    lrelu = nnq.LeakyReLU(negative_slope=0.1)
    lrelu.negative_slope = 0.5
    assert ("negative_slope", 0.5) in lrelu._fn_key()
    # any input layout: output strides as empty_like's (what the fake kernel gives), same codes
    table = torch.randint(0, 256, (256,), dtype=torch.uint8)
    a = torch.randint(0, 256, (4, 6, 5, 3), dtype=torch.uint8)
    for view in (a, a.transpose(1, 3), a[:, ::2], a.permute(0, 2, 3, 1), a[..., 1], a.contiguous(memory_format=torch.channels_last)):
        got = torch.ops.torchquant.lookup_table(view, table)
        assert torch.equal(got, table[view.long()]) and got.stride() == torch.empty_like(view).stride()
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = torch.ops.torchquant.lookup_table(mode.from_tensor(view), mode.from_tensor(table))
        assert fake.stride() == got.stride()


def test_lookup_activation_state_dict_and_repr():
    m = nn.Sequential(tq.QuantStub(), nn.SiLU(), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(torch.randn(8, 5))
    q = tq.convert(p)
    assert set(q[1].state_dict()) == {"scale", "zero_point"} and "SiLU" in repr(q[1])
    q(torch.randn(3, 5))
    fresh = copy.deepcopy(q)
    fresh[1].load_state_dict(q[1].state_dict())
    assert fresh[1]._table_cache is None  # the cache is not copied
    # in a float part of the model (before the QuantStub) it is the float function
    x = torch.randn(3, 5)
    assert torch.equal(q[1](x), F.silu(x))


class _InPlace(nn.Module):
    """In-place arithmetic, which torch.fx traces as out of place: harmless for `b += a` (nothing
    else reads b), not when a view of the operand or the caller's input sees the write."""

    def __init__(self, case):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.case = case

    def forward(self, x):
        a = self.conv(x)
        b = self.relu(self.bn(self.conv(x)))
        b += a                 # nothing else reads b (or bn's output): fine out of place
        if self.case == "view":
            v = a[:, :2]
            a += x             # v sees the write in the model, not in the trace
            return torch.cat([v, b], 1)
        if self.case == "input":
            x += 1.0           # the caller's input changes in the model, not in the trace
        return b


@pytest.mark.parametrize("case", ["local", "view", "input"])
def test_make_quantizable_refuses_inplace_ops_the_trace_would_change(case):
    torch.manual_seed(0)
    model = _InPlace(case).eval()
    x = torch.randn(2, 4, 5, 5)
    if case != "local":
        with pytest.raises(RuntimeError, match="in-place op"):
            tq.make_quantizable(model, x)
        return
    gm = tq.make_quantizable(model, x)
    assert [n.target for n in gm.graph.nodes if n.op == "call_method"] == ["add"]
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))


class _PlainBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)) + x)


class _PlainNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.blocks = nn.Sequential(_PlainBlock(), _PlainBlock())
        self.unused = nn.Linear(2, 2)  # in the state dict, never called
        self.register_buffer("table", torch.arange(3.0))  # never read
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        h = self.blocks(self.stem(x))
        return self.head(torch.cat([h.mean((2, 3))], 1))


def test_make_quantizable_keeps_the_model_whole_and_pickles():
    import io

    torch.manual_seed(0)
    model = _PlainNet().eval()
    model.blocks[1].train()          # a mode of its own, kept
    model.stem.qconfig = None        # a container's qconfig, kept
    fused = tq.fuse_modules(copy.deepcopy(model), [["stem.0", "stem.1"]])
    x = torch.randn(2, 3, 8, 8)
    gm = tq.make_quantizable(fused, x)
    assert set(gm.state_dict()) == set(fused.state_dict())
    gm.load_state_dict(fused.state_dict(), strict=True)
    assert type(gm.stem) is nn.Sequential and gm.stem.qconfig is None and isinstance(gm.unused, nn.Linear)
    assert type(gm.stem[0]).__name__ == "ConvReLU2d"  # a fused module stays one call
    assert any(n.op == "call_module" and n.target == "stem.0" for n in gm.graph.nodes)
    assert not gm.training and gm.blocks[1].training and not gm.blocks[0].training
    # each block's add + ReLU lives in the block, named as a module of its own
    assert isinstance(gm.blocks[0].functional_add_relu, tq.nn.quantized.FloatFunctional)
    assert gm.blocks[1].functional_add_relu.training
    gm.blocks[1].eval()
    with torch.no_grad():
        want = fused.eval()(x)
        assert torch.equal(gm(x), want)
    # a GraphModule pickles (torch.save traces its code again on load): float, then converted
    buf = io.BytesIO()
    torch.save(gm, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert isinstance(again.blocks[0].functional_add_relu, tq.nn.quantized.FloatFunctional)
    wrapped = nn.Sequential(tq.QuantStub(), again, tq.DeQuantStub()).eval()
    wrapped.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(wrapped)
    p(x)
    q = tq.convert(p)
    assert isinstance(q[1].blocks[0].functional_add_relu, nnq.QFunctional)
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), q(x))


def test_make_quantizable_takes_torch_ao_float_functionals():
    # torch.ao's FloatFunctional (torchvision's quantizable blocks hold them) is recorded as a call,
    # not traced through, and becomes torchquant's
    from torch.ao.nn.quantized import FloatFunctional as AoFF

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.skip = AoFF()

        def forward(self, x):
            return self.skip.add_relu(self.conv(x), x) * 2.0

    model = M().eval()
    x = torch.randn(1, 3, 4, 4)
    gm = tq.make_quantizable(model, x)
    assert type(gm.skip) is tq.nn.quantized.FloatFunctional and type(model.skip) is AoFF
    calls = sorted(n.target for n in gm.graph.nodes if n.op == "call_method")
    assert calls == ["add_relu", "mul_scalar"]
    assert torch.equal(gm(x), model(x))


def test_float_functional_with_qconfig_none_stays_float_and_runs():
    # a FloatFunctional excluded from quantization (qconfig None, as one would leave a
    # transformer's residual adds in float) keeps working after convert: its add takes the int8
    # operands' float values
    torch.manual_seed(0)
    block = _PlainBlock()
    model = tq.make_quantizable(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), block).eval(), torch.randn(1, 3, 6, 6))
    ff = model.get_submodule("1.functional_add_relu")
    ff.qconfig = None
    wrapped = nn.Sequential(tq.QuantStub(), model, tq.DeQuantStub()).eval()
    wrapped.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(wrapped)
    x = torch.randn(2, 3, 6, 6)
    p(x)
    q = tq.convert(p)
    kept = q[1].get_submodule("1.functional_add_relu")
    assert type(kept) is tq.nn.quantized.FloatFunctional and isinstance(kept.activation_post_process, nn.Identity)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = q(x)
    ref = wrapped(x)
    assert type(y) is torch.Tensor and y.shape == ref.shape
    assert float(10 * torch.log10(ref.pow(2).mean() / (ref - y).pow(2).mean())) > 20


def test_make_quantizable_takes_list_dict_and_non_finite_outputs():
    # the model / trace comparison looks at the leaves: torch.fx's immutable list and dict equal
    # the model's list and dict; NaN and inf in the outputs (log of negatives) compare equal
    class Pyramid(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            p = self.a(x)
            q = self.b(p) + p
            return {"out": [p, q], "log": torch.log(q) + p, "inf": q / 0.0}

    torch.manual_seed(0)
    model = Pyramid().eval()
    x = torch.randn(2, 3, 4, 4)
    gm = tq.make_quantizable(model, x)
    got, want = gm(x), model(x)
    assert set(got) == {"out", "log", "inf"} and torch.equal(got["out"][1], want["out"][1])
    assert torch.isnan(want["log"]).any()
    assert sorted(n.target for n in gm.graph.nodes if n.op == "call_method") == ["add", "add"]


def test_make_quantizable_takes_keyword_example_inputs():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

        def forward(self, x, gate=None, scale: float = 2.0):
            h = self.a(x)
            if gate is not None:
                h = h * self.b(gate)
            return h * scale

    torch.manual_seed(0)
    model = Gated().eval()
    x, g = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    gm = tq.make_quantizable(model, (x,), example_kwargs={"gate": g})
    assert torch.equal(gm(x, gate=g), model(x, gate=g))
    # h * gate-conv becomes an int8 mul; `scale` is an input (a placeholder), left as it is
    assert [n.target for n in gm.graph.nodes if n.op == "call_method"] == ["mul"]
    gm = tq.make_quantizable(model, example_kwargs={"x": x, "gate": g, "scale": 3.0})
    assert torch.equal(gm(x, g), model(x, g))
    with pytest.raises(TypeError, match="example_kwargs.*Gated.forward.*unexpected keyword argument 'gat'"):
        tq.make_quantizable(model, (x,), example_kwargs={"gat": g})
    with pytest.raises(TypeError, match="'example_kwargs' must be a dict"):
        tq.make_quantizable(model, (x,), example_kwargs=[g])


class _Activations(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 1) for _ in range(8))

    def forward(self, x):
        c = self.convs
        h = F.silu(c[0](x))
        h = F.gelu(c[1](h), approximate="tanh")
        h = c[2](h).sigmoid()
        h = torch.tanh(c[3](h))
        h = F.leaky_relu(c[4](h), 0.2)
        h = F.elu(c[5](h), alpha=0.5)
        h = F.softplus(c[6](h), 2.0)
        return c[7](h) * torch.sigmoid(x)  # the input's sigmoid: in the graph too


def test_make_quantizable_turns_activation_functions_into_modules():
    # elementwise activations called as functions become modules (so that prepare observes them
    # and convert makes them int8 table lookups), with the function's settings
    torch.manual_seed(0)
    model = _Activations().eval()
    x = torch.randn(2, 4, 5, 5)
    gm = tq.make_quantizable(model, x)
    acts = [gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"
            and not isinstance(gm.get_submodule(n.target), nn.Conv2d)]
    assert [type(a).__name__ for a in acts] == ["SiLU", "GELU", "Sigmoid", "Tanh", "LeakyReLU", "ELU", "Softplus",
                                                "Sigmoid"]
    assert acts[1].approximate == "tanh" and acts[4].negative_slope == 0.2 and acts[5].alpha == 0.5
    assert acts[6].beta == 2.0
    assert isinstance(gm.activation_silu, nn.SiLU)  # registered where the call was made (the root)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
    wrapped = nn.Sequential(tq.QuantStub(), gm, tq.DeQuantStub()).eval()
    wrapped.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left in float
        p = tq.prepare(wrapped)
        p(x)
        q = tq.convert(p)
        y = q(x)
    lookups = [m for m in q.modules() if isinstance(m, (nnq.LookupActivation, nnq.Sigmoid, nnq.ELU, nnq.LeakyReLU))]
    assert len(lookups) == 8
    ref = model(x)
    assert float(10 * torch.log10(ref.pow(2).mean() / (ref - y).pow(2).mean())) > 15


@pytest.mark.parametrize("bn_cls,conv_cls,shape", [(nn.BatchNorm2d, nn.Conv2d, (2, 3, 8, 8)),
                                                   (nn.BatchNorm3d, nn.Conv3d, (2, 3, 4, 6, 6))])
def test_batchnorm_with_batch_statistics_stays_float(bn_cls, conv_cls, shape):
    # track_running_stats=False: the BatchNorm normalizes with each batch's statistics, in eval
    # mode too. It has no int8 form (an int8 BatchNorm with its default buffers would not
    # normalize at all): it stays float, named in prepare's warning, and is not folded.
    torch.manual_seed(0)
    base = nn.Sequential(conv_cls(3, 4, 3), bn_cls(4, track_running_stats=False), nn.ReLU(), conv_cls(4, 4, 1)).eval()
    assert tq.find_fusable_modules(base) == []  # in no group, [bn, relu] included
    with pytest.raises(ValueError, match=r"'1' \(%s\) has track_running_stats=False" % bn_cls.__name__):
        tq.fuse_modules(base, [["0", "1", "2"]])
    x = torch.randn(*shape)
    with torch.no_grad():
        want = base(x)
    for fuse in (False, True):
        model = tq.fuse_modules(base, [["1", "2"]]) if fuse else copy.deepcopy(base)  # a float BNReLU
        model = nn.Sequential(tq.QuantStub(), model, tq.DeQuantStub()).eval()
        model.qconfig = tq.get_default_qconfig("x86")
        with pytest.warns(UserWarning, match=r"stay in float: 1\.1(\.0)? \(%s: track_running_stats=False" % bn_cls.__name__):
            p = tq.prepare(model)
        for _ in range(4):
            p(torch.randn(*shape))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = tq.convert(p)
            with torch.no_grad():
                got = q(x)
        bn = q[1][1][0] if fuse else q[1][1]
        assert type(bn) is bn_cls
        assert isinstance(q[1][0], (nnq.Conv2d, nnq.Conv3d))
        sqnr = 10 * torch.log10(want.pow(2).sum() / (got - want).pow(2).sum())
        assert sqnr > 20  # an int8 BatchNorm with default statistics (no normalization) gave ~0 dB


def test_casting_a_converted_model_keeps_the_float32_buffers_of_every_int8_module():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.elu, self.silu = nn.ELU(), nn.SiLU()
            self.add = nnq.FloatFunctional()
            self.bn, self.ln, self.gn = nn.BatchNorm2d(4), nn.LayerNorm(8), nn.GroupNorm(2, 4)
            self.inorm = nn.InstanceNorm2d(4, affine=True)

        def forward(self, x):
            x = self.quant(x)
            y = self.add.add(self.silu(self.elu(self.conv(x))), x)
            return self.dequant(self.inorm(self.gn(self.ln(self.bn(y)))))

    torch.manual_seed(0)
    m = Net().eval()
    m.bn.running_mean.uniform_(-1, 1)
    m.bn.running_var.uniform_(0.5, 2)
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    for _ in range(4):
        p(torch.randn(2, 4, 8, 8))
    q = tq.convert(p)
    x = torch.randn(2, 4, 8, 8)
    want = q(x)
    for cast in (lambda mod: mod.half(), lambda mod: mod.double(), lambda mod: mod.to(torch.bfloat16)):
        c = cast(copy.deepcopy(q))
        for name, b in c.named_buffers():
            if name.endswith("_output_dtype"):  # DeQuantize's float output follows the cast
                continue
            assert b.dtype in (torch.float32, torch.int32, torch.int8, torch.uint8, torch.int64), (name, b.dtype)
        y = c(x)
        assert torch.equal(y, want.to(y.dtype)) and y.dtype != torch.float32


class _SEGate(nn.Module):
    # MobileNetV3's squeeze-excitation: Hardsigmoid gate, FloatFunctional mul, scalar ops, and a
    # cat of two branches with their own qparams.
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv, self.side = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.fc = nn.Conv2d(4, 4, 1)
        self.gate = nn.Hardsigmoid()
        self.mul, self.shift, self.scale = nnq.FloatFunctional(), nnq.FloatFunctional(), nnq.FloatFunctional()

    def forward(self, x):
        x = self.quant(x)
        h = self.conv(x)
        g = self.gate(self.fc(F.adaptive_avg_pool2d(h, 1)))
        h = self.mul.mul(h, g)
        h = self.scale.mul_scalar(self.shift.add_scalar(h, 0.5), -2.0)
        return self.dequant(torch.cat([h, self.side(x)], 1))


def test_converted_se_block_compiles_fullgraph_and_exports():
    torch.manual_seed(0)
    m = _SEGate().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    for _ in range(3):
        p(torch.randn(2, 3, 6, 6))
    q = tq.convert(p)
    assert type(q.gate) is nnq.Hardsigmoid
    x = torch.randn(2, 3, 6, 6)
    want = q(x)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(q, fullgraph=True, backend="eager")(x), want)
    assert torch.equal(torch.export.export(q, (x,)).module()(x), want)


@pytest.mark.parametrize("dtype", [torch.quint8, torch.qint8])
def test_add_scalar_qparams_follow_the_rule_in_plain_python(dtype):
    # The tensor arithmetic (no host read, traceable) against the rule on Python floats: the zero
    # point moved by round(c / scale) when it stays in range, else choose_qparams over the range
    # shifted by c; and the codes against dequantize -> + c -> quantize with those qparams.
    import random

    rng = random.Random(0)
    ff = nnq.QFunctional()
    lo, hi = (0, 255) if dtype == torch.quint8 else (-128, 127)
    moved = shifted = 0
    for _ in range(200):
        q = tq.quantize_per_tensor(torch.randn(3, 5) * 3, rng.choice([0.05, 0.013, 1e-3, 0.7, 3.0]),
                                   rng.randint(lo, hi), dtype)
        c = rng.choice([0.5, -0.75, 2.0, 100.0, -1e3, 0.025, 0.0125, 1e-9, 7.5, 0.0])
        got = ff.add_scalar(q, c)
        s, zx = float(q.scale), int(q.zero_point)
        z = zx - round(c / s)
        if lo <= z <= hi:
            moved += 1
            scale, zp = q.scale.reshape(1).float(), torch.tensor([z], dtype=torch.int32)
        else:
            shifted += 1
            scale, zp = torch.ops.torchquant.choose_qparams(torch.tensor([(lo - zx) * s + c], dtype=torch.float32),
                                                            torch.tensor([(hi - zx) * s + c], dtype=torch.float32),
                                                            lo, hi)
            scale, zp = scale.float(), zp.to(torch.int32)
        assert torch.equal(got.scale, scale) and torch.equal(got.zero_point, zp), (q, c)
        assert torch.equal(got.data, torch.ops.torchquant.add_scalar(q.data, q.scale, q.zero_point, c, scale, zp,
                                                                      q.data.dtype))
    assert moved and shifted  # both branches taken
    with pytest.raises(ValueError, match="'c' must be finite, got inf"):
        ff.add_scalar(q, float("inf"))


@pytest.mark.parametrize("op", ["add", "add_relu", "mul", "cat"])
def test_qfunctional_with_a_float_operand_computes_in_float(op):
    # A float operand (a part of the model that ran in float) used to be quantized with the
    # output's qparams: add_relu zeroed its negative values before the add (about 1 dB).
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant, self.ff = tq.QuantStub(), tq.DeQuantStub(), nnq.FloatFunctional()

        def forward(self, x, y):
            a = self.quant(x)
            return self.dequant(self.ff.cat([a, y], 0) if op == "cat" else getattr(self.ff, op)(a, y))

    torch.manual_seed(0)
    x = torch.randn(1000)
    y = -0.5 * x
    m = M().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    want = p(x, y)
    got = tq.convert(p)(x, y)
    sqnr = 10 * torch.log10(want.pow(2).sum() / (got - want).pow(2).sum())
    assert sqnr > 30, float(sqnr)
    # and a scalar op on a float input gives the float result
    ff = nnq.QFunctional()
    assert torch.equal(ff.add_scalar(y, 0.5), y + 0.5) and torch.equal(ff.mul_scalar(y, -2.0), y * -2.0)


def test_dequant_stub_dequantizes_a_container_of_outputs():
    import collections

    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.c(x)
            return collections.OrderedDict(out=y, aux=[y, 1], pair=(y, "name"))

    torch.manual_seed(0)
    w = nn.Sequential(tq.QuantStub(), Seg(), tq.DeQuantStub()).eval()
    w.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(w)
    p(torch.randn(1, 3, 8, 8))
    q = tq.convert(p)
    out = q(torch.randn(1, 3, 8, 8))
    assert type(out) is collections.OrderedDict and list(out) == ["out", "aux", "pair"]
    assert all(type(t) is torch.Tensor for t in (out["out"], out["aux"][0], out["pair"][0]))
    assert out["aux"][1] == 1 and out["pair"][1] == "name"


def test_make_quantizable_traces_buffer_arithmetic_and_keeps_the_state_dict():
    # torchvision's FrozenBatchNorm2d (detection backbones) computes its scale and shift from its
    # buffers in forward: they stay graph nodes reading the buffers (not trace-time constants), and
    # the residual add after it gets no float-operand clipping.
    FrozenBatchNorm2d = pytest.importorskip("torchvision.ops.misc").FrozenBatchNorm2d

    def net(seed):
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Conv2d(3, 8, 3), FrozenBatchNorm2d(8), nn.ReLU()).eval()
        with torch.no_grad():
            m[1].weight.uniform_(0.5, 2)
            m[1].bias.normal_()
            m[1].running_mean.normal_()
            m[1].running_var.uniform_(0.5, 2)
        return m

    x = torch.randn(1, 3, 16, 16)
    a, b = net(0), net(1)
    mq = tq.make_quantizable(a, x)
    assert set(mq.state_dict()) == set(a.state_dict())
    mq.load_state_dict(b.state_dict(), strict=True)
    assert torch.equal(mq(x), b(x))
    assert not [n for n in mq.graph.nodes if n.op == "call_method" and n.target in ("mul", "add")]


class _HelperConv3d(nn.Conv3d):
    # as torchvision's video models' Conv3DSimple: nn.Conv3d plus a static helper
    @staticmethod
    def downsample_stride(stride):
        return stride, stride, stride


class _ScaledConv3d(nn.Conv3d):
    def forward(self, x):  # a computation of its own: stays float
        return super().forward(x) * 2


@pytest.mark.parametrize("plain_path", [True, False])
def test_convolution_subclasses_that_compute_as_their_base_are_quantized(plain_path):
    torch.manual_seed(0)
    m = nn.Sequential(_HelperConv3d(3, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(),
                      _ScaledConv3d(4, 4, 1)).eval()
    x = torch.randn(1, 3, 4, 6, 6)
    if not plain_path:
        m = tq.make_quantizable(m, x)
    assert tq.find_fusable_modules(m) == [["0", "1", "2"]]
    fused = tq.fuse_modules(m, tq.find_fusable_modules(m))
    assert type(m.get_submodule("0")) is _HelperConv3d  # the model given is not changed
    w = nn.Sequential(tq.QuantStub(), fused, tq.DeQuantStub()).eval()
    w.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = tq.prepare(w)
        p(x)
        q = tq.convert(p)
        got = q(x)
    assert type(q[1].get_submodule("0")) is nnq.ConvReLU3d
    if plain_path:  # (make_quantizable traces the subclass with a forward of its own into F.conv3d)
        assert type(q[1].get_submodule("3")) is _ScaledConv3d
        assert any("stay in float: 1.3 (_ScaledConv3d)" in str(c.message) for c in caught)
    with torch.no_grad():
        want = m(x)
    assert 10 * torch.log10(want.pow(2).sum() / (got - want).pow(2).sum()) > 25


def test_attention_with_a_bool_mask_after_convert_and_an_encoder_calibrated_on_its_fast_path():
    # MultiheadAttention / TransformerEncoder take QTensor inputs dequantized on entry (a QTensor's
    # quint8 dtype would set the masks' dtype); observers take the nested tensors of the
    # encoder's fast path (eval, no grad, padding mask) as their values.
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.dq = tq.QuantStub(), tq.DeQuantStub()
            self.ln = nn.LayerNorm(32)
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 1)
            self.fc = nn.Linear(32, 32)

        def forward(self, x, kpm):
            h = self.ln(self.q(x))
            a, _ = self.attn(h, h, h, key_padding_mask=kpm, need_weights=False)
            return self.dq(self.fc(self.enc(a, src_key_padding_mask=kpm)))

    torch.manual_seed(0)
    m = Block().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    kpm = torch.zeros(2, 8, dtype=torch.bool)
    kpm[0, 5:] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(m)
        with torch.no_grad():
            for _ in range(4):
                p(torch.randn(2, 8, 32), kpm)
        q = tq.convert(p)
        x = torch.randn(2, 8, 32)
        with torch.no_grad():
            want, got = m(x, kpm), q(x, kpm)
    valid = ~kpm  # (the float fast path writes 0 at padded positions)
    sqnr = 10 * torch.log10(want[valid].pow(2).sum() / (got[valid] - want[valid]).pow(2).sum())
    assert sqnr > 20, float(sqnr)


@pytest.mark.parametrize("num_parameters", [1, 6])
@pytest.mark.parametrize("act_dtype", [torch.quint8, torch.qint8])
def test_prelu_is_the_float_function_of_the_codes(num_parameters, act_dtype):
    # nn.PReLU converts (torch.ao maps it too): prelu of the dequantized input with the float
    # slopes, requantized; one slope is a table lookup, per-channel slopes (some negative) are
    # computed elementwise. Bit for bit the dequantize -> F.prelu -> quantize path.
    torch.manual_seed(3)
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 6, 3), nn.PReLU(num_parameters), tq.DeQuantStub()).eval()
    with torch.no_grad():
        m[2].weight.uniform_(-0.5, 0.8)
    observer = tq.MinMaxObserver.with_args(dtype=act_dtype, qscheme=torch.per_tensor_affine)
    m.qconfig = tq.QConfig(activation=observer, weight=tq.default_per_channel_weight_observer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # mapped: no "stays in float" warning
        p = tq.prepare(m)
        for _ in range(3):
            p(torch.randn(2, 3, 10, 10))
        q = tq.convert(p)
    assert type(q[2]) is nnq.PReLU and q[2].num_parameters == num_parameters
    assert set(q[2].state_dict()) == {"scale", "zero_point", "weight"}
    x = torch.randn(2, 3, 10, 10)
    qx = q[1](q[0](x))
    lo, hi = (0, 255) if act_dtype == torch.quint8 else (-128, 127)

    def want(mod, qx):
        return torch.ops.torchquant.quantize(F.prelu(qx.dequantize(), mod.weight), mod.scale, mod.zero_point,
                                             None, lo, hi, qx.data.dtype)

    got = q[2](qx)
    assert torch.equal(got.data, want(q[2], qx))
    assert got.data.is_contiguous(memory_format=torch.channels_last)  # the conv's layout, kept
    contiguous = QTensor._make(qx.data.contiguous(), qx.scale, qx.zero_point, None, qx.qmin, qx.qmax)
    assert torch.equal(q[2](contiguous).data, want(q[2], qx)) and q[2](contiguous).data.is_contiguous()
    ref = m(x)
    assert float(10 * torch.log10(ref.pow(2).mean() / (ref - q(x)).pow(2).mean())) > 25
    # the slopes can change in place (the table follows), or through set_weight
    with torch.no_grad():
        q[2].weight.mul_(-1)
    assert torch.equal(q[2](qx).data, want(q[2], qx))
    q[2].set_weight(torch.full((num_parameters,), 0.1))
    assert torch.equal(q[2](qx).data, want(q[2], qx))
    # state dict round trip into a module built directly, and torch.export
    fresh = nnq.PReLU(num_parameters=num_parameters, dtype=act_dtype)
    fresh.load_state_dict(q[2].state_dict())
    assert torch.equal(fresh(qx).data, q[2](qx).data)
    y = q(x)
    assert torch.equal(torch.export.export(q, (x,)).module()(x), y)
    # a wrong channel count is torch's error; a wrong set_weight is named
    with pytest.raises(RuntimeError):
        nnq.PReLU(0.1, 0, num_parameters=4)(tq.quantize_per_tensor(torch.randn(2, 6, 3, 3), 0.1, 0, torch.quint8))
    with pytest.raises(ValueError, match="argument 'w' must be a float tensor of 6"):
        nnq.PReLU(0.1, 0, num_parameters=6).set_weight(torch.ones(3))
    with pytest.raises(ValueError, match="argument 'num_parameters' must be >= 1, got 0"):
        nnq.PReLU(0.1, 0, num_parameters=0)


def test_prelu_qat_converts_to_what_it_trained():
    torch.manual_seed(4)
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 6, 3), nn.PReLU(6), tq.DeQuantStub()).train()
    m.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(m)
    opt = torch.optim.SGD(p.parameters(), 0.01)
    for _ in range(3):
        loss = p(torch.randn(2, 3, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    p.eval()
    q = tq.convert(p)
    assert type(q[2]) is nnq.PReLU and torch.equal(q[2].weight, p[2].weight.detach())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert float((q(x) - p(x)).abs().max()) <= 2 * (q[1].scale.item() + q[2].scale.item())
    # torch.ao's own quantized PReLU accepts only one weight scale; torchquant's slopes stay float
    assert q[2].weight.dtype == torch.float32


@pytest.mark.parametrize("mod", [nn.BatchNorm2d(16), nn.GroupNorm(4, 16), nn.InstanceNorm2d(16, affine=True),
                                 nn.LayerNorm([16, 6, 6]), nn.PReLU(16)], ids=lambda m: type(m).__name__)
def test_float_inside_modules_keep_channels_last_codes(mod):
    # Between two convolutions the codes are channels-last: the modules that compute in float
    # dequantize and requantize them in that layout (no transposing copies), with the codes of
    # the contiguous computation.
    torch.manual_seed(5)
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 16, 3, padding=1), mod, nn.Conv2d(16, 4, 1),
                      tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(torch.randn(2, 3, 6, 6))
    q = tq.convert(p)
    qx = q[1](q[0](torch.randn(2, 3, 6, 6)))
    assert qx.data.is_contiguous(memory_format=torch.channels_last) and not qx.data.is_contiguous()
    got = q[2](qx)
    flat = QTensor._make(qx.data.contiguous(), qx.scale, qx.zero_point, None, qx.qmin, qx.qmax)
    want = q[2](flat)
    assert torch.equal(got.data, want.data)
    if not isinstance(mod, (nn.InstanceNorm2d, nn.LayerNorm)):  # their float ops return contiguous
        assert got.data.is_contiguous(memory_format=torch.channels_last)


def test_hand_built_modules_take_torch_ao_arguments_and_load_a_converted_state_dict(tmp_path):
    # torch.ao's constructors (scale / zero_point / weight / bias / device / dtype) build a module
    # that loads a converted one's state dict and then computes the same
    torch.manual_seed(3)
    float_mods = {
        "bn": nn.BatchNorm2d(4), "hs": nn.Hardswish(), "sig": nn.Sigmoid(), "lrelu": nn.LeakyReLU(0.2),
        "elu": nn.ELU(0.7), "ln": nn.LayerNorm([4, 5, 5]), "gn": nn.GroupNorm(2, 4),
        "inorm": nn.InstanceNorm2d(4, affine=True),
    }
    built = {
        "bn": nnq.BatchNorm2d(4, 1e-5, 0.1, device="cpu", dtype=torch.float32), "hs": nnq.Hardswish(0.1, 3),
        "sig": nnq.Sigmoid(0.1, 3), "lrelu": nnq.LeakyReLU(0.1, 3, negative_slope=0.2, inplace=False),
        "elu": nnq.ELU(0.1, 3, alpha=0.7), "ln": nnq.LayerNorm([4, 5, 5], torch.ones(4, 5, 5), torch.zeros(4, 5, 5), 0.1, 3),
        "gn": nnq.GroupNorm(2, 4, torch.ones(4), torch.zeros(4), 0.1, 3),
        "inorm": nnq.InstanceNorm2d(4, torch.ones(4), torch.zeros(4), 0.1, 3, affine=True),
    }
    x = torch.randn(3, 4, 5, 5)
    qx = tq.quantize_per_tensor(x, 0.03, 120, torch.quint8)
    for name, fm in float_mods.items():
        with torch.no_grad():
            for p in fm.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        if isinstance(fm, nn.BatchNorm2d):
            fm.running_mean.uniform_(-0.5, 0.5)
            fm.running_var.uniform_(0.5, 2)
        m = nn.Sequential(tq.QuantStub(), fm, tq.DeQuantStub()).eval()
        m.qconfig = tq.get_default_qconfig("x86")
        p = tq.prepare(m)
        p(x)
        conv = tq.convert(p)[1]
        h = built[name]
        assert h(qx).data.shape == qx.data.shape  # runs as built (its own qparams)
        path = tmp_path / f"{name}.pt"
        torch.save(conv.state_dict(), path)
        h.load_state_dict(torch.load(path, weights_only=True))
        assert torch.equal(h(qx).data, conv(qx).data), name
        assert torch.equal(h.scale, conv.scale) and torch.equal(h.zero_point, conv.zero_point)
    with pytest.raises(ValueError, match="argument 'dtype'.*torch.qint8"):
        nnq.Hardswish(0.1, 3, dtype=torch.qint8)
    with pytest.raises(ValueError, match="argument 'weight' must be a tensor of shape \\(4,\\)"):
        nnq.GroupNorm(2, 4, torch.ones(3), None, 0.1, 3)
    for groups in (4, 0, -2, 2.5):  # as nn.GroupNorm, at construction
        with pytest.raises(ValueError, match=f"argument 'num_groups' .* divisor of num_channels \\(6\\), got {groups}"):
            nnq.GroupNorm(groups, 6)
    assert "3, 6, eps=1e-05" in repr(nnq.GroupNorm(3, 6))


def test_a_checkpoint_with_other_activation_dtype_is_refused(tmp_path):
    def model(qc, seed):
        torch.manual_seed(seed)
        m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 4, 3), nn.Hardswish(), tq.DeQuantStub()).eval()
        m.qconfig = qc
        p = tq.prepare(m)
        p(torch.randn(2, 3, 8, 8))
        return tq.convert(p)

    qc8 = tq.QConfig(activation=tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
                     weight=tq.default_per_channel_weight_observer)
    saved = model(qc8, 0)
    skeleton = model(tq.get_default_qconfig("x86"), 1)
    torch.save(saved.state_dict(), tmp_path / "s.pt")
    sd = torch.load(tmp_path / "s.pt", weights_only=True)
    before = {k: v.clone() for k, v in skeleton.state_dict().items()}
    with pytest.raises(RuntimeError) as e:
        skeleton.load_state_dict(sd)
    for where, cls in (("0", "Quantize"), ("1", "Conv2d"), ("2", "Hardswish")):
        assert f"{where}: the checkpoint's activations are qint8, this quantized {cls}'s are quint8" in str(e.value)
    assert all(torch.equal(v, skeleton.state_dict()[k]) for k, v in before.items())
    # the same dtype loads (and a state dict without the record, as torch.ao's, loads by shape)
    same = model(qc8, 2)
    same.load_state_dict(sd)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(same(x), saved(x))
    plain = {k: v for k, v in sd.items()}  # a plain dict: no _metadata
    model(qc8, 3).load_state_dict(plain)


def test_a_module_that_saw_only_nan_is_an_error_not_a_module_that_never_ran():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.fc1, self.fc2, self.dequant = tq.QuantStub(), nn.Linear(4, 4), nn.Linear(4, 4), tq.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.fc2(self.fc1(self.quant(x))))

    torch.manual_seed(0)
    m = M().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    x = torch.randn(3, 4)
    x[:, 0] = float("nan")  # every row holds a NaN: fc1's and fc2's outputs are all NaN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p(x)
        with pytest.raises(RuntimeError, match=r"module 'fc1' \(Linear\) could not be quantized: .*no finite data "
                                                r"\(it skipped 12 NaN"):
            tq.convert(p)


@pytest.mark.parametrize("make,qat_cls", [
    # each of these ran, with a part lost or gained, or as another operation
    (lambda: tq.nn.intrinsic.ConvBn2d(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)), "Conv2d"),
    (lambda: tq.nn.intrinsic.LinearReLU(nn.Linear(4, 4), nn.ReLU()), "Linear"),
    (lambda: nn.Linear(4, 4), "LinearReLU"),
    (lambda: tq.nn.intrinsic.ConvBnReLU2d(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.ReLU()), "ConvBn2d"),
    (lambda: tq.nn.intrinsic.ConvBn2d(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)), "ConvBnReLU2d"),
    (lambda: nn.ConvTranspose2d(2, 2, 3), "Conv2d"),
    (lambda: nn.Conv3d(2, 2, 1), "Conv2d"),
    (lambda: type("Scaled", (nn.Linear,), {"forward": lambda self, x: 0.5 * nn.Linear.forward(self, x)})(4, 4),
     "Linear"),
])
def test_qat_from_float_refuses_a_module_of_another_kind(make, qat_cls):
    mod = make()
    mod.qconfig = tq.get_default_qat_qconfig("x86")
    with pytest.raises(TypeError, match=rf"qat.{qat_cls}.from_float takes a .* got "):
        getattr(tq.nn.qat, qat_cls).from_float(mod)


def test_qat_from_float_takes_subclasses_and_torch_ao_fused_modules_and_refuses_bn_without_statistics():
    import torch.ao.nn.intrinsic as aoi
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

    qc = tq.get_default_qat_qconfig("x86")
    for cls, mod in ((tq.nn.qat.Linear, NonDynamicallyQuantizableLinear(4, 4)),
                     (tq.nn.qat.LinearReLU, aoi.LinearReLU(nn.Linear(4, 4), nn.ReLU())),
                     (tq.nn.qat.ConvBnReLU2d, aoi.ConvBnReLU2d(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.ReLU())),
                     (tq.nn.qat.Conv3d, type("Conv3DSimple", (nn.Conv3d,), {})(2, 2, 1))):
        mod.qconfig = qc
        assert type(cls.from_float(mod)) is cls
    for fused in (tq.nn.intrinsic.ConvBn2d(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, track_running_stats=False)),
                  tq.nn.intrinsic.LinearBn1d(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False))):
        fused.qconfig = qc
        qat_cls = tq.nn.qat.ConvBn2d if isinstance(fused[0], nn.Conv2d) else tq.nn.qat.LinearBn1d
        with pytest.raises(ValueError, match=r"its BatchNorm has no running statistics \(track_running_stats=False\)"):
            qat_cls.from_float(fused)


@pytest.mark.parametrize("d,shape", [(1, (3, 10)), (2, (3, 4, 4)), (2, (3, 8, 8)), (3, (3, 4, 5, 6))])
@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_takes_unbatched_input_as_the_float_module(d, shape, affine):
    # instance_norm read an unbatched [C, *spatial] input's channels as its batch: 2.6 dB where
    # C == H, errors about weights of 32 elements otherwise.
    torch.manual_seed(0)
    conv, norm = getattr(nn, f"Conv{d}d")(2, 3, 1), getattr(nn, f"InstanceNorm{d}d")(3, affine=affine)
    m = nn.Sequential(tq.QuantStub(), conv, norm, tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(torch.randn(4, 2, *shape[1:]))
    q = tq.convert(p)
    x = torch.randn(2, *shape[1:])
    assert torch.equal(q(x), q(x.unsqueeze(0)).squeeze(0))
    with pytest.raises(ValueError) as want:
        norm(torch.randn(3, *shape[1:], 2, 2))
    with pytest.raises(ValueError, match=re.escape(str(want.value))):
        q[2](q[1](q[0](torch.randn(1, 2, *shape[1:]))).reshape(1, 3, *shape[1:], 1))


_PAD_AND_SHUFFLE = [
    (lambda: nn.ZeroPad1d((1, 2)), lambda q: F.pad(q, (1, 2)), 1),
    (lambda: nn.ZeroPad2d((1, 2, 0, 1)), lambda q: F.pad(q, (1, 2, 0, 1)), 2),
    (lambda: nn.ZeroPad3d(1), lambda q: F.pad(q, (1,) * 6), 3),
    (lambda: nn.ConstantPad1d(2, 0.37), lambda q: F.pad(q, (2, 2), value=0.37), 1),
    (lambda: nn.ConstantPad2d((1, 0, 2, 1), -0.61), lambda q: F.pad(q, (1, 0, 2, 1), value=-0.61), 2),
    # a value outside the input's range: saturates to the end code, as F.pad on the QTensor
    (lambda: nn.ConstantPad2d(1, 50.0), lambda q: F.pad(q, (1, 1, 1, 1), value=50.0), 2),
    (lambda: nn.ConstantPad3d(1, 0.25), lambda q: F.pad(q, (1,) * 6, value=0.25), 3),
    (lambda: nn.ReflectionPad1d(2), lambda q: F.pad(q, (2, 2), mode="reflect"), 1),
    (lambda: nn.ReflectionPad2d((2, 1, 1, 2)), lambda q: F.pad(q, (2, 1, 1, 2), mode="reflect"), 2),
    (lambda: nn.ReflectionPad3d(1), lambda q: F.pad(q, (1,) * 6, mode="reflect"), 3),
    (lambda: nn.ReplicationPad1d(2), lambda q: F.pad(q, (2, 2), mode="replicate"), 1),
    (lambda: nn.ReplicationPad2d(2), lambda q: F.pad(q, (2,) * 4, mode="replicate"), 2),
    (lambda: nn.ReplicationPad3d(1), lambda q: F.pad(q, (1,) * 6, mode="replicate"), 3),
    (lambda: nn.CircularPad1d(2), lambda q: F.pad(q, (2, 2), mode="circular"), 1),
    (lambda: nn.CircularPad2d((1, 2, 2, 1)), lambda q: F.pad(q, (1, 2, 2, 1), mode="circular"), 2),
    (lambda: nn.CircularPad3d(1), lambda q: F.pad(q, (1,) * 6, mode="circular"), 3),
    (lambda: nn.PixelShuffle(2), lambda q: F.pixel_shuffle(q, 2), 2),
    (lambda: nn.PixelUnshuffle(2), lambda q: F.pixel_unshuffle(q, 2), 2),
    (lambda: nn.ChannelShuffle(2), lambda q: F.channel_shuffle(q, 2), 2),
    (lambda: nn.Unflatten(1, (2, 4)), lambda q: q.unflatten(1, (2, 4)), 2),
]


@pytest.mark.parametrize("make, functional, nd", _PAD_AND_SHUFFLE)
def test_padding_and_shuffle_modules_pass_qtensors_through_as_their_functional_forms(make, functional, nd):
    # they were observed, warned about ("no int8 implementation") and run in float between a
    # dequantize and a requantize with qparams of their own: now they stay as they are, with no
    # observer and no warning, and give the codes of their functional form on the QTensor
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
    torch.manual_seed(0)
    mod = make()
    m = nn.Sequential(tq.QuantStub(), conv(3, 8, 1), nn.ReLU(), mod, tq.DeQuantStub()).eval()
    shape = (2, 3) + (6,) * nd
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.qconfig = tq.get_default_qconfig("x86")
        p = tq.prepare(m)
        assert not hasattr(p[3], "activation_post_process")
        for _ in range(2):
            p(torch.randn(shape))
        q = tq.convert(p)
        assert type(q[3]) is type(mod) and not q[3]._forward_hooks and not q[3]._forward_pre_hooks
        x = torch.randn(shape)
        h = q[2](q[1](q[0](x)))
        got = q[3](h)
        y = q(x)
    want = functional(h)
    assert isinstance(got, QTensor) and isinstance(want, QTensor)
    assert torch.equal(got.data, want.data) and got.scale is h.scale and got.zero_point is h.zero_point
    assert torch.equal(y, want.dequantize())
    with torch.no_grad():
        ref = m(x)
    assert y.shape == ref.shape


_DROPOUTS = [(nn.Dropout1d, (2, 3, 6), 1), (nn.Dropout2d, (2, 3, 6, 6), 2), (nn.Dropout3d, (2, 3, 4, 4, 4), 3),
             (nn.AlphaDropout, (2, 3, 6, 6), 2), (nn.FeatureAlphaDropout, (2, 3, 6, 6), 2)]


@pytest.mark.parametrize("drop_cls, shape, nd", _DROPOUTS)
def test_channel_and_alpha_dropout_pass_qtensors_through_as_dropout(drop_cls, shape, nd):
    # as nn.Dropout: no observer, no warning, a QTensor passes through unchanged (it was
    # dequantized, run in float and requantized with a second observer's qparams)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), conv(3, 8, 1), nn.ReLU(), drop_cls(0.3), conv(8, 4, 1), tq.DeQuantStub()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.qconfig = tq.get_default_qconfig("x86")
        p = tq.prepare(m)
        assert not hasattr(p[3], "activation_post_process")
        p(torch.randn(shape))
        q = tq.convert(p)
        assert type(q[3]).__name__ == drop_cls.__name__ and isinstance(q[3], drop_cls)
        assert type(q[3]) is getattr(nnq, drop_cls.__name__) and q[3].p == 0.3 and not q[3].training
        x = torch.randn(shape)
        h = q[2](q[1](q[0](x)))
        assert q[3](h) is h
        assert torch.equal(q(x), q[5](q[4](h)))
        q.train()
        assert q[3](h) is h  # (nnq.Dropout passes a QTensor through in training mode too)
    # a float input gets the float module's dropout (its own channel-wise / alpha kind)
    f = torch.ones(shape)
    torch.manual_seed(5)
    got = q[3](f)
    torch.manual_seed(5)
    assert torch.equal(got, drop_cls(0.3).train()(f))
    q.eval()
    assert torch.equal(q[3](f), f)
