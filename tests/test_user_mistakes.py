"""Mistakes a new user makes with the eager flow, and what torchquant says about them: each used
to fail far from its cause (or not at all) and now names it."""
import warnings

import pytest
import torch
import torch.ao.quantization as ao
from torch import nn

import torchquant as tq
from torchquant.nn import quantized as nnq


def _observer_buffers(model):
    return {n: b.device.type for n, b in model.named_buffers() if "activation_post_process" in n}


# ---------------------------------------------------------------- prepare on quantized modules
def test_prepare_leaves_modules_quantize_dynamic_made_alone():
    # Their qweight is a placeholder on the meta device: they were warned about as "no int8
    # implementation" and got an observer there, and the first batch raised "argument 'hist' is on
    # meta but 'x' is on cpu".
    torch.manual_seed(0)
    d = tq.quantize_dynamic(nn.Sequential(nn.Linear(16, 8)).eval())
    d.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        p = tq.prepare(d)
    msgs = [str(x.message) for x in w]
    assert any("already quantized" in m and "0 (DynamicLinear)" in m for m in msgs), msgs
    assert not any("no int8 implementation" in m for m in msgs), msgs
    assert not hasattr(p[0], "activation_post_process") and _observer_buffers(p) == {}
    x = torch.randn(4, 16)
    tq.calibrate(p, [x], progress=False)  # (its input went to the meta device of the qweight)
    q = tq.convert(p)
    assert torch.equal(q(x), d(x))


def test_prepare_of_a_partly_quantized_model_observes_the_rest_on_its_device():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16), tq.QuantStub(), nn.Linear(16, 8), tq.DeQuantStub()).eval()
    m = tq.quantize_dynamic(m, {"0"})
    m.qconfig = tq.get_default_qconfig("x86")  # the whole model, the dynamic layer too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(m)
    assert set(_observer_buffers(p).values()) == {"cpu"} and not hasattr(p[0], "activation_post_process")
    tq.calibrate(p, [torch.randn(4, 16) for _ in range(3)], progress=False)
    q = tq.convert(p)
    assert type(q[0]) is nnq.DynamicLinear and type(q[2]) is nnq.Linear
    assert q(torch.randn(2, 16)).shape == (2, 8)


def test_prepare_leaves_int4_weight_only_layers_alone():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 8)).eval()
    m = tq.quantize_weight_only(m, bits=4, group_size=64, progress=False)
    m.qconfig = tq.get_default_qconfig("x86")
    with pytest.warns(UserWarning, match=r"already quantized .*0 \(LinearWeightOnlyInt4\), 2 \(LinearWeightOnlyInt4\)"):
        p = tq.prepare(m)
    assert _observer_buffers(p) == {}
    x = torch.randn(4, 128)
    tq.calibrate(p, [x], progress=False)
    assert torch.equal(tq.convert(p)(x), m(x))


def test_prepare_of_a_converted_model_adds_nothing_and_convert_keeps_it():
    torch.manual_seed(0)
    s = nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), tq.DeQuantStub()).eval()
    s.qconfig = tq.get_default_qconfig("x86")
    s = tq.convert(tq.calibrate(tq.prepare(s), [torch.randn(4, 16)], progress=False))
    s.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        p = tq.prepare(s)
        x = torch.randn(4, 16)
        tq.calibrate(p, [x], progress=False)
        q = tq.convert(p)
    msgs = [str(x.message) for x in w]
    assert len(msgs) == 1 and "already quantized" in msgs[0], msgs
    assert "0 (Quantize), 1 (Linear), 2 (DeQuantize)" in msgs[0]
    assert _observer_buffers(p) == {} and torch.equal(q(x), s(x))


# ---------------------------------------------------------------- calibrate's batches
class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.qa, self.qb, self.dq = tq.QuantStub(), tq.QuantStub(), tq.DeQuantStub()
        self.la, self.lb = nn.Linear(8, 4), nn.Linear(8, 4)
        self.ff = tq.nn.quantized.FloatFunctional()

    def forward(self, a, b):
        return self.dq(self.ff.add(self.la(self.qa(a)), self.lb(self.qb(b))))


def test_calibrate_says_how_a_batch_is_read_when_it_does_not_fit_forward():
    m = _TwoInputs().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    a, b, y = torch.randn(4, 8), torch.randn(4, 8), torch.zeros(4)
    for data in ([(a, b)], [((a, b), y)]):
        with pytest.raises(TypeError, match=r"calibrate: a batch does not fit _TwoInputs\.forward\(a, b\) .*missing 1 "
                                            r"required positional argument.*\(input, target, \.\.\.\).*"
                                            r"several inputs, give each batch as a dict of forward's arguments: "
                                            r"\[\{'a': a, 'b': b\}, \.\.\.\]") as e:
            tq.calibrate(tq.prepare(m), data, progress=False)
        assert isinstance(e.value.__cause__, TypeError)
    with pytest.raises(TypeError, match=r"does not fit .*unexpected keyword argument 'c'"):
        tq.calibrate(tq.prepare(m), [dict(a=a, c=b)], progress=False)
    p = tq.calibrate(tq.prepare(m), [dict(a=a, b=b)], progress=False)  # the documented form
    assert tq.convert(p)(a, b).shape == (4, 4)


def test_calibrate_raises_a_type_error_from_inside_forward_as_it_is():
    class Bad(nn.Module):
        def forward(self, x):
            return torch.add(x, "one")

    with pytest.raises(TypeError) as e:
        tq.calibrate(Bad(), [torch.randn(2)], progress=False)
    assert "does not fit" not in str(e.value) and e.value.__cause__ is None


# ---------------------------------------------------------------- mixing torch.ao's and torchquant's flows
def test_convert_names_torch_aos_prepare_when_torchquant_stubs_went_unobserved():
    m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = ao.prepare(m)
    p(torch.randn(4, 16))
    with pytest.raises(TypeError, match=r"convert: '0' \(QuantStub\) has no observer: the model was prepared by "
                                        r"torch\.ao\.quantization\.prepare, which does not observe "
                                        r"torchquant's QuantStub.*"
                                        r"with torchquant\.prepare"):
        tq.convert(p)
    # torch.ao's stubs, which its prepare observes, convert as before
    m = nn.Sequential(ao.QuantStub(), nn.Linear(16, 8), ao.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = ao.prepare(m)
    p(torch.randn(4, 16))
    assert type(tq.convert(p)[1]) is nnq.Linear


def test_torch_aos_convert_of_a_torchquant_prepared_model_is_refused_at_its_first_call():
    # torch.ao's swap_module copies prepare's hooks onto its quantized modules: the model raised
    # "'Quantize' object has no attribute 'activation_post_process'".
    torch.manual_seed(0)
    m = nn.Sequential(ao.QuantStub(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4), ao.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    x = torch.randn(16, 16)
    p(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch.ao's deprecation)
        q = ao.convert(p)
    with pytest.raises(TypeError, match=r"torch\.ao\.nn\.quantized\.modules\.Quantize carries torchquant\.prepare's "
                                        r"observer hooks but no observer of its own.*torchquant\.convert"):
        q(x)
    ours = tq.convert(p)
    assert (ours(x) - m(x)).abs().max() < 0.05


# ---------------------------------------------------------------- calibrating in training mode
def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(8 * 10 * 10, 4), tq.DeQuantStub())


def test_calibrate_warns_for_a_model_in_training_mode():
    data = [torch.randn(4, 3, 12, 12) for _ in range(2)]
    m = _cnn().train()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    with pytest.warns(UserWarning, match=r"calibrate: the model is in training mode, so its BatchNorm layers update "
                                         r"their running statistics .* and its Dropout layers drop activations "
                                         r"\(2 \(BatchNorm2d\), 4 \(Dropout\)\).*\.eval\(\)"):
        tq.calibrate(p, data, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tq.calibrate(tq.prepare(m.eval()), data, progress=False)  # eval mode: nothing to say
        # no BatchNorm / Dropout: training mode changes nothing
        plain = nn.Sequential(tq.QuantStub(), nn.Linear(4, 4), nn.Dropout(0.0), tq.DeQuantStub()).train()
        plain.qconfig = tq.get_default_qconfig("x86")
        tq.calibrate(tq.prepare(plain), [torch.randn(2, 4)], progress=False)
        # prepared for QAT: training mode on purpose
        qat = _cnn().train()
        qat.qconfig = tq.get_default_qat_qconfig("x86")
        tq.calibrate(tq.prepare_qat(qat), data, progress=False)


# ---------------------------------------------------------------- the reload skeleton
def test_convert_without_calibration_points_to_the_skeleton_recipe():
    def build():
        torch.manual_seed(0)
        m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4), tq.DeQuantStub()).eval()
        m.qconfig = tq.get_default_qconfig("x86")
        return m

    q = tq.convert(tq.calibrate(tq.prepare(build()), [torch.randn(8, 16)], progress=False))
    with pytest.raises(RuntimeError, match=r"observed no finite data.*to rebuild a converted model for "
                                           r"load_state_dict .*calibrate the prepared model on one batch of any data"):
        tq.convert(tq.prepare(build()))
    # the recipe the message gives: any batch, then the state dict sets every weight and qparam
    skeleton = tq.convert(tq.calibrate(tq.prepare(build()), [torch.zeros(1, 16)], progress=False))
    skeleton.load_state_dict(q.state_dict())
    x = torch.randn(4, 16)
    assert torch.equal(skeleton(x), q(x))


def test_the_skeleton_hint_is_not_given_when_some_observer_saw_data():
    m = nn.Sequential(tq.QuantStub(), nn.Linear(4, 4), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the NaN values' warning)
        p(torch.full((2, 4), float("nan")))
        with pytest.raises(RuntimeError, match="observed no finite data") as e:
            tq.convert(p)
    assert "load_state_dict" not in str(e.value)


# ---------------------------------------------------------------- quantize_dynamic's "nothing was quantized"
def test_quantize_dynamic_names_the_module_names_that_match_nothing():
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    with pytest.warns(UserWarning, match=r"nothing was quantized: argument 'qconfig_spec' names \['fc1'\], which "
                                         r"name no module of the model .*its layers with a dynamic int8 version: "
                                         r"\['0', '2'\]"):
        tq.quantize_dynamic(m, {"fc1"})
    with pytest.warns(UserWarning, match=r"nothing was quantized: the modules named in argument 'qconfig_spec', "
                                         r"'1' \(ReLU\), hold no layer that has a dynamic int8 version"):
        tq.quantize_dynamic(m, {"1"})
    with pytest.warns(UserWarning, match=r"names \['fc9'\], which name no module of the model .*left out"):
        q = tq.quantize_dynamic(m, {"0", "fc9"})
    assert type(q[0]) is nnq.DynamicLinear and type(q[2]) is nn.Linear


@pytest.mark.parametrize("dtype,tables", [(torch.quint8, "nn.Embedding / nn.EmbeddingBag"),
                                          (torch.quint4x2, "nn.EmbeddingBag")])
def test_quantize_dynamic_says_which_tables_a_dtype_covers(dtype, tables):
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    with pytest.warns(UserWarning, match=rf"nothing was quantized: dtype={dtype} quantizes the rows of {tables} tables "
                                         r"only.*use dtype=torch\.qint8"):
        tq.quantize_dynamic(m, dtype=dtype)


# ---------------------------------------------------------------- fuse_modules' names
@pytest.mark.parametrize("groups", [[[0, 1]], [0, 1], [["0", 1]]])
def test_fuse_modules_refuses_names_that_are_not_strings(groups):
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
    with pytest.raises(TypeError, match=r"fuse_modules: module names must be strings.*got [01] \(int\) in argument "
                                        r"'modules_to_fuse'.*children are named '[01]'"):
        tq.fuse_modules(m, groups)


def test_report_explains_how_a_batch_is_read_when_it_does_not_fit_forward():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, a, b):
            return self.fc(a) + b

    m = Two().eval()
    q = tq.quantize_dynamic(m)
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    with pytest.raises(TypeError, match=r"report: a batch does not fit Two.forward.*\[\{'a': a, 'b': b\}"):
        tq.report(m, q, [(a, b)])
    assert len(tq.report(m, q, [{"a": a, "b": b}])) == 1


def test_a_module_left_float_for_a_later_quantize_dynamic_prepares():
    # torch.ao's hybrid recipe: a static model whose LSTM carries a dynamic qconfig stays float
    # through prepare / convert, and quantize_dynamic takes it afterwards. The dynamic-qconfig
    # refusal is for modules that convert would make static int8.
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.fc, self.dq = tq.QuantStub(), nn.Linear(8, 8), tq.DeQuantStub()
            self.lstm = nn.LSTM(8, 8)

        def forward(self, x):
            return self.lstm(self.dq(self.fc(self.q(x))))[0]

    m = M().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    m.lstm.qconfig = tq.default_dynamic_qconfig
    x = torch.randn(5, 3, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(m)
        tq.calibrate(p, [x], progress=False)
        c = tq.quantize_dynamic(tq.convert(p), {"lstm"})
    assert isinstance(c.fc, nnq.Linear) and type(c.lstm).__module__.startswith("torchquant")
    assert (c(x) - m(x)).abs().max() < 0.1


def test_errors_of_a_mapping_class_keep_their_type_and_a_batch_mapping_its_class():
    import collections

    class Boom(nn.Module):
        @classmethod
        def from_float(cls, mod, **kwargs):
            raise KeyError("boom")

    m = nn.Sequential(tq.QuantStub(), nn.Linear(4, 4), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    p(torch.randn(2, 4))
    with pytest.raises(KeyError, match="module '1' .*could not be quantized"):
        tq.convert(p, mapping={**tq.get_default_static_quant_module_mappings(), nn.Linear: Boom})

    class Enc(collections.UserDict):  # a BatchEncoding-like batch: attribute access to its items
        def __getattr__(self, k):
            try:
                return self.data[k]
            except KeyError:
                raise AttributeError(k)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, enc):
            return self.fc(enc.x)

    pm = Model().eval()
    pm.qconfig = tq.get_default_qconfig("x86")
    tq.calibrate(tq.prepare(pm), [(Enc(x=torch.randn(2, 4)), None)], progress=False)


def test_weight_only_calib_data_from_split_is_named_in_the_refusal():
    m = nn.Sequential(nn.Linear(32, 8))
    x = torch.randn(8, 32)
    with pytest.raises(TypeError, match=r"list\(x.split\(n\)\)"):
        tq.quantize_weight_only(m, method="gptq", group_size=32, calib_data=x.split(4), progress=False)
    tq.quantize_weight_only(m, method="gptq", group_size=32, calib_data=list(x.split(4)), progress=False)
    tq.quantize_weight_only(m, method="gptq", group_size=32, calib_data=(x,), progress=False)  # one batch either way


def test_set_weight_bias_on_a_model_converted_under_inference_mode():
    # Its buffers are inference tensors: the codes were written, then the scales' write failed
    # ("Inplace update to inference tensor outside InferenceMode"), leaving new codes with old scales.
    def prepared(seed):
        torch.manual_seed(seed)
        m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), tq.DeQuantStub()).eval()
        m.qconfig = tq.get_default_qconfig("x86")
        p = tq.prepare(m)
        p(torch.randn(4, 16))
        return p

    with torch.inference_mode():
        c = tq.convert(prepared(0))
    ref = tq.convert(prepared(0))
    w, b = tq.convert(prepared(1))[1]._weight_bias()
    c[1].set_weight_bias(w, b)
    ref[1].set_weight_bias(w, b)
    x = torch.randn(4, 16)
    assert torch.equal(c(x), ref(x))
    assert torch.equal(c[1].weight_scale, ref[1].weight_scale) and torch.equal(c[1].bias, ref[1].bias)


def test_a_model_prepared_on_the_meta_device_calibrates_there():
    # a dry run: observers on meta as the model (they went to the CPU once meta placeholders of
    # converted layers were left out of the device a module runs on)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(m.to("meta"))
        assert {b.device.type for n, b in p.named_buffers() if "activation_post_process" in n} == {"meta"}
        tq.calibrate(p, [torch.randn(2, 8, device="meta")], progress=False)


def test_per_sample_weights_gradient_reads_the_indices_of_the_forward():
    fb = nn.EmbeddingBag(10, 4, mode="sum")
    fb.qconfig = tq.float_qparams_weight_only_qconfig
    q = nnq.EmbeddingBag.from_float(fb)
    idx, off = torch.tensor([1, 2, 3]), torch.tensor([0, 2])
    grads = []
    for change in (False, True):
        i = idx.clone()
        w = torch.ones(3, requires_grad=True)
        out = q(i, off, w)
        if change:
            i.fill_(0)  # changed in place before backward
        out.sum().backward()
        grads.append(w.grad)
    assert torch.equal(grads[0], grads[1])
