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


# ------------------------------------------- the given model, bare fused modules, qconfigs, allow_list
def _norm_model(norm):
    torch.manual_seed(0)
    lin = norm(nn.Linear(8, 8))
    m = nn.Sequential(tq.QuantStub(), lin, nn.ReLU(), tq.DeQuantStub())
    m(torch.randn(4, 8))  # (spectral_norm computes its weight at a forward)
    return m, lin


_FLOWS_ON_A_COPY = {
    "prepare": lambda m: tq.prepare(m.eval()),
    "prepare_qat": lambda m: tq.prepare_qat(m.train()),
    "convert": lambda m: tq.convert(m.eval()),
    "fuse_modules": lambda m: tq.fuse_modules(m.eval(), [["1", "2"]]),
    "fuse_modules_qat": lambda m: tq.fuse_modules_qat(m.train(), [["1", "2"]]),
    "quantize_dynamic": lambda m: tq.quantize_dynamic(m, {nn.Linear}),
}


@pytest.mark.parametrize("flow", list(_FLOWS_ON_A_COPY))
@pytest.mark.parametrize("norm", [torch.nn.utils.weight_norm, torch.nn.utils.spectral_norm])
def test_flows_on_a_copy_leave_a_hook_based_norms_weight_of_the_given_model_as_it_was(norm, flow):
    # The cached weight (a non-leaf tensor tied to weight_g / weight_v, or weight_orig) was
    # detached on the given model before the copy: a loss on it no longer reached the parameters.
    m, lin = _norm_model(norm)
    m.qconfig = tq.get_default_qat_qconfig("x86") if flow == "prepare_qat" else tq.get_default_qconfig("x86")
    before = lin.weight
    assert before.grad_fn is not None
    out = _FLOWS_ON_A_COPY[flow](m)
    assert out is not m and lin.weight is before and lin.weight.grad_fn is not None
    lin.weight.pow(2).sum().backward()
    source = lin.weight_v if norm is torch.nn.utils.weight_norm else lin.weight_orig
    assert source.grad is not None and bool(source.grad.abs().sum() > 0)


def _bare_fused(kind):
    if kind == "LinearReLU":
        return tq.fuse_modules(nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval(), [["0", "1"]])[0], torch.randn(4, 8)
    if kind == "torch.ao LinearReLU":
        return aoq.fuse_modules(nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval(), [["0", "1"]])[0], torch.randn(4, 8)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    return tq.fuse_modules(conv, [["0", "1"]])[0], torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("kind", ["LinearReLU", "torch.ao LinearReLU", "ConvReLU2d"])
def test_convert_of_a_bare_fused_module_warns_as_for_a_bare_linear(kind):
    # It raised "module '0' (Linear) could not be quantized: 0 has no activation observer: was
    # the model passed through prepare()?": convert swapped the fused module's children.
    torch.manual_seed(0)
    fused, x = _bare_fused(kind)
    fused.qconfig = tq.get_default_qconfig("x86")
    ref = fused(x)
    p = tq.prepare(fused)
    p(x)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c = tq.convert(p)
    assert any("the model itself is a" in str(i.message) and "wrap it" in str(i.message) for i in w), \
        [str(i.message) for i in w]
    assert type(c) is type(p) and type(c[0]) in (nn.Linear, nn.Conv2d)
    assert not any(hasattr(mod, "activation_post_process") for mod in c.modules())
    assert torch.equal(c(x), ref)


@pytest.mark.parametrize("kind", ["Linear", "LinearReLU", "torch.ao LinearReLU"])
def test_prepare_qat_leaves_a_bare_fused_module_as_a_bare_linear(kind):
    # It swapped the fused module's Linear for a qat.Linear inside the float LinearReLU (a bare
    # nn.Linear stays an nn.Linear): convert then left both in float all the same.
    torch.manual_seed(0)
    if kind == "Linear":
        m, x = nn.Linear(8, 8), torch.randn(4, 8)
    else:
        m, x = _bare_fused(kind)
    m.train().qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(m)
    linear = p if kind == "Linear" else p[0]
    assert type(linear) is nn.Linear and not hasattr(linear, "weight_fake_quant")
    assert hasattr(p, "activation_post_process")
    p(x)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c = tq.convert(p.eval())
    assert any("the model itself is a" in str(i.message) for i in w), [str(i.message) for i in w]
    assert type(c) is type(p) and not any(hasattr(mod, "activation_post_process") for mod in c.modules())


_DYNAMIC_QCONFIGS = {"torchquant": tq.default_dynamic_qconfig,
                     "torchquant reduce_range": tq.reduce_range_dynamic_qconfig,
                     "torch.ao": aoq.default_dynamic_qconfig, "torch.ao per channel": aoq.per_channel_dynamic_qconfig}


@pytest.mark.parametrize("which", list(_DYNAMIC_QCONFIGS))
@pytest.mark.parametrize("flow", ["prepare", "prepare_qat"])
def test_prepare_refuses_a_dynamic_qconfig_naming_the_module(which, flow):
    # It was accepted, calibration ran, and convert failed: "calculate_qparams should not be
    # called for PlaceholderObserver" (torch.ao's: a bare Exception naming no module).
    m = nn.Sequential(tq.QuantStub(), nn.Linear(8, 8), tq.DeQuantStub())
    m.qconfig = tq.get_default_qconfig("x86")
    m[1].qconfig = _DYNAMIC_QCONFIGS[which]
    with pytest.raises(ValueError, match=r"prepare: module '1' \(Linear\) has a dynamic qconfig .*quantize_dynamic"):
        tq.prepare(m.eval()) if flow == "prepare" else tq.prepare_qat(m.train())


class _Twice(nn.Module):
    def forward(self, x):
        return 2 * x


def test_a_weight_only_table_qconfig_still_prepares_with_a_float_placeholder():
    # float_qparams_weight_only_qconfig's activation is a PlaceholderObserver too (float32): the
    # tables, and the leaf modules that get an activation observer under it, are no dynamic
    # qconfig's.
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(20, 8), _Twice()).eval()
    m.qconfig = tq.float_qparams_weight_only_qconfig
    p = tq.prepare(m)
    ids = torch.randint(0, 20, (3, 5))
    p(ids)
    c = tq.convert(p)
    assert type(c[0]) is tq.nn.quantized.Embedding
    assert (c(ids) - m(ids)).abs().max() < 0.05


@pytest.mark.parametrize("error", [Exception, ValueError, AssertionError, KeyError])
def test_convert_names_the_module_for_any_error_of_from_float(error):
    # Only a RuntimeError was given the module's name: torch.ao's classes raise bare Exceptions
    # and AssertionErrors. The error keeps its type (a KeyError too; a bare Exception, or one
    # whose type cannot take the message, becomes a RuntimeError) and the original is its cause.
    class Failing(nn.Module):
        @classmethod
        def from_float(cls, mod):
            raise error("no way")

    m = nn.Sequential(tq.QuantStub(), nn.Linear(8, 8), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(torch.randn(4, 8))
    mapping = {**tq.get_default_static_quant_module_mappings(), nn.Linear: Failing}
    kind = RuntimeError if error is Exception else error
    with pytest.raises(kind, match=r"convert: module '1' \(Linear\) could not be quantized: .*no way") as info:
        tq.convert(p, mapping=mapping)
    assert type(info.value) is kind and type(info.value.__cause__) is error


def test_convert_keeps_torchquants_own_errors_which_name_the_module_as_they_are():
    # torchquant's from_float gets the module's name and starts its ValueErrors with it
    m = nn.Sequential(tq.QuantStub(), nn.Linear(8, 8), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    m[1].qconfig = tq.QConfig(activation=m.qconfig.activation, weight=tq.float_qparams_weight_only_qconfig.weight)
    p = tq.prepare(m)
    p(torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"^1: torchquant's int8 Linear needs symmetric weights"):
        tq.convert(p)


class _MyLinear(nn.Linear):
    def forward(self, x):  # (a forward of its own: not one of torchquant's types)
        return super().forward(x)


class _MyConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x)


def _custom_model():
    torch.manual_seed(0)
    return nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 4, 3), tq.DeQuantStub(), _MyConv(4, 4, 3), nn.Flatten(),
                         tq.QuantStub(), nn.Linear(64, 8), tq.DeQuantStub(), _MyLinear(8, 4)).eval()


@pytest.mark.parametrize("defaults", ["torchquant", "torch.ao"])
def test_allow_list_types_are_observed_and_convert_with_a_mapping(defaults):
    # torch.ao's recipe for a module type of one's own: prepare warned that it "has no int8
    # implementation and stays in float", and its int8 module got no qparams for a float input.
    m = _custom_model()
    m.qconfig = tq.get_default_qconfig("x86")
    base = (tq if defaults == "torchquant" else aoq).get_default_qconfig_propagation_list()
    x = torch.randn(8, 3, 8, 8)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        p = tq.prepare(m, allow_list=base | {_MyLinear, _MyConv})
    assert not [str(i.message) for i in w if "deprecated" not in str(i.message)]
    assert hasattr(p[3], "activation_post_process") and hasattr(p[8], "activation_post_process")
    p(x)
    mapping = {**tq.get_default_static_quant_module_mappings(), _MyLinear: tq.nn.quantized.Linear,
               _MyConv: tq.nn.quantized.Conv2d}
    c = tq.convert(p, mapping=mapping)
    assert type(c[3]) is tq.nn.quantized.Conv2d and type(c[8]) is tq.nn.quantized.Linear
    assert hasattr(c[3], "float_input_scale") and hasattr(c[8], "float_input_scale")
    ref = m(x)
    y = c(x)  # (their inputs are float: after a DeQuantStub)
    assert (y.dequantize() - ref).abs().max() < 0.05 * ref.abs().max()


def test_allow_list_names_the_types_it_leaves_out_that_torchquant_observes_anyway():
    m = _custom_model()
    m.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tq.prepare(m, allow_list={_MyLinear, _MyConv, nn.Linear})
    msgs = [str(i.message) for i in w]
    assert not any("not used" in s or "stay in float" in s for s in msgs), msgs
    assert any("'allow_list' leaves out ['Conv2d', 'QuantStub']" in s for s in msgs), msgs


def test_fuse_modules_qat_errors_name_fuse_modules_qat():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sigmoid()).train()
    with pytest.raises(ValueError, match=r"^fuse_modules_qat: cannot find module"):
        tq.fuse_modules_qat(m, [["0", "5"]])
    with pytest.raises(ValueError, match=r"^fuse_modules_qat: cannot fuse \['ReLU', 'Sigmoid'\]"):
        tq.fuse_modules_qat(m, [["1", "2"]])
    with pytest.raises(ValueError, match=r"^fuse_modules: cannot fuse"):
        tq.fuse_modules(m.eval(), [["1", "2"]])


def test_convert_refuses_torch_aos_qat_modules_and_their_state_dict_loads_instead():
    # torch.ao's prepare_qat output: its QAT modules were left in place by convert, which removed
    # the observer inside their weight fake-quant (the model failed at its first call), or a fused
    # one raised naming its BatchNorm. Now a TypeError says what to do, and what it says works.
    import warnings as _w

    import torch.ao.quantization as aq

    def build():
        torch.manual_seed(0)
        return nn.Sequential(aq.QuantStub(), nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                             nn.Linear(6 * 36, 4), aq.DeQuantStub()).train()

    x = torch.randn(8, 3, 8, 8)
    with _w.catch_warnings():
        _w.simplefilter("ignore")
        ao = aq.fuse_modules_qat(build(), [["1", "2", "3"]])
        ao.qconfig = aq.get_default_qat_qconfig("x86")
        ao = aq.prepare_qat(ao)
        ao(x)
        with pytest.raises(TypeError, match=r"'1' \(torch\.ao\.nn\.intrinsic\.qat.*ConvBnReLU2d\).* come from torch\.ao's "
                                            r"prepare_qat.*torchquant\.prepare_qat"):
            tq.convert(ao.eval())
        ours = tq.fuse_modules_qat(build(), [["1", "2", "3"]])
        ours.qconfig = aq.get_default_qat_qconfig("x86")  # the same fake-quant ranges (7-bit activations)
        ours = tq.prepare_qat(ours)
        ours.load_state_dict(ao.state_dict())
        ours.eval()
        ref = ao(x)
        torch.testing.assert_close(ours(x), ref)
        q = tq.convert(ours)
    assert isinstance(q[1], tq.nn.quantized.ConvReLU2d)
    err = (q(x) - ref).abs().max() / ref.abs().max()
    assert err < 0.05, err


# ---------------------------------------------------------------- float layers, keywords, refusals, custom modules
class _IntoBlock(nn.Module):
    def __init__(self, blk, cell):
        super().__init__()
        self.q, self.fc, self.blk, self.dq, self.cell = tq.QuantStub(), nn.Linear(8, 8), blk, tq.DeQuantStub(), cell

    def forward(self, x):
        y = self.fc(self.q(x))
        y = self.blk(y[:, 0]) if self.cell else self.blk(y)
        y = y[0] if isinstance(y, tuple) else y
        return self.dq(y)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell"])
def test_a_float_recurrent_layer_with_qconfig_none_takes_a_qtensor(kind):
    # torch's recurrent layers build their hidden state with dtype=input.dtype: a QTensor's
    # quint8 there failed ("Could not run 'aten::zero_' ... QuantizedCPU") instead of running in float.
    torch.manual_seed(0)
    cell = kind.endswith("Cell")
    blk = getattr(nn, kind)(8, 8) if cell else getattr(nn, kind)(8, 8, batch_first=True)
    m = _IntoBlock(blk, cell).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    m.blk.qconfig = None
    x = torch.randn(4, 3, 8)
    p = tq.prepare(m)
    p(x)
    q = tq.convert(p)
    assert type(q.blk) is type(blk)
    with torch.no_grad():
        ref, y = m(x), q(x)
    assert type(y) is torch.Tensor and y.shape == ref.shape
    assert (y - ref).abs().max() < 0.05 * ref.abs().max() + 0.02


def test_converted_modules_take_torch_nns_input_keyword_and_prepare_records_it():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.relu, self.conv = nn.Linear(4, 4), nn.ReLU(), nn.Conv1d(4, 4, 1)

        def forward(self, x):  # (a float function before the Linear: its input range is recorded)
            y = self.relu(input=self.fc(input=x * 2))
            return self.conv(input=y.unsqueeze(-1))

    torch.manual_seed(0)
    m = M().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    x = torch.randn(8, 4)
    p(x)
    lo, hi = p.fc.__dict__["_tq_input_range"]
    assert float(lo) == float((x * 2).min()) and float(hi) == float((x * 2).max())
    q = tq.convert(p)
    ref = q.conv(q.relu(q.fc(x * 2)).unsqueeze(-1))
    y = q.conv(input=q.relu(input=q.fc(input=x * 2)).unsqueeze(-1))
    torch.testing.assert_close(y.dequantize(), ref.dequantize(), rtol=0, atol=0)
    d = tq.quantize_dynamic(nn.Sequential(nn.Linear(4, 4)))
    torch.testing.assert_close(d[0](input=x), d[0](x), rtol=0, atol=0)


@pytest.mark.parametrize("bad", ["float16", "per-channel activation"])
def test_a_refused_prepare_in_place_leaves_the_model_as_it_was(bad):
    from torch.nn.utils import parametrizations, parametrize

    m = nn.Sequential(tq.QuantStub(), parametrizations.weight_norm(nn.Linear(4, 4)), nn.Linear(4, 4),
                      tq.DeQuantStub())
    m.qconfig = tq.get_default_qconfig("x86")
    if bad == "float16":
        m[2].qconfig = aoq.float16_static_qconfig
    else:
        m[2].qconfig = tq.QConfig(activation=tq.PerChannelMinMaxObserver, weight=tq.default_weight_observer)
    classes = [type(x) for x in m.modules()]
    own = {n: x.__dict__.get("qconfig", "none") for n, x in m.named_modules()}
    with pytest.raises(ValueError, match=r"module '2' \(Linear\)"):
        tq.prepare(m, inplace=True)
    assert parametrize.is_parametrized(m[1])
    assert [type(x) for x in m.modules()] == classes
    assert {n: x.__dict__.get("qconfig", "none") for n, x in m.named_modules()} == own
    assert not any(hasattr(x, "activation_post_process") or x._forward_hooks or x._forward_pre_hooks
                   for x in m.modules())


def test_swap_module_refuses_use_precomputed_fake_quant_unless_the_class_takes_it():
    m = nn.Sequential(tq.QuantStub(), nn.Linear(4, 4), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(torch.randn(8, 4))
    mapping = tq.get_default_static_quant_module_mappings()
    with pytest.raises(NotImplementedError, match=r"swap_module: argument 'use_precomputed_fake_quant' takes only"):
        tq.swap_module(p[1], mapping, {}, use_precomputed_fake_quant=True)
    assert type(tq.swap_module(p[1], mapping, {})) is tq.nn.quantized.Linear
    seen = []

    class Mine(nn.Module):
        @classmethod
        def from_float(cls, mod, use_precomputed_fake_quant=False):
            seen.append(use_precomputed_fake_quant)
            return cls()

    assert type(tq.swap_module(p[1], {nn.Linear: Mine}, {}, use_precomputed_fake_quant=True)) is Mine
    assert seen == [True]


def test_an_empty_allow_list_is_a_list_that_leaves_every_type_out():
    m = nn.Sequential(tq.QuantStub(), nn.Linear(4, 4), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    with pytest.warns(UserWarning, match=r"'allow_list' leaves out \['Linear', 'QuantStub'\]"):
        tq.prepare(m, allow_list=set())


@pytest.mark.parametrize("call, match", [
    (lambda p: tq.convert(p, mapping={nn.Linear: nn.Linear}),
     r"^convert: argument 'mapping' maps Linear to <class 'torch\.nn\.modules\.linear\.Linear'>, which has no "
     r"from_float\(\)"),
    (lambda p: tq.convert(p, mapping={nn.Linear: "Linear"}), r"^convert: argument 'mapping' maps Linear to 'Linear'"),
    (lambda p: tq.prepare(p, allow_list=nn.Linear), r"^prepare: argument 'allow_list' must be a set .* got <class"),
    (lambda p: tq.swap_module(p[1], None), r"^swap_module: argument 'mapping' must be a dict .* got None"),
    (lambda p: tq.add_quant_dequant(5), r"^add_quant_dequant: argument 'module' must be an nn\.Module, got int"),
    (lambda p: tq.prepare_qat(p.train(), mapping={nn.Linear: nn.Linear}), r"^prepare_qat: argument 'mapping' maps"),
])
def test_wrong_arguments_are_errors_naming_the_argument(call, match):
    m = nn.Sequential(tq.QuantStub(), nn.Linear(4, 4), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(torch.randn(8, 4))
    with pytest.raises(TypeError, match=match):
        call(p)


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return x @ self.w


class _ObservedCustom(_Custom):
    @classmethod
    def from_float(cls, mod):
        new = cls()
        new.w = mod.w
        new.qconfig = mod.qconfig
        return new


class _QuantizedCustom(nn.Module):
    def __init__(self, w, scale):
        super().__init__()
        self.w, self.scale = w, scale

    @classmethod
    def from_observed(cls, mod):
        new = cls(mod.w.detach(), mod.activation_post_process.calculate_qparams()[0])
        new.qconfig = mod.qconfig  # (a leaf under a qconfig: convert must not take it for a float one)
        return new

    def forward(self, x):
        return x.dequantize() @ self.w


def test_custom_module_config_dicts_swap_the_modules_as_torch_aos():
    # They were accepted with a warning that they are not used: the module stayed float.
    def prepared(flow):
        m = nn.Sequential(flow.QuantStub(), _Custom(), flow.DeQuantStub()).eval()
        m.qconfig = flow.get_default_qconfig("x86")
        config = {"float_to_observed_custom_module_class": {_Custom: _ObservedCustom}}
        return m, flow.prepare(m, prepare_custom_config_dict=config)

    _, ao = prepared(aoq)
    m, p = prepared(tq)
    assert type(p[1]) is type(ao[1]) is _ObservedCustom and hasattr(p[1], "activation_post_process")
    x = torch.randn(8, 4)
    p(x)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        q = tq.convert(p, convert_custom_config_dict={
            "observed_to_quantized_custom_module_class": {_ObservedCustom: _QuantizedCustom}})
    assert not [str(i.message) for i in w], [str(i.message) for i in w]
    assert type(q[1]) is _QuantizedCustom and not q[1]._forward_pre_hooks and not q[1]._forward_hooks
    assert float(q[1].scale) == float(p[1].activation_post_process.calculate_qparams()[0])
    torch.testing.assert_close(q(x), m(x), atol=0.2, rtol=0)


def test_fuse_modules_calls_the_users_fuser_func_and_additional_fuser_methods():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Sigmoid()).eval()
    calls = []

    def fuser(mods, is_qat, additional):
        calls.append(([type(x).__name__ for x in mods], is_qat, additional))
        return [nn.Sequential(*mods), nn.Identity()]

    f = tq.fuse_modules(m, [["0", "1"]], fuser_func=fuser)
    assert calls == [(["Linear", "ReLU"], False, {})]
    assert type(f[0]) is nn.Sequential and type(f[1]) is nn.Identity
    from torch.ao.quantization.fuse_modules import fuse_known_modules

    assert type(tq.fuse_modules(m, [["0", "1"]], fuser_func=fuse_known_modules)[0]) is tq.nn.intrinsic.LinearReLU
    extra = {(nn.Linear, nn.Sigmoid): lambda is_qat, lin, sig: nn.Sequential(lin, sig)}
    f = tq.fuse_modules(m, [["2", "3"]], fuse_custom_config_dict={"additional_fuser_method_mapping": extra})
    assert type(f[2]) is nn.Sequential and type(f[3]) is nn.Identity
    x = torch.randn(2, 4)
    torch.testing.assert_close(f(x), m(x))


def test_torch_aos_default_custom_config_dict_leaves_its_own_classes_out():
    # torch.ao's quantizable / quantized LSTM run on torch.ao's quantized tensors: its standard
    # recipe keeps running, with torchquant's handling of nn.LSTM, and a warning says so
    from torch.ao.quantization.quantize import get_default_custom_config_dict

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.fc, self.lstm, self.dq = tq.QuantStub(), nn.Linear(8, 8), nn.LSTM(8, 8), tq.DeQuantStub()

        def forward(self, x):
            return self.dq(self.lstm(self.fc(self.q(x)))[0])

    torch.manual_seed(0)
    m = M().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    cfg = get_default_custom_config_dict()
    with pytest.warns(UserWarning, match="torch.ao's own modules"):
        p = tq.prepare(m, prepare_custom_config_dict=cfg)
    p(torch.randn(4, 2, 8))
    with pytest.warns(UserWarning, match="torch.ao's own modules"):
        c = tq.convert(p, convert_custom_config_dict=cfg)
    assert type(c.lstm) is nn.LSTM
    assert c(torch.randn(4, 2, 8)).shape == (4, 2, 8)


def test_a_prepare_in_place_failing_in_a_custom_from_float_leaves_the_model_as_it_was():
    class Blk(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)

    calls = [0]

    class Obs(Blk):
        @classmethod
        def from_float(cls, mod):
            calls[0] += 1
            if calls[0] == 2:
                raise RuntimeError("boom")
            new = cls()
            new.fc = mod.fc
            return new

    m = nn.Sequential(tq.QuantStub(), Blk(), Blk(), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    before = [type(x) for x in m.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        tq.prepare(m, inplace=True, prepare_custom_config_dict={"float_to_observed_custom_module_class": {Blk: Obs}})
    assert [type(x) for x in m.modules()] == before
    assert [k for k, x in m.named_modules() if "qconfig" in x.__dict__] == [""]
    assert not any(x._forward_hooks or x._forward_pre_hooks for x in m.modules())
