"""quantize_dynamic on Hugging Face transformers models (built from small configs, random init,
nothing downloaded) and on nn.Linear subclasses."""
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import torchquant as tq
from torchquant.nn import quantized as nnq

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _bert():
    cfg = transformers.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)
    return transformers.BertModel(cfg)


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                 bos_token_id=0, eos_token_id=0)
    return transformers.GPT2Model(cfg)


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaModel(cfg)


MODELS = {"bert": _bert, "gpt2": _gpt2, "llama": _llama}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hf_model_last_hidden_state_within_2_percent(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    ids = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        ref = model(input_ids=ids).last_hidden_state
    q = tq.quantize_dynamic(model, {nn.Linear, Conv1D})
    kinds = {type(m) for m in q.modules()}
    assert nn.Linear not in kinds and Conv1D not in kinds
    n_int8 = sum(isinstance(m, nnq.DynamicLinear) for m in q.modules())
    n_float = sum(isinstance(m, (nn.Linear, Conv1D)) for m in model.modules())
    assert n_int8 == n_float > 0
    with torch.no_grad():
        out = q(input_ids=ids).last_hidden_state
    err = _rel(out, ref)
    assert 0 < err < 0.02, err
    # The float model is untouched (a copy was quantized).
    assert any(isinstance(m, (nn.Linear, Conv1D)) for m in model.modules())


def test_gpt2_conv1d_maps_to_dynamic_linear_transposed():
    torch.manual_seed(1)
    conv = Conv1D(24, 40)  # nf=24 outputs, nx=40 inputs; weight [40, 24]
    nn.init.normal_(conv.bias)
    model = nn.Sequential(conv)
    q = tq.quantize_dynamic(model, {Conv1D})
    ql = q[0]
    assert type(ql) is nnq.DynamicLinear
    assert (ql.in_features, ql.out_features) == (40, 24)
    lin = nn.Linear(40, 24)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
    ref = tq.quantize_dynamic(nn.Sequential(lin), {nn.Linear})[0]
    assert torch.equal(ql.qweight, ref.qweight) and torch.equal(ql.weight_scale, ref.weight_scale)
    x = torch.randn(3, 5, 40)
    assert torch.equal(ql(x), ref(x))
    assert _rel(ql(x), conv(x)) < 0.02
    # Conv1D's weight is left as it was.
    assert conv.weight.shape == (40, 24)


def test_conv1d_follows_the_linear_entry_and_its_qconfig():
    model = nn.Sequential(Conv1D(8, 16))
    assert type(tq.quantize_dynamic(model, {nn.Linear})[0]) is nnq.DynamicLinear
    assert type(tq.quantize_dynamic(model, {nn.Linear: tq.default_dynamic_qconfig})[0]) is nnq.DynamicLinear
    # Not asked for: stays float.
    with pytest.warns(UserWarning, match="ReLU"):
        assert type(tq.quantize_dynamic(nn.Sequential(Conv1D(8, 16), nn.ReLU()), {nn.ReLU})[0]) is Conv1D


def test_linear_subclass_is_quantized():
    class MyLinear(nn.Linear):
        pass

    torch.manual_seed(2)
    model = nn.Sequential(MyLinear(16, 8), nn.ReLU(), nn.modules.linear.NonDynamicallyQuantizableLinear(8, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = tq.quantize_dynamic(model, {nn.Linear})
    assert type(q[0]) is nnq.DynamicLinear and type(q[2]) is nnq.DynamicLinear
    x = torch.randn(5, 16)
    assert _rel(q(x), model(x)) < 0.02


def test_multihead_attention_keeps_its_out_proj_float_unless_mapped_explicitly():
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 6, 32)
    ref, _ = mha(x, x, x)
    # MHA reads out_proj.weight directly: an int8 out_proj would run in float there.
    q = tq.quantize_dynamic(nn.Sequential(mha), {nn.Linear})[0]
    assert type(q.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    # Named explicitly, it is swapped; MHA then runs in float on its dequantized weight (warning).
    ndql = nn.modules.linear.NonDynamicallyQuantizableLinear
    q = tq.quantize_dynamic(nn.Sequential(mha), {nn.Linear, ndql},
                            mapping={**tq.get_default_dynamic_quant_module_mappings(), ndql: nnq.DynamicLinear})[0]
    assert type(q.out_proj) is nnq.DynamicLinear
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, _ = q(x, x, x)
    assert _rel(out, ref) < 0.02


def test_hf_quantized_state_dict_loads_weights_only():
    torch.manual_seed(4)
    q = tq.quantize_dynamic(_gpt2().eval(), {nn.Linear, Conv1D})
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert any(k.endswith("c_attn.qweight") for k in sd)
    q2 = tq.quantize_dynamic(_gpt2().eval(), {nn.Linear, Conv1D})
    q2.load_state_dict(sd)
    ids = torch.randint(0, 128, (1, 10))
    with torch.no_grad():
        assert torch.equal(q(input_ids=ids).last_hidden_state, q2(input_ids=ids).last_hidden_state)


def test_torch_compile_of_quantized_gpt2_runs():
    torch.manual_seed(5)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32, bos_token_id=0,
                                 eos_token_id=0)
    model = transformers.GPT2Model(cfg).eval()
    q = tq.quantize_dynamic(model, {nn.Linear, Conv1D})
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        eager = q(input_ids=ids).last_hidden_state
        compiled = torch.compile(q, backend="eager", fullgraph=False)(input_ids=ids).last_hidden_state
    torch.testing.assert_close(compiled, eager)


def test_stacked_expert_weights_left_in_float_are_named():
    import warnings as _w

    import torchquant as tq

    class Experts(torch.nn.Module):  # transformers 5's fused experts: [experts, out, in] Parameters
        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.randn(8, 64, 32))
            self.down_proj = torch.nn.Parameter(torch.randn(8, 32, 32))

        def forward(self, x):
            return torch.einsum("bi,eoi->bo", x, self.gate_up_proj[:, :32])

    m = torch.nn.Sequential(torch.nn.Linear(32, 32), Experts(), torch.nn.Conv1d(4, 4, 3))
    with pytest.warns(UserWarning, match=r"quantize_dynamic: 2 3-D weights outside nn.Linear layers .*1\.gate_up_proj "
                                         r"\[8, 64, 32\].* stay in float"):
        tq.quantize_dynamic(m, {torch.nn.Linear})
    with pytest.warns(UserWarning, match=r"quantize_weight_only: 2 3-D weights"):
        tq.quantize_weight_only(m, group_size=32, progress=False)
    with _w.catch_warnings():  # a convolution's 3-D weight is no expert
        _w.simplefilter("error")
        tq.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Conv1d(64, 64, 3)), {torch.nn.Linear})


def test_dynamic_weight_dtype_reads_as_the_float_dtype_for_model_code():
    # Model code casts a layer's input to its weight's dtype (Mamba's lm_head(h.to(lm_head.weight.dtype)));
    # the int8 weight reads as the float dtype it was quantized from, torch.ao's weight() as qint8.
    cfg = transformers.MambaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2)
    torch.manual_seed(0)
    m = transformers.MambaForCausalLM(cfg).eval()
    ids = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        ref = m(ids).logits
        q = tq.quantize_dynamic(m, {nn.Linear})
        assert _rel(q(ids).logits, ref) < 0.02
    w = q.lm_head.weight
    assert w.dtype == torch.float32 and w().dtype == torch.qint8 and type(w()) is tq.QTensor
    assert torch.equal(w.int_repr(), q.lm_head.qweight) and torch.equal(w.dequantize(), w().dequantize())
    assert "qint8" in repr(w)
    half = tq.quantize_dynamic(nn.Sequential(nn.Linear(8, 4)).to(torch.bfloat16), {nn.Linear})
    assert half[0].weight.dtype == torch.bfloat16 and half[0].weight().dtype == torch.qint8
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    assert half[0](x.to(half[0].weight.dtype)).dtype == torch.bfloat16
    assert nnq.dynamic.Linear(8, 4).weight.dtype == torch.float32  # built by hand
    # ... and as the model is cast later, or quantized weight-only to int8
    d = tq.quantize_dynamic(nn.Sequential(nn.Linear(8, 4)), {nn.Linear})
    assert d.to(torch.bfloat16)[0].weight.dtype == torch.bfloat16 and d.half()[0].weight.dtype == torch.float16
    assert d.float()[0].weight.dtype == torch.float32 and d.to("cpu")[0].weight.dtype == torch.float32
    assert d[0].weight_scale.dtype == torch.float32  # the int8 computation's own scales are kept
    w8 = tq.quantize_weight_only(nn.Sequential(nn.Linear(64, 8)).to(torch.bfloat16), bits=8, progress=False)
    assert type(w8[0]).__name__ == "DynamicLinear" and w8[0].weight.dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["dynamic", "int4"])
def test_save_pretrained_checkpoint_reloads_into_a_quantized_skeleton(kind, tmp_path):
    # save_pretrained writes the quantized state dict to model.safetensors; from_pretrained cannot
    # rebuild torchquant's modules, so the documented reload is: the model from its config, quantized
    # the same way (no calibration: RTN for int4), then load_state_dict of the file, strict.
    from safetensors.torch import load_file

    def quantized(model):
        if kind == "dynamic":
            return tq.quantize_dynamic(model, {nn.Linear})
        return tq.quantize_weight_only(model, group_size=32, progress=False)

    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    q = quantized(transformers.LlamaForCausalLM(cfg).eval())
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        ref = q(ids).logits
    q.save_pretrained(tmp_path)
    torch.manual_seed(1)  # other random weights: everything must come from the file
    skeleton = quantized(transformers.LlamaForCausalLM(cfg).eval())
    skeleton.load_state_dict(load_file(tmp_path / "model.safetensors"))
    with torch.no_grad():
        assert torch.equal(skeleton(ids).logits, ref)


def test_weight_only_calibrates_on_a_tokenizers_batch_encoding():
    # A tokenizer's output (BatchEncoding) and an image processor's (BatchFeature) are UserDicts:
    # Mappings, not dicts. They went in as the first positional argument (input_ids).
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (4, 16))
    plain = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    kw = dict(bits=4, group_size=32, progress=False)
    for method in ("gptq", "awq"):
        a = tq.quantize_weight_only(m, method=method, calib_data=plain, **kw)
        b = tq.quantize_weight_only(m, method=method, calib_data=transformers.BatchEncoding(plain), **kw)
        c = tq.quantize_weight_only(m, method=method, calib_data=[transformers.BatchFeature(plain)], **kw)
        for other in (b, c):
            for k, v in a.state_dict().items():
                assert torch.equal(v, other.state_dict()[k]), k


class _GatedLinear(nn.Linear):  # keeps nn.Linear's forward; the model calls a helper of its own on it
    def __init__(self, i, o, temperature=2.0):
        super().__init__(i, o)
        self.temperature = temperature

    def gate(self, y):
        return torch.sigmoid(y / self.temperature)


class _TempLinear(nn.Linear):  # a plain attribute only, read by the model
    def __init__(self, i, o, temperature=2.0):
        super().__init__(i, o)
        self.temperature = temperature


class _ScaleLinear(nn.Linear):  # a Parameter of its own, read by the model
    def __init__(self, i, o):
        super().__init__(i, o)
        self.scale = nn.Parameter(torch.full((o,), 0.5))


def test_linear_subclass_with_methods_or_state_of_its_own_stays_float_and_runs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.g, self.t, self.s = _GatedLinear(8, 8), _TempLinear(8, 8), _ScaleLinear(8, 8)

        def forward(self, x):
            return self.s(self.t(self.g.gate(self.g(x))) / self.t.temperature) * self.s.scale

    torch.manual_seed(6)
    model = Net().eval()
    x = torch.randn(3, 8)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        q = tq.quantize_dynamic(model, {nn.Linear})
    msgs = [str(i.message) for i in w]
    assert any("_GatedLinear" in m and "methods or properties of their own" in m and "'g'" in m for m in msgs), msgs
    assert any("_ScaleLinear" in m and "parameters, buffers or submodules" in m and "'s'" in m for m in msgs), msgs
    assert type(q.g) is _GatedLinear and type(q.s) is _ScaleLinear
    # A plain attribute goes with the layer to its int8 version.
    assert type(q.t) is nnq.DynamicLinear and q.t.temperature == 2.0
    assert _rel(q(x), model(x)) < 0.02


def test_torch_ao_mapping_without_spec_leaves_multihead_attention_float_and_runnable():
    ao = pytest.importorskip("torch.ao.quantization")

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.att, self.fc = nn.MultiheadAttention(16, 2), nn.Linear(16, 16)

        def forward(self, x):
            return self.fc(self.att(x, x, x)[0])

    torch.manual_seed(7)
    model = Wrap().eval()
    x = torch.randn(5, 2, 16)
    for spec in (None, {nn.Linear, nn.MultiheadAttention}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = tq.quantize_dynamic(model, spec, mapping=ao.get_default_dynamic_quant_module_mappings())
        # torch.ao's mapping has no MultiheadAttention: it stays float, and its out_proj with it
        assert type(q.att) is nn.MultiheadAttention
        assert type(q.att.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
        assert type(q.fc).__module__.startswith("torch.ao.")
        assert _rel(q(x), model(x)) < 0.02


class _Doubled(nn.Module):  # a re-parametrization of one tensor: baking it writes the tensor
    def forward(self, w):
        return 2 * w


def test_refused_inplace_quantize_dynamic_leaves_the_model_as_it_was():
    from torch.nn.utils import parametrize

    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(4, 4), nn.Embedding(10, 4), nn.Linear(4, 4))
    parametrize.register_parametrization(model[2], "weight", _Doubled())
    children = list(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[2].weight.detach().clone()
    # The embedding's from_float refuses the int8 qconfig, after the Linear before it was swapped.
    with pytest.raises(ValueError, match="embedding quantization needs"):
        tq.quantize_dynamic(model, {nn.Linear, nn.Embedding}, inplace=True)
    assert list(model) == children and model.training
    assert not any(hasattr(m, "qconfig") for m in model.modules())
    assert torch.nn.utils.parametrize.is_parametrized(model[2], "weight")
    assert torch.equal(model[2].weight, weight)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # ... so a corrected call works
    q = tq.quantize_dynamic(model, {nn.Linear}, inplace=True)
    assert type(q[0]) is nnq.DynamicLinear and type(q[2]) is nnq.DynamicLinear


def test_refused_inplace_prepare_qat_leaves_the_float_modules():
    # prepare_qat swaps in its QAT modules before prepare's checks (here: a dynamic qconfig refused)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)).train()
    children = list(model)
    model[0].qconfig = tq.default_dynamic_qconfig
    model[2].qconfig = tq.get_default_qat_qconfig("x86")
    with pytest.raises(ValueError, match="dynamic qconfig"):
        tq.prepare_qat(model, inplace=True)
    assert list(model) == children and all(type(m) is nn.Linear for m in (model[0], model[2]))
    assert model[0].qconfig is tq.default_dynamic_qconfig and not hasattr(model[1], "qconfig")


def test_lazy_linear_before_its_first_forward_stays_float_with_a_warning():
    model = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match=r"quantize_dynamic: \['0'\] have uninitialized \(lazy\) parameters"):
        q = tq.quantize_dynamic(model, {nn.Linear})
    assert type(q[0]) is nn.LazyLinear and type(q[2]) is nnq.DynamicLinear
    assert q(torch.randn(3, 5)).shape == (3, 2)


def test_mapping_without_spec_warns_of_nothing():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = tq.quantize_dynamic(model, mapping={nn.Linear: nnq.dynamic.Linear})
    assert type(q[0]) is nnq.DynamicLinear and type(q[2]) is nnq.DynamicLinear


def test_meta_weights_reached_through_a_name_are_refused_by_name():
    with torch.device("meta"):
        model = nn.Sequential(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match=r"quantize_dynamic: the weights of \['0\.0'\] are on the meta device"):
        tq.quantize_dynamic(model, {"0"})
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32, bos_token_id=0,
                                 eos_token_id=0)
    with torch.device("meta"):
        gpt2 = transformers.GPT2LMHeadModel(cfg)
    with pytest.raises(ValueError, match=r"the weights of \['transformer\.h\.0\.attn\.c_attn'.* meta device"):
        tq.quantize_dynamic(gpt2, {"transformer.h"})


def test_tied_head_is_quantized_with_a_warning_naming_both_or_kept_float_by_name():
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32, bos_token_id=0,
                                 eos_token_id=0)
    torch.manual_seed(9)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.warns(UserWarning, match=r"tied weights \(lm_head\.weight is transformer\.wte\.weight\)"):
        q = tq.quantize_dynamic(model, {nn.Linear, Conv1D})
    assert type(q.lm_head) is nnq.DynamicLinear and type(q.transformer.wte) is nn.Embedding
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = tq.quantize_dynamic(model, {nn.Linear: tq.default_dynamic_qconfig, Conv1D: tq.default_dynamic_qconfig,
                                        "lm_head": None})
    assert q.lm_head.weight is q.transformer.wte.weight
    # the other way round: the embedding quantized, the head it is tied to left float
    with pytest.warns(UserWarning, match=r"tied weights \(transformer\.wte\.weight is lm_head\.weight\)"):
        tq.quantize_dynamic(model, {nn.Embedding}, dtype=torch.quint8)


def test_conv1d_follows_another_linear_class_of_the_mapping():
    ao_dynamic = pytest.importorskip("torch.ao.nn.quantized.dynamic")
    torch.manual_seed(10)
    conv = Conv1D(24, 40)
    nn.init.normal_(conv.bias)
    model = nn.Sequential(conv, nn.ReLU(), nn.Linear(24, 8))
    q = tq.quantize_dynamic(model, {nn.Linear}, mapping={nn.Linear: ao_dynamic.Linear})
    assert type(q[0]) is ao_dynamic.Linear and type(q[2]) is ao_dynamic.Linear
    assert (q[0].in_features, q[0].out_features) == (40, 24)
    x = torch.randn(3, 40)
    assert _rel(q(x), model(x)) < 0.02
    assert conv.weight.shape == (40, 24)


def test_quantize_dynamic_inplace_takes_a_bool_only():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(TypeError, match=r"quantize_dynamic: argument 'inplace' must be True or False, got 'no'"):
        tq.quantize_dynamic(model, {nn.Linear}, inplace="no")
    assert type(model[0]) is nn.Linear


def test_linear_subclass_overriding_only_nn_linears_methods_is_quantized():
    class ZeroInit(nn.Linear):
        def reset_parameters(self):
            nn.init.zeros_(self.weight)

        def extra_repr(self):
            return "zero-init " + super().extra_repr()

    torch.manual_seed(0)
    m = nn.Sequential(ZeroInit(8, 8), nn.ReLU())
    q = tq.quantize_dynamic(m, {nn.Linear})
    assert isinstance(q[0], tq.nn.quantized.dynamic.Linear)


@pytest.mark.parametrize("flag", [1, 0, np.True_, np.False_])
def test_quantize_dynamic_takes_int_and_numpy_bools_as_inplace(flag):
    m = nn.Sequential(nn.Linear(4, 4))
    q = tq.quantize_dynamic(m, {nn.Linear}, inplace=flag)
    assert (q is m) == bool(flag)
