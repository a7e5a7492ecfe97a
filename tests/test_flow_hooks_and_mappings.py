"""The eager flow where it meets the user's hooks, torch.ao's mappings and qconfigs, saved
calibration, convolution subclasses and fusion modes (torch.ao's behaviour in each case)."""
import warnings

import pytest
import torch
import torch.ao.quantization as aoq
from torch import nn

import torchquant as tq


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_output_observer_runs_before_the_users_forward_hooks():
    # The int8 module computes its own output and convert carries the user's hook over to run on
    # it: the observer must see the module's output, not the hook's (torch.ao prepends it).
    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 16), tq.DeQuantStub()).eval()
    m[1].register_forward_hook(lambda mod, inp, out: out * 0.01)
    x = torch.randn(64, 16)
    ref = m(x)
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(x)
    assert float(p[1].activation_post_process.max_val) > 1.0  # (the Linear's own output range)
    err = (tq.convert(p)(x) - ref).abs().max()
    assert err < 0.02 * ref.abs().max(), float(err)


def _fusable():
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(144, 8), nn.ReLU(), tq.DeQuantStub())
    return m.train()


@pytest.mark.parametrize("fused_by", ["torchquant", "torch.ao"])
def test_prepare_qat_with_torch_ao_mapping_swaps_fused_modules(fused_by):
    fuse = tq.fuse_modules_qat if fused_by == "torchquant" else aoq.fuse_modules_qat
    m = fuse(_fusable(), [["1", "2", "3"], ["5", "6"]])
    m.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(m, mapping=aoq.get_default_qat_module_mappings())
    assert type(p[1]) is tq.nn.qat.ConvBnReLU2d and type(p[5]) is tq.nn.qat.LinearReLU
    assert hasattr(p[1], "weight_fake_quant") and hasattr(p[5], "weight_fake_quant")
    p(torch.randn(4, 3, 8, 8))
    c = tq.convert(p.eval())
    assert isinstance(c(torch.randn(2, 3, 8, 8)), torch.Tensor)


def test_prepare_qat_with_torch_ao_embedding_mapping():
    from torch.ao.quantization.quantization_mappings import get_embedding_qat_module_mappings

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.EmbeddingBag(10, 8)

        def forward(self, idx):
            return self.emb(idx)

    m = M().train()
    m.emb.qconfig = tq.default_embedding_qat_qconfig
    p = tq.prepare_qat(m, mapping=get_embedding_qat_module_mappings())
    assert type(p.emb) is tq.nn.qat.EmbeddingBag
    p(torch.randint(0, 10, (4, 3)))
    c = tq.convert(p.eval())
    assert type(c.emb).__module__.startswith("torchquant.nn.quantized")


class _FloatBetween(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.fc1, self.fc2, self.dq = tq.QuantStub(), nn.Linear(8, 8), nn.Linear(8, 4), tq.DeQuantStub()

    def forward(self, x):
        return self.dq(self.fc2(self.fc1(self.q(x)) * 2.0))  # fc2 gets a float tensor


def test_observer_state_dict_carries_the_float_input_ranges():
    torch.manual_seed(0)
    m = _FloatBetween().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    x = torch.randn(32, 8)
    p1 = tq.prepare(m)
    p1(x)
    sd = tq.get_observer_state_dict(p1)
    assert "fc2.input_range.min_val" in sd and "fc2.input_range.max_val" in sd
    p2 = tq.prepare(m)
    tq.load_observer_state_dict(p2, sd)
    assert torch.equal(tq.convert(p2)(x), tq.convert(p1)(x))
    # an entry for a module that records no range is one the model does not have
    bad = dict(sd)
    bad["dq.input_range.min_val"] = bad.pop("fc2.input_range.min_val")
    with pytest.raises(RuntimeError, match=r"does not have: \['fc2.input_range.max_val', 'dq.input_range.min_val'\]"):
        tq.load_observer_state_dict(tq.prepare(m), bad)


def test_conv_subclass_with_a_method_of_its_own_keeps_its_class():
    class ScaledConv(nn.Conv2d):
        def out_scale(self):
            return 0.5

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.conv, self.dq = tq.QuantStub(), ScaledConv(3, 4, 3), tq.DeQuantStub()

        def forward(self, x):
            return self.dq(self.conv(self.q(x))) * self.conv.out_scale()

    m = M().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    assert type(p.conv) is ScaledConv
    x = torch.randn(1, 3, 8, 8)
    p(x)
    tq.convert(p)(x)


def test_conv_subclass_with_only_static_helpers_is_still_quantized():
    class Conv3DSimple(nn.Conv3d):  # (torchvision's video models' form)
        @staticmethod
        def get_downsample_stride(stride):
            return stride, stride, stride

    m = nn.Sequential(tq.QuantStub(), Conv3DSimple(2, 4, 3), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    x = torch.randn(1, 2, 5, 5, 5)
    p(x)
    assert type(tq.convert(p)[1]).__module__.startswith("torchquant.nn.quantized")


def test_fuse_modules_moves_the_users_hooks_to_the_fused_module():
    x = torch.randn(1, 3, 8, 8)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    calls = []
    m[1].register_forward_hook(lambda mod, i, o: calls.append("bn"))
    tq.fuse_modules(m, [["0", "1"]])(x)
    assert calls == ["bn"]
    for where in ("pre", "post"):
        m = nn.Sequential(tq.QuantStub(), nn.Linear(4, 4), nn.ReLU(), tq.DeQuantStub()).eval()
        calls = []
        if where == "pre":
            m[1].register_forward_pre_hook(lambda mod, i: calls.append("pre"))
        else:
            m[2].register_forward_hook(lambda mod, i, o: calls.append("post"))
        f = tq.fuse_modules(m, [["1", "2"]])
        f.qconfig = tq.get_default_qconfig("x86")
        p = tq.prepare(f)
        xl = torch.randn(8, 4)
        p(xl)
        c = tq.convert(p)
        calls.clear()
        c(xl)
        assert calls == [where]


def test_make_quantizable_with_a_hook_based_weight_norm():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.utils.weight_norm(nn.Conv1d(4, 4, 3, padding=1))
            self.b = nn.Conv1d(4, 4, 1)

        def forward(self, x):
            return self.a(x) + self.b(x)

    m = M().eval()
    x = torch.randn(2, 4, 16)
    m(x)  # (its cached weight is now a non-leaf tensor)
    q = tq.make_quantizable(m, x)
    assert torch.allclose(q(x), m(x), atol=1e-5)


def test_fusing_a_batchnorm_in_another_mode_is_refused():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    m[1].eval()
    with pytest.raises(ValueError, match=r"same mode.*'1' eval"):
        tq.fuse_modules_qat(m, [["0", "1", "2"]])
    with pytest.raises(ValueError, match="same mode"):
        tq.fuse_modules(m, [["0", "1"]])


def test_qconfig_equals_sees_through_torch_ao_with_args():
    assert tq.qconfig_equals(aoq.get_default_qconfig("x86"), aoq.get_default_qconfig("x86"))
    assert tq.qconfig_equals(aoq.get_default_qat_qconfig("x86"), aoq.get_default_qat_qconfig("x86"))
    assert not tq.qconfig_equals(aoq.get_default_qconfig("x86"), aoq.get_default_qconfig("qnnpack"))


def test_quantize_dynamic_puts_the_model_in_eval_mode():
    # a model built and quantized at once is in training mode: its LSTM dropped out between
    # layers on every call (torch.ao's quantize_dynamic calls model.eval())
    torch.manual_seed(0)
    m = nn.Sequential(nn.LSTM(8, 16, num_layers=2, dropout=0.5))
    q = tq.quantize_dynamic(m, {nn.LSTM})
    assert not any(mod.training for mod in q.modules())
    x = torch.randn(5, 3, 8)
    assert torch.equal(q(x)[0], q(x)[0])
    assert m.training  # (the given model, copied, keeps its mode)
    ref = m.eval()(x)[0]
    assert (q(x)[0] - ref).norm() < 0.05 * ref.norm()


def test_fuse_linear_with_a_batchnorm_without_affine_parameters():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6, bias=False), nn.BatchNorm1d(6, affine=False)).eval()
    m[1].running_mean.uniform_(-1, 1)
    m[1].running_var.uniform_(0.5, 2)
    f = tq.fuse_modules(m, [["0", "1"]])
    assert isinstance(f[0], nn.Linear) and isinstance(f[1], nn.Identity)
    x = torch.randn(3, 4)
    assert torch.allclose(f(x), m(x), atol=1e-5)
    assert m[0].bias is None  # (the given model's Linear, copied, is as it was)


@pytest.mark.parametrize("compiled", [False, True])
def test_float_qparams_fake_quant_with_a_negative_channel_axis(compiled):
    # the observer and the integer per-channel path take ch_axis=-1; the float-qparams one (the
    # embedding QAT fake-quant's scheme) passed it to torch's kernel, which takes no negative axis
    x = torch.randn(5, 4)
    out = {}
    for axis in (-1, 1):
        fq = tq.FakeQuantize(observer=tq.MovingAveragePerChannelMinMaxObserver, quant_min=0, quant_max=255,
                             qscheme=torch.per_channel_affine_float_qparams, ch_axis=axis, averaging_constant=1)
        f = torch.compile(fq, backend="eager", fullgraph=True) if compiled else fq
        xr = x.clone().requires_grad_()
        y = f(xr)
        y.sum().backward()
        out[axis] = (y.detach(), xr.grad, fq.scale.clone())
    for a, b in zip(out[-1], out[1]):
        assert torch.equal(a, b)


try:  # torchvision's FrozenBatchNorm2d (folded into the conv before it, in either mode)
    from torchvision.ops.misc import FrozenBatchNorm2d as _FROZEN_BN
except Exception:  # noqa: BLE001 (torchvision is optional)
    _FROZEN_BN = None


def _fusion_case(group):
    m = nn.Module()
    m.c1, m.bn1, m.c2, m.bn2, m.c3, m.bn3 = (nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4), nn.Conv2d(3, 4, 3),
                                              nn.BatchNorm2d(4), nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4))
    m.ct, m.bnt = nn.ConvTranspose2d(3, 4, 3), nn.BatchNorm2d(4)
    m.l, m.bnl, m.r = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU()
    m.bnr = nn.BatchNorm2d(3)
    if _FROZEN_BN is not None:
        m.fbn = _FROZEN_BN(4)
    first = group[0]
    x = {"c1": torch.randn(2, 3, 6), "c2": torch.randn(2, 3, 6, 6), "c3": torch.randn(2, 3, 5, 5, 5),
         "ct": torch.randn(2, 3, 6, 6), "l": torch.randn(4, 3), "bnr": torch.randn(2, 3, 6, 6)}[first]
    return m, x


_FUSION_GROUPS = [["c1", "bn1"], ["c2", "bn2"], ["c3", "bn3"], ["c2", "bn2", "r"], ["c3", "bn3", "r"], ["c2", "r"],
                  ["l", "bnl"], ["l", "r"], ["bnr", "r"]]
_FUSION_CASES = ([(g, qat) for g in _FUSION_GROUPS for qat in (False, True)]
                 + [(["ct", "bnt"], False)]  # (no QAT ConvTranspose-BatchNorm module, as in torch.ao)
                 + ([(g, qat) for g in (["c2", "fbn"], ["c2", "fbn", "r"]) for qat in (False, True)]
                    if _FROZEN_BN is not None else []))


@pytest.mark.parametrize("group, qat", _FUSION_CASES)
def test_fuse_modules_runs_each_user_hook_once(group, qat):
    # torch's fuse_conv_bn_eval / fuse_linear_bn_eval return a deep copy of the conv / linear,
    # hooks included, and the pre-hooks were registered on it again: each ran twice (a scaling
    # pre-hook scaled the input twice)
    torch.manual_seed(0)
    m, x = _fusion_case(group)
    m.train(qat)
    if not qat:
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) or type(mod) is _FROZEN_BN:
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    calls = []
    first, last = getattr(m, group[0]), getattr(m, group[-1])
    first.register_forward_pre_hook(lambda mod, args: calls.append("pre") or (args[0] * 2,))
    first.register_forward_pre_hook(lambda mod, args, kwargs: calls.append("pre_kw"), with_kwargs=True)
    last.register_forward_hook(lambda mod, args, out: calls.append("post"))
    unfused = nn.Sequential(*[getattr(m, n) for n in group])
    with torch.no_grad():
        ref = unfused(x)
    assert calls == ["pre", "pre_kw", "post"]
    calls.clear()
    f = (tq.fuse_modules_qat if qat else tq.fuse_modules)(m, [group])
    fused = getattr(f, group[0])
    n_pre = sum(len(mod._forward_pre_hooks) for mod in fused.modules())
    assert n_pre == 2, n_pre
    with torch.no_grad():
        y = fused(x)
    assert calls == ["pre", "pre_kw", "post"]
    # (in training mode a BatchNorm normalizes with the batch's statistics: the same ones here)
    assert torch.allclose(y, ref, atol=1e-5)
    # the model given stays as it was (fuse_modules works on a copy)
    assert len(first._forward_pre_hooks) == 2 and len(last._forward_hooks) == 1
    calls.clear()
    with torch.no_grad():
        unfused(x)
    assert calls == ["pre", "pre_kw", "post"]


def test_fuse_modules_in_place_moves_the_pre_hooks_once_and_a_refused_group_keeps_them():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    hook = lambda mod, args: (args[0] * 2,)  # noqa: E731
    m[0].register_forward_pre_hook(hook)
    conv = m[0]
    tq.fuse_modules(m, [["0", "1"]], inplace=True)
    assert list(m[0]._forward_pre_hooks.values()) == [hook] and not conv._forward_pre_hooks
    # a group the fuser refuses (a ConvTranspose-BatchNorm pair for QAT) leaves the hooks in place
    t = nn.Sequential(nn.ConvTranspose2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    t[0].register_forward_pre_hook(hook, with_kwargs=False)
    with pytest.raises(ValueError):
        tq.fuse_modules_qat(t, [["0", "1"]], inplace=True)
    assert list(t[0]._forward_pre_hooks.values()) == [hook]
