"""torchvision's quantizable models through torchquant's eager flow (fuse_model, prepare,
calibrate, convert), as docs/eager_api.md says to write it: the int8 logits' SQNR against fp32
is no worse than torch.ao's converted model on the same calibration data, minus 1 dB."""
import copy
import warnings

import pytest
import torch
from torch import nn

import torchquant as tq

tvq = pytest.importorskip("torchvision.models.quantization")


def _sqnr(ref, y):
    return float(10 * torch.log10(ref.double().pow(2).sum() / (ref.double() - y.double()).pow(2).sum().clamp_min(1e-30)))


def _with_bn_statistics(model, batches, seed):
    """Random weights with the default BatchNorm statistics give vanishing activations (logits
    ~1e-10 for MobileNetV2); statistics of its own activations (cumulative average over a few
    random 64x64 batches) normalize it as training would. Returns the model in eval mode."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    model.train()
    with torch.no_grad():
        for s in range(batches):
            model(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed + s)))
    return model.eval()


def _quantize(model, calib, flow):
    m = copy.deepcopy(model)
    if flow == "torchquant":
        m.qconfig = tq.get_default_qconfig("x86")
        m.fuse_model()
        tq.prepare(m, inplace=True)
        for x in calib:
            m(x)
        return tq.convert(m, inplace=True)
    import torch.ao.quantization as ao
    torch.backends.quantized.engine = "x86"
    m.qconfig = ao.get_default_qconfig("x86")
    m.fuse_model()
    ao.prepare(m, inplace=True)
    for x in calib:
        m(x)
    return ao.convert(m, inplace=True)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x1_0"])
def test_torchvision_model_sqnr_matches_torch_ao(name):
    torch.manual_seed(0)
    model = _with_bn_statistics(getattr(tvq, name)(weights=None, quantize=False), batches=3, seed=100)
    gen = torch.Generator().manual_seed(1)
    calib = [torch.rand(2, 3, 64, 64, generator=gen) for _ in range(2)]
    test = torch.rand(2, 3, 64, 64, generator=gen)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = model(test)
        q = _quantize(model, calib, "torchquant")
        y = q(test)
        y_ao = _quantize(model, calib, "ao")(test)
    assert isinstance(y, torch.Tensor) and y.shape == ref.shape and y.dtype == torch.float32
    s, s_ao = _sqnr(ref, y), _sqnr(ref, y_ao)
    assert float(ref.abs().mean()) > 1e-2, "degenerate fp32 logits: the comparison would mean nothing"
    assert s > 3.0, f"{name}: torchquant {s:.2f} dB"
    assert s >= s_ao - 1.0, f"{name}: torchquant {s:.2f} dB, torch.ao {s_ao:.2f} dB"
    # Every convolution and elementwise module runs int8 (none stayed float).
    from torch.ao.nn.quantized import FloatFunctional
    left = [type(m).__name__ for m in q.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, FloatFunctional))]
    assert not left, left


@pytest.mark.parametrize("name", ["mnasnet0_5", "regnet_x_400mf"])
def test_plain_torchvision_model_with_functional_residuals_converts_and_runs(name):
    # Not one of the quantizable models: residuals are written `a + b`, so the float adds run
    # between int8 convolutions (docs/eager_api.md, "Modules with no int8 version").
    import torchvision

    torch.manual_seed(0)
    model = _with_bn_statistics(torchvision.models.get_model(name, weights=None), batches=2, seed=200)
    wrapped = torch.nn.Sequential(tq.QuantStub(), model, tq.DeQuantStub()).eval()
    wrapped.qconfig = tq.get_default_qconfig("x86")
    gen = torch.Generator().manual_seed(1)
    calib = [torch.rand(2, 3, 64, 64, generator=gen) for _ in range(2)]
    test = torch.rand(2, 3, 64, 64, generator=gen)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(wrapped)
        for x in calib:
            p(x)
        q = tq.convert(p)
        ref, y = wrapped(test), q(test)
    assert float(ref.abs().mean()) > 1e-2
    assert _sqnr(ref, y) > 3.0, _sqnr(ref, y)
    assert not [n for n, m in q.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


@pytest.mark.parametrize("name", ["resnet18", "regnet_x_400mf"])
def test_make_quantizable_plain_model_runs_its_residuals_int8(name):
    # make_quantizable turns the `a + b` residuals (and add + ReLU) into FloatFunctional modules:
    # after convert every add runs on int8 codes (no float fallback), and the logits are no worse
    # than the plain model's with float residuals, less 1 dB.
    import torchvision

    torch.manual_seed(0)
    model = _with_bn_statistics(torchvision.models.get_model(name, weights=None), batches=2, seed=300)
    gen = torch.Generator().manual_seed(2)
    calib = [torch.rand(2, 3, 64, 64, generator=gen) for _ in range(2)]
    test = torch.rand(2, 3, 64, 64, generator=gen)
    results = {}
    for rewrite in (False, True):
        m = tq.make_quantizable(model, calib[0]) if rewrite else copy.deepcopy(model)
        if rewrite:
            import operator
            assert not [n for n in m.graph.nodes if n.op == "call_function" and n.target in (operator.add,
                                                                                              operator.iadd)]
        m = tq.fuse_modules(m, tq.find_fusable_modules(m))
        wrapped = torch.nn.Sequential(tq.QuantStub(), m, tq.DeQuantStub()).eval()
        wrapped.qconfig = tq.get_default_qconfig("x86")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = tq.prepare(wrapped)
            for x in calib:
                p(x)
            q = tq.convert(p)
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = q(test)
        results[rewrite] = (_sqnr(model(test), y), [str(w.message) for w in caught])
    sqnr_rewritten, messages = results[True]
    # (a float fallback of a function warns once per process; a module given a float input, once each)
    assert not [msg for msg in messages if "received a float tensor" in msg]
    assert sum(isinstance(mod, tq.nn.quantized.QFunctional) for mod in q.modules()) >= 8
    assert sqnr_rewritten > results[False][0] - 1.0, results


def test_frozen_batchnorm_folds_into_the_conv_before_it():
    # torchvision's detection backbones use FrozenBatchNorm2d (constant statistics and affine):
    # find_fusable_modules finds [conv, frozen_bn, relu], fuse_modules folds it (for QAT too:
    # nothing of it trains), and one not after a conv converts to the int8 BatchNorm2d.
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.bn = FrozenBatchNorm2d(16)
            self.relu = nn.ReLU()
            self.bn2 = FrozenBatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 8, 1)
            for bn in (self.bn, self.bn2):
                bn.weight.uniform_(0.5, 2)
                bn.bias.uniform_(-1, 1)
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)

        def forward(self, x):
            return self.conv2(self.bn2(self.relu(self.bn(self.conv(x)))))

    m = M().eval()
    assert tq.find_fusable_modules(m) == [["conv", "bn", "relu"]]
    assert tq.find_fusable_modules(m, qat=True) == [["conv", "bn", "relu"]]
    fused = tq.fuse_modules(m, [["conv", "bn", "relu"]])
    assert type(fused.conv) is tq.nn.intrinsic.ConvReLU2d and type(fused.bn) is nn.Identity
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(fused(x), m(x), atol=1e-5)
    qat_fused = tq.fuse_modules_qat(copy.deepcopy(m).train(), [["conv", "bn", "relu"]])
    assert type(qat_fused.conv) is tq.nn.intrinsic.ConvReLU2d
    w = nn.Sequential(tq.QuantStub(), fused, tq.DeQuantStub()).eval()
    w.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays in float
        p = tq.prepare(w)
        for _ in range(3):
            p(torch.randn(2, 3, 12, 12))
        q = tq.convert(p)
    assert type(q[1].bn2) is tq.nn.quantized.BatchNorm2d
    y, ref = q(x), m(x)
    assert float(10 * torch.log10(ref.pow(2).mean() / (ref - y).pow(2).mean())) > 25


def test_fuse_modules_reads_numbered_names_as_names():
    # A slice of an nn.Sequential keeps its children's names ('2', '3', ...): the names
    # find_fusable_modules gives are fused, not the modules at those positions.
    torch.manual_seed(1)
    full = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
    for mod in full:
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
    m = nn.Sequential(full[0], full[1], full[2:]).eval()  # keys '2', '3', '4', '5' inside m[2]
    groups = tq.find_fusable_modules(m)
    assert ["2.2", "2.3"] in groups and ["2.4", "2.5"] in groups
    fused = tq.fuse_modules(m, groups)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(fused(x), m(x), atol=1e-5)


def test_stochastic_depth_and_permute_keep_the_qtensor():
    # ConvNeXt / EfficientNet / Swin hold them between int8 layers: they were observed, warned
    # about ("has no int8 implementation") and run in float with a dequantize / requantize each.
    from torchvision.ops import StochasticDepth
    from torchvision.ops.misc import Permute

    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 8, 3), StochasticDepth(0.2, "row"), Permute([0, 2, 3, 1]),
                      nn.Linear(8, 4), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = tq.prepare(m)
        assert not hasattr(p[2], "activation_post_process") and not hasattr(p[3], "activation_post_process")
        p(torch.randn(8, 3, 10, 10))
        q = tq.convert(p)
        seen = []
        q[3].register_forward_pre_hook(lambda mod, args: seen.append(type(args[0])))
        x = torch.randn(2, 3, 10, 10)
        y = q(x)
    assert type(q[2]).__name__ == "StochasticDepth" and type(q[2]).__module__.startswith("torchquant")
    assert seen == [tq.QTensor] and y.shape == (2, 8, 8, 4)
    # the same int8 computation as without the two modules (identity in inference, a permute)
    ref = q[4](q[1](q[0](x)).permute(0, 2, 3, 1)).dequantize()
    assert torch.equal(y, ref)
    # float inputs (a model run outside its quantized part) get torchvision's function
    q[2].train()
    f = torch.ones(64, 3)
    assert not torch.equal(q[2](f), f) and torch.equal(q[2].eval()(f), f)
