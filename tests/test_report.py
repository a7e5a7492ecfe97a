"""torchquant.report: per-layer SQNR and max abs error, matched by module name."""
import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import torchquant  # noqa: E402
from torchquant.report import report  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


class FakeQuantLinear(nn.Module):
    """Linear whose weights and output go through torchquant's int8 quantization; returns a
    QTensor, as a converted module does."""

    def __init__(self, lin: nn.Linear, scale: float, per_channel_child: bool = False):
        super().__init__()
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.bias = nn.Parameter(lin.bias.detach().clone())
        self.scale = scale
        if per_channel_child:
            self.packed = nn.Module()  # converted modules may carry an internal child

    def forward(self, x):
        if not isinstance(x, torch.Tensor):
            x = x.dequantize()
        y = nn.functional.linear(x, self.weight, self.bias)
        return torchquant.quantize_per_tensor(y, self.scale, 0, torch.qint8)


class Dequant(nn.Module):
    def forward(self, q):
        return q.dequantize() if not isinstance(q, torch.Tensor) else q


def _quantized_twin(net, s1, s2, child=False):
    q = nn.Module()
    q.fc1 = FakeQuantLinear(net.fc1, s1, child)
    q.relu = nn.Identity()  # a fused ReLU: skipped by the report
    q.fc2 = FakeQuantLinear(net.fc2, s2, child)
    q.out = Dequant()

    def forward(x):
        return q.out(q.fc2(torch.relu(q.fc1(x).dequantize())))

    q.forward = forward
    return q


def _expected(f, q):
    f, q = f.detach().double(), q.detach().double()
    return 10 * math.log10(float((f * f).sum() / ((f - q) ** 2).sum())), float((f - q).abs().max())


@pytest.mark.parametrize("child", [False, True])
def test_sqnr_and_max_error_match_direct_computation(child):
    torch.manual_seed(0)
    net = Net().eval()
    q = _quantized_twin(net, 0.05, 0.02, child)
    x = torch.randn(64, 8)
    r = report(net, q, x)
    assert [l.name for l in r] == ["fc1", "fc2"]  # relu (Identity) skipped, 'out' absent from the float model
    f1 = net.fc1(x)
    q1 = q.fc1(x).dequantize()
    sqnr, err = _expected(f1, q1)
    assert r["fc1"].sqnr_db == pytest.approx(sqnr, rel=1e-9)
    assert r["fc1"].max_abs_error == pytest.approx(err, rel=1e-9)
    assert 0 < r["fc1"].max_abs_error <= 0.05 / 2 + 1e-6  # rounding error is at most half a step
    assert r["fc1"].quantized_type == "FakeQuantLinear" and r["fc1"].float_type == "Linear"
    f2 = net.fc2(torch.relu(f1))
    q2 = q.fc2(torch.relu(q1)).dequantize()
    assert r["fc2"].sqnr_db == pytest.approx(_expected(f2, q2)[0], rel=1e-9)


def test_coarser_scale_lowers_sqnr_by_the_step_ratio():
    torch.manual_seed(1)
    net = Net().eval()
    x = torch.randn(256, 8)
    step = float(net.fc1(x).detach().abs().max()) / 100  # neither step saturates
    fine = report(net, _quantized_twin(net, step, step), x)["fc1"].sqnr_db
    coarse = report(net, _quantized_twin(net, 4 * step, 4 * step), x)["fc1"].sqnr_db
    # 4x the step: the noise power grows 16x, i.e. about 12 dB
    assert 10.0 < fine - coarse < 14.0


def test_batches_accumulate_like_one_batch():
    torch.manual_seed(2)
    net = Net().eval()
    q = _quantized_twin(net, 0.05, 0.05)
    x = torch.randn(96, 8)
    one = report(net, q, x)
    many = report(net, q, [(x[:40], torch.zeros(40)), (x[40:], torch.zeros(56))])
    for a, b in zip(one, many):
        assert a.sqnr_db == pytest.approx(b.sqnr_db, rel=1e-9) and a.max_abs_error == pytest.approx(b.max_abs_error)
        assert a.numel == b.numel


def test_identical_models_give_infinite_sqnr_and_restore_modes():
    net = Net().train()
    twin = Net()
    twin.load_state_dict(net.state_dict())
    twin.train()
    r = report(net, twin, torch.randn(8, 8))
    assert all(math.isinf(l.sqnr_db) and l.max_abs_error == 0 for l in r)
    assert net.training and twin.training  # flags restored
    assert not any(m._forward_hooks for m in list(net.modules()) + list(twin.modules()))  # hooks removed
    assert "inf" in r.table()


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_torch_quantized_tensor_outputs_are_dequantized():
    class TorchQ(nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return torch.quantize_per_tensor(self.lin(x), 0.1, 0, torch.qint8)

    net = Net().eval()
    q = nn.Module()
    q.fc1 = TorchQ(net.fc1)
    q.forward = lambda x: q.fc1(x).dequantize()
    r = report(net, q, torch.randn(16, 8))
    assert [l.name for l in r] == ["fc1"] and 0 < r["fc1"].max_abs_error <= 0.05 + 1e-6


def test_no_common_layer_is_an_error():
    other = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(ValueError, match="shares no module name"):
        report(Net(), other, torch.randn(2, 8))


def test_unknown_layer_name_lookup():
    net = Net().eval()
    r = report(net, _quantized_twin(net, 0.05, 0.05), torch.randn(4, 8))
    with pytest.raises(KeyError, match="fc9"):
        r["fc9"]


def test_plot_returns_and_saves_a_figure(tmp_path):
    net = Net().eval()
    q = _quantized_twin(net, 0.05, 0.05)
    path = tmp_path / "sqnr.png"
    r = report(net, q, torch.randn(32, 8), plot=str(path))
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    assert r.figure is not None and len(r.figure.axes[0].patches) == 2
    r2 = report(net, q, torch.randn(32, 8), plot=True)
    assert r2.figure is not None and len(r2.figure.axes[0].patches) == 2
    fig = r2.plot()
    assert fig is r2.figure
    import matplotlib.pyplot as plt

    plt.close("all")


def test_float_output_changed_in_place_by_the_next_module_is_recorded_as_returned():
    # BatchNorm followed by ReLU(inplace=True), as in torchvision's ResNet: the BatchNorm's row
    # compares its own output, not the ReLU's, which overwrote the same tensor.
    torch.manual_seed(0)
    net = nn.Sequential(torchquant.QuantStub(), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                        torchquant.DeQuantStub()).eval()
    net[2].running_mean.normal_()
    net.qconfig = torchquant.get_default_qconfig("x86")
    p = torchquant.prepare(net)
    x = torch.rand(4, 3, 12, 12)
    p(x)
    q = torchquant.convert(p)
    r = torchquant.report(net, q, x)
    assert r["2"].sqnr_db > 30, r["2"].sqnr_db


def test_an_inputs_targets_tuple_given_as_data_is_one_batch():
    # The targets (another shape-compatible tensor here) are not run as a second batch.
    torch.manual_seed(3)
    net = Net().eval()
    q = _quantized_twin(net, 0.05, 0.05)
    x, y = torch.randn(16, 8), 100 * torch.randn(16, 8)
    alone, pair = report(net, q, x), report(net, q, (x, y))
    for a, b in zip(alone, pair):
        assert a.max_abs_error == b.max_abs_error and a.numel == b.numel


def test_each_model_gets_its_own_copy_of_the_batch():
    # A float model that changes its input in place (preprocessing before the QuantStub): the
    # quantized model sees the batch as given, and so does the caller afterwards.
    class Scale(nn.Module):
        def forward(self, x):
            return x.mul_(2.0)

    torch.manual_seed(0)
    fm = nn.Sequential(Scale(), torchquant.QuantStub(), nn.Linear(8, 8), torchquant.DeQuantStub()).eval()
    m = nn.Sequential(Scale(), torchquant.QuantStub(), nn.Linear(8, 8), torchquant.DeQuantStub()).eval()
    m.load_state_dict(fm.state_dict())
    m.qconfig = torchquant.get_default_qconfig("x86")
    p = torchquant.prepare(m)
    p(torch.randn(64, 8) * 2)
    q = torchquant.convert(p)
    x = torch.randn(4, 8)
    x0 = x.clone()
    r = report(fm, q, x)
    assert torch.equal(x, x0)
    assert r["2"].sqnr_db > 20  # was about -0.4 dB: the int8 model ran on the doubled batch


def test_bad_data_is_named():
    net = nn.Sequential(nn.Linear(4, 4)).eval()
    for data, exc, match in ((5, TypeError, "argument 'data' must be a batch"), ("ab", TypeError, "argument 'data'"),
                             ([], ValueError, "'data' holds no batches")):
        with pytest.raises(exc, match=match):
            report(net, net, data)


def test_report_refuses_swapped_arguments():
    model = nn.Sequential(nn.Linear(8, 8))
    q = torchquant.quantize_dynamic(model)
    with pytest.raises(ValueError, match=r"argument 'float_model' holds torchquant's quantized modules .* look swapped"):
        torchquant.report(q, model, torch.randn(2, 8))


def test_report_compares_a_folded_relu_after_the_relu_and_every_call():
    import torch.nn as nn
    import torchquant as tq

    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(torch.randn(64, 8))
    q = tq.convert(p)
    x = torch.randn(32, 8)
    # convert's Sequential runs the Linear and the ReLU as one call; report compares each
    # module's own output (the Linear's before the ReLU)
    r = tq.report(m, q, x)
    assert r["1"].float_type == "Linear" and r["2"].float_type == "ReLU"
    with torch.no_grad():
        f, y = m[1](x), q[1](q[0](x)).dequantize()
    want = 10 * torch.log10(f.double().pow(2).sum() / (f.double() - y.double()).pow(2).sum())
    assert abs(r["1"].sqnr_db - float(want)) < 1e-6 and r["1"].sqnr_db > 25
    # a model converted by an earlier version (pickled): the Linear a LinearReLU, the ReLU an
    # Identity; compared after the ReLU on both sides
    q[1].__class__, q._modules["2"] = tq.nn.quantized.LinearReLU, nn.Identity()
    r = tq.report(m, q, x)
    row = r["1"]
    assert row.float_type == "Linear+ReLU"
    with torch.no_grad():
        f = torch.relu(m[1](x))
        y = q[1](q[0](x)).dequantize()
    want = 10 * torch.log10(f.double().pow(2).sum() / (f.double() - y.double()).pow(2).sum())
    assert abs(row.sqnr_db - float(want)) < 1e-6 and row.sqnr_db > 25

    class Repeated(nn.Module):  # one block applied three times: every call counts
        def __init__(self):
            super().__init__()
            self.q, self.blk, self.dq = tq.QuantStub(), nn.Linear(8, 8), tq.DeQuantStub()

        def forward(self, x):
            x = self.q(x)
            for _ in range(3):
                x = self.blk(x)
            return self.dq(x)

    m = Repeated().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(torch.randn(64, 8))
    q = tq.convert(p)
    r = tq.report(m, q, x)
    assert r["blk"].numel == 3 * x.numel()
    # a QAT-fused LinearReLU (an nn.Linear subclass) already has its ReLU: no second one, no label
    m = nn.Sequential(tq.QuantStub(), nn.Linear(8, 16), nn.ReLU(), tq.DeQuantStub()).train()
    m = tq.fuse_modules_qat(m, [["1", "2"]])
    m.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(m)
    p(torch.randn(32, 8))
    q = tq.convert(p.eval(), inplace=False)
    assert tq.report(p, q, x)["1"].float_type == "LinearReLU"


def test_report_leaves_a_prepared_float_model_calibrated_as_it_was():
    import torch.nn as nn
    import torchquant as tq

    torch.manual_seed(2)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(8, 8), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(torch.randn(64, 8))
    before = {k: v.clone() for k, v in tq.get_observer_state_dict(p).items()}
    q = tq.convert(p, inplace=False)
    tq.report(p, q, torch.randn(16, 8) * 5)  # data of another range: the observers would move
    after = tq.get_observer_state_dict(p)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # a QAT model (fake-quants, a learnable one's parameters) likewise
    m = nn.Sequential(tq.QuantStub(), nn.Linear(8, 8), tq.DeQuantStub()).train()
    m.qconfig = tq.learnable_qat_qconfig
    p = tq.prepare_qat(m)
    p(torch.randn(64, 8))
    scale = p[0].activation_post_process.scale.detach().clone()
    q = tq.convert(p.eval(), inplace=False)
    tq.report(p, q, torch.randn(16, 8) * 5)
    assert torch.equal(p[0].activation_post_process.scale.detach(), scale)


def test_report_restores_each_modules_own_training_flag_and_buffers_in_place():
    # report set every module to the root's flag afterwards: a BatchNorm frozen (eval) inside a
    # model being fine-tuned came back in training mode, and the next step moved its statistics.
    import torch.nn as nn
    import torchquant as tq

    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                      nn.Linear(288, 10), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(torch.randn(4, 3, 8, 8))
    q = tq.convert(p, inplace=False)
    del m.qconfig
    m.train()
    m[2].eval()
    flags = {n: s.training for n, s in m.named_modules()}
    tq.report(m, q, torch.randn(4, 3, 8, 8))
    assert {n: s.training for n, s in m.named_modules()} == flags
    # a prepared model whose observers train while the rest is in eval: flags and buffer objects kept
    p.eval()
    obs = p[1].activation_post_process
    obs.train()
    flags = {n: s.training for n, s in p.named_modules()}
    ids = {k: id(v) for k, v in obs._buffers.items()}
    tq.report(p, q, torch.randn(4, 3, 8, 8) * 5)
    assert {n: s.training for n, s in p.named_modules()} == flags
    assert {k: id(v) for k, v in obs._buffers.items()} == ids


def test_report_leaves_a_qat_model_given_as_quantized_model_as_it_was():
    import copy
    torch.manual_seed(0)
    f = nn.Sequential(torchquant.QuantStub(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4), torchquant.DeQuantStub())
    f.qconfig = torchquant.get_default_qat_qconfig("x86")
    qat = torchquant.prepare_qat(copy.deepcopy(f).train())
    qat(torch.randn(64, 16))
    before = copy.deepcopy(qat.state_dict())
    report(f.eval(), qat, 10 * torch.randn(64, 16))
    assert all(torch.equal(v, before[k]) for k, v in qat.state_dict().items())
    assert qat.training


def test_report_has_a_row_for_multihead_attention_and_for_a_converted_root():
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.fc = nn.MultiheadAttention(16, 2), nn.Linear(16, 16)

        def forward(self, x):
            return self.fc(self.attn(x, x, x)[0])

    f = Block().eval()
    q = torchquant.quantize_dynamic(f)
    r = report(f, q, torch.randn(5, 2, 16))
    assert [row.name for row in r.layers] == ["attn", "fc"] and 30 < r.layers[0].sqnr_db < 80
    lin = nn.Linear(16, 8)
    r = report(lin, torchquant.quantize_dynamic(lin, {nn.Linear}), torch.randn(32, 16))
    assert len(r.layers) == 1 and 30 < r.layers[0].sqnr_db < 80


def test_calibrate_refuses_a_tuple_of_tensors():
    p = torchquant.prepare(_stubbed(nn.Linear(4, 4)))
    with pytest.raises(TypeError, match=r"\[\(x, y\)\]"):
        torchquant.calibrate(p, (torch.randn(2, 4), torch.randn(2, 4)), progress=False)
    torchquant.calibrate(p, [(torch.randn(2, 4), torch.randn(2, 4))], progress=False)  # (one batch: fine)


def _stubbed(layer):
    m = nn.Sequential(torchquant.QuantStub(), layer, torchquant.DeQuantStub()).eval()
    m.qconfig = torchquant.get_default_qconfig("x86")
    return m


def test_a_batch_of_no_samples_is_an_error_not_an_empty_report():
    torch.manual_seed(0)
    net = Net().eval()
    q = _quantized_twin(net, 0.05, 0.05)
    for data in (torch.randn(0, 8), (torch.randn(0, 8), torch.zeros(0)), [torch.randn(0, 8), torch.randn(0, 8)]):
        with pytest.raises(ValueError, match=r"argument 'data' held no samples .*\(0, 8\)"):
            report(net, q, data)
    # an empty batch among others adds nothing
    x = torch.randn(16, 8)
    alone, mixed = report(net, q, x), report(net, q, [torch.randn(0, 8), x])
    assert [l.name for l in mixed] == ["fc1", "fc2"]
    for a, b in zip(alone, mixed):
        assert a.sqnr_db == b.sqnr_db and a.numel == b.numel
