"""torchvision's quantizable models through torchquant's eager flow (fuse_model, prepare,
calibrate, convert), as docs/eager_api.md says to write it: the int8 logits' SQNR against fp32
is no worse than torch.ao's converted model on the same calibration data, minus 1 dB."""
import copy
import warnings

import pytest
import torch

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
