"""Dynamic int8 MultiheadAttention (torchquant.nn.quantized.dynamic.MultiheadAttention): its four
projections int8, the attention as torch's F.multi_head_attention_forward computes it."""
import copy
import io
import itertools
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchquant as tq
from torchquant.nn._compact import is_compact

QMHA = tq.nn.quantized.dynamic.MultiheadAttention


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _inputs(bf, kv, L=5, S=7, N=3, E=32, batched=True):
    kdim, vdim = kv if kv else (E, E)

    def t(n, d):
        if not batched:
            return torch.randn(n, d)
        return torch.randn(N, n, d) if bf else torch.randn(n, N, d)

    return t(L, E), t(S, kdim), t(S, vdim)


def _reference(q, query, key, value, **kw):
    """torch's F.multi_head_attention_forward on the int8 projections' outputs (identity weights
    in its place), then the int8 out_proj: the attention steps exactly as torch takes them."""
    E = q.embed_dim
    bf, batched = q.batch_first, query.dim() == 3
    if bf and batched:
        query, key, value = (x.transpose(0, 1) for x in (query, key, value))
    eye = torch.eye(E)
    qp, kp, vp = q.q_proj(query), q.k_proj(key), q.v_proj(value)
    out, w = F.multi_head_attention_forward(
        qp, kp, vp, E, q.num_heads, None, None, q.bias_k, q.bias_v, q.add_zero_attn, 0.0, eye, None,
        training=False, use_separate_proj_weight=True, q_proj_weight=eye, k_proj_weight=eye, v_proj_weight=eye, **kw)
    out = q.out_proj(out)
    if bf and batched:
        out = out.transpose(0, 1)
    return out, w


CASES = list(itertools.product([False, True], [None, (12, 20)], [True, False], [False, True], [False, True]))


@pytest.mark.parametrize("bf,kv,bias,add_bias_kv,add_zero_attn", CASES)
def test_attention_steps_are_torchs_exactly_and_close_to_fp32(bf, kv, bias, add_bias_kv, add_zero_attn):
    torch.manual_seed(0)
    kdim, vdim = kv if kv else (None, None)
    m = nn.MultiheadAttention(32, 4, bias=bias, add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn, kdim=kdim,
                              vdim=vdim, batch_first=bf).eval()
    if add_bias_kv:
        with torch.no_grad():
            m.bias_k.normal_()
            m.bias_v.normal_()
    q = tq.quantize_dynamic(m, {nn.MultiheadAttention})
    assert isinstance(q, QMHA)
    query, key, value = _inputs(bf, kv)
    N, L, S = 3, 5, 7
    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[0, -2:] = True
    causal = torch.triu(torch.full((L, S), float("-inf")), 1)
    mask3 = torch.randn(N * 4, L, S)
    calls = [{}, {"need_weights": False}, {"average_attn_weights": False}, {"key_padding_mask": kpm},
             {"attn_mask": causal, "need_weights": False}, {"attn_mask": causal > 0, "key_padding_mask": kpm},
             {"attn_mask": mask3}, {"attn_mask": causal, "is_causal": True, "need_weights": False}]
    if kv is None:
        calls.append({"self": True})
    for kw in calls:
        args = (query, query, query) if kw.pop("self", False) else (query, key, value)
        with torch.no_grad():
            got, got_w = q(*args, **kw)
            want, want_w = _reference(q, *args, **kw)
            fp, fp_w = m(*args, **kw)
        assert torch.equal(got, want), kw
        assert (got_w is None) == (want_w is None) == (fp_w is None)
        if got_w is not None:
            assert torch.equal(got_w, want_w)
            assert (got_w - fp_w).abs().max() < 0.02
        assert got.shape == fp.shape
        assert (got - fp).norm() / fp.norm() < 0.03, kw


def test_unbatched_inputs_and_self_attention_of_one_tensor():
    torch.manual_seed(1)
    m = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    q = tq.quantize_dynamic(m, {nn.MultiheadAttention})
    x, k, v = _inputs(True, None, E=16, batched=False)
    for args in ((x, k, v), (x, x, x), (x, k, k)):
        with torch.no_grad():
            got, w = q(*args)
            want, ww = _reference(q, *args)
            fp, _ = m(*args)
        assert torch.equal(got, want) and torch.equal(w, ww) and got.shape == fp.shape == (5, 16)


def test_quantize_dynamic_sets_and_the_float_projections_it_replaces():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                enable_nested_tensor=False).eval()
    default = tq.quantize_dynamic(enc)
    named = tq.quantize_dynamic(enc, {nn.Linear, nn.MultiheadAttention})
    linear_only = tq.quantize_dynamic(enc, {nn.Linear})
    for model in (default, named):
        attn = model.layers[0].self_attn
        assert isinstance(attn, QMHA) and isinstance(attn.out_proj, tq.nn.quantized.DynamicLinear)
        assert isinstance(model.layers[0].linear1, tq.nn.quantized.DynamicLinear)
    # {nn.Linear} alone: the attention stays float, its out_proj too (MHA reads its weight)
    attn = linear_only.layers[0].self_attn
    assert type(attn) is nn.MultiheadAttention and type(attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    # the float model is untouched
    assert type(enc.layers[0].self_attn) is nn.MultiheadAttention
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        want = enc(x)
        for model in (default, named, linear_only):
            assert (model(x) - want).norm() / want.norm() < 0.03
        assert torch.equal(default(x), named(x))


def test_out_proj_under_a_none_qconfig_stays_float():
    m = nn.MultiheadAttention(16, 2).eval()
    m.qconfig = tq.default_dynamic_qconfig
    m.out_proj.qconfig = None
    q = QMHA.from_float(m)
    assert type(q.out_proj) is nn.Linear and torch.equal(q.out_proj.weight, m.out_proj.weight)
    assert q.out_proj.weight.data_ptr() != m.out_proj.weight.data_ptr()
    x = torch.randn(4, 1, 16)
    with torch.no_grad():
        assert (q(x, x, x)[0] - m(x, x, x)[0]).norm() / m(x, x, x)[0].norm() < 0.03


def test_transformer_models_run_with_masks_and_stay_compact():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2).eval()
    q = _quiet(tq.quantize_dynamic, enc)
    x = torch.randn(3, 9, 32)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[1, -3:] = True
    with torch.no_grad():  # (the fused path, nested tensors included, must stay off the int8 layers)
        want, got = enc(x, src_key_padding_mask=pad), q(x, src_key_padding_mask=pad)
        assert (got[~pad] - want[~pad]).norm() / want[~pad].norm() < 0.03
    assert all(is_compact(m) for m in q.modules() if "qweight" in m._buffers)
    tr = nn.Transformer(32, 4, 1, 1, 64, batch_first=True).eval()
    qt = tq.quantize_dynamic(tr)
    src, tgt = torch.randn(2, 8, 32), torch.randn(2, 5, 32)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        want = tr(src, tgt, tgt_mask=mask, tgt_is_causal=True)
        got = qt(src, tgt, tgt_mask=mask, tgt_is_causal=True)
    assert (got - want).norm() / want.norm() < 0.03
    assert isinstance(qt.decoder.layers[0].multihead_attn, QMHA)


def test_torchvision_vit_attention_is_int8():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                                               mlp_dim=128, num_classes=10).eval()
    nn.init.normal_(vit.heads.head.weight)  # (torchvision's is zeros)
    q = tq.quantize_dynamic(vit)
    assert isinstance(q.encoder.layers[0].self_attention, QMHA)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, got = vit(img), q(img)
    assert (got - want).norm() / want.norm() < 0.05


def test_float_module_attributes_read_as_the_float_modules():
    torch.manual_seed(0)
    m = nn.MultiheadAttention(16, 2).eval()
    q = tq.quantize_dynamic(m, {nn.MultiheadAttention})
    w = q.in_proj_weight
    assert w.shape == (48, 16) and w.dtype == torch.float32 and w.device.type == "cpu"
    assert all(is_compact(p) for p in (q.q_proj, q.k_proj, q.v_proj))
    assert (w.dequantize() - m.in_proj_weight).abs().max() < 0.01
    assert torch.equal(q.in_proj_bias, m.in_proj_bias)
    assert q.q_proj_weight is None and q._qkv_same_embed_dim and q.head_dim == 8
    s = nn.MultiheadAttention(16, 2, kdim=5, vdim=7, bias=False).eval()
    qs = tq.quantize_dynamic(s, {nn.MultiheadAttention})
    assert qs.in_proj_weight is None and qs.in_proj_bias is None and not qs._qkv_same_embed_dim
    assert qs.k_proj_weight.shape == (16, 5) and qs.v_proj_weight.shape == (16, 7)


def test_state_dict_round_trip_copies_and_compile():
    torch.manual_seed(0)
    m = nn.MultiheadAttention(16, 2, add_bias_kv=True, kdim=6, vdim=6).eval()
    q = tq.quantize_dynamic(m, {nn.MultiheadAttention})
    x, k = torch.randn(4, 2, 16), torch.randn(5, 2, 6)
    with torch.no_grad():
        want = q(x, k, k)[0]
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    fresh = QMHA(16, 2, add_bias_kv=True, kdim=6, vdim=6)
    fresh.load_state_dict(sd)
    for other in (fresh, copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        with torch.no_grad():
            assert torch.equal(other(x, k, k)[0], want)
    with torch.no_grad():
        got = torch.compile(q, backend="eager")(x, k, k, need_weights=False)[0]
        assert torch.equal(got, q(x, k, k, need_weights=False)[0])


def test_training_mode_dropout_and_input_gradients():
    torch.manual_seed(0)
    m = nn.MultiheadAttention(16, 2, dropout=0.5)
    q = QMHA.from_float(_with_qconfig(m))
    q.train()
    x = torch.randn(4, 2, 16, requires_grad=True)
    y, _ = q(x, x, x)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    q.eval()
    with torch.no_grad():
        assert torch.equal(q(x, x, x)[0], q(x, x, x)[0])  # (no dropout in eval mode)


def _with_qconfig(m):
    m.qconfig = tq.default_dynamic_qconfig
    return m


def test_bad_inputs_get_errors_naming_them():
    q = tq.quantize_dynamic(nn.MultiheadAttention(16, 2, kdim=6, vdim=6).eval(), {nn.MultiheadAttention})
    x, k = torch.randn(4, 2, 16), torch.randn(5, 2, 6)
    with pytest.raises(AssertionError, match="query"):  # (torch's function raises AssertionError there)
        q(torch.randn(4, 2, 15), k, k)
    with pytest.raises(RuntimeError, match="kdim=6"):
        q(x, torch.randn(5, 2, 7), k)
    with pytest.raises(AssertionError, match="do not match"):
        q(x, k, torch.randn(6, 2, 6))
    with pytest.raises(RuntimeError, match="2D attn_mask"):
        q(x, k, k, attn_mask=torch.zeros(4, 4))
    with pytest.raises(RuntimeError, match="is_causal"):
        q(x, k, k, is_causal=True)
    with pytest.raises(AssertionError, match="key_padding_mask"):
        q(x, k, k, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible"):
        QMHA(10, 3)
    with pytest.raises(TypeError, match="nn.MultiheadAttention"):
        QMHA.from_float(nn.Linear(4, 4))


def test_static_flow_converts_the_attention_with_its_projections_int8():
    torch.manual_seed(0)
    model = nn.Sequential(tq.QuantStub(), nn.Linear(32, 32), nn.TransformerEncoderLayer(32, 4, 64, batch_first=True),
                          nn.Linear(32, 10), tq.DeQuantStub()).eval()
    model.qconfig = tq.get_default_qconfig("x86")
    x = torch.randn(4, 6, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = tq.prepare(model)
    assert not [w for w in caught if "stay in float" in str(w.message)]  # (out_proj was named there)
    assert not hasattr(prepared[2].self_attn.out_proj, "activation_post_process")
    prepared(x)
    q = _quiet(tq.convert, prepared)
    attn = q[2].self_attn
    assert isinstance(attn, QMHA) and all(isinstance(getattr(attn, n), tq.nn.quantized.DynamicLinear)
                                          for n in ("q_proj", "k_proj", "v_proj", "out_proj"))
    with torch.no_grad():
        want = model(x)
        got = _quiet(q, x)
    assert (got - want).norm() / want.norm() < 0.05
    # per-channel weights, from the qconfig's weight observer
    assert attn.q_proj.weight_scale.numel() == 32 and not torch.all(attn.q_proj.weight_scale == attn.q_proj.weight_scale[0])


@pytest.mark.parametrize("need_weights", [True, False])
def test_empty_batch_and_empty_query(need_weights):
    m = nn.MultiheadAttention(16, 2).eval()
    q = tq.quantize_dynamic(m, {nn.MultiheadAttention})
    for shape in ((5, 0, 16), (0, 3, 16)):
        e = torch.randn(shape)
        with torch.no_grad():
            got, w = q(e, e, e, need_weights=need_weights)
            want, ww = m(e, e, e, need_weights=need_weights)
        assert got.shape == want.shape and (w is None) == (ww is None)
        if w is not None:
            assert w.shape == ww.shape


def test_casts_give_the_float_modules_bias_dtype():
    q = tq.quantize_dynamic(nn.MultiheadAttention(16, 2).eval(), {nn.MultiheadAttention})
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        q.to(dtype)
        assert q.in_proj_bias.dtype == dtype and q.in_proj_weight.dtype == dtype
        x = torch.randn(3, 2, 16, dtype=dtype)
        with torch.no_grad():
            assert q(x, x, x)[0].dtype == dtype


@pytest.mark.cuda
def test_cuda_attention_matches_the_cpu_module():
    torch.manual_seed(0)
    m = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    q = tq.quantize_dynamic(m, {nn.MultiheadAttention})
    qc = copy.deepcopy(q).cuda()
    x = torch.randn(3, 9, 64)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[0, -2:] = True
    with torch.no_grad():
        for kw in ({}, {"need_weights": False, "key_padding_mask": pad}):
            want = q(x, x, x, **kw)[0]
            got = qc(x.cuda(), x.cuda(), x.cuda(), **{k: v.cuda() if torch.is_tensor(v) else v for k, v in kw.items()})[0]
            # the int8 projections are bit-identical on both devices; the float attention between them is not
            assert torch.equal(qc.q_proj(x.cuda()).cpu(), q.q_proj(x))
            assert (got.cpu() - want).abs().max() < 1e-4
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2).eval()
    qe = tq.quantize_dynamic(enc).cuda()
    with torch.no_grad():
        y = qe(x.cuda(), src_key_padding_mask=pad.cuda())
    assert torch.isfinite(y[~pad.cuda()]).all()


def test_small_3d_parameters_are_no_stacked_experts():
    # A class token and a position embedding ([1, n, E]) or attention's bias_k / bias_v ([1, 1, E])
    # are 3-D parameters, but no mixture of experts: no warning, however small the model's float
    # share after the swap (the int8 weights are buffers, not parameters).
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls = nn.Parameter(torch.randn(1, 1, 32))
            self.pos = nn.Parameter(torch.randn(1, 6, 32))
            self.attn = nn.MultiheadAttention(32, 4, add_bias_kv=True, batch_first=True)

        def forward(self, x):
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
            return self.attn(x, x, x, need_weights=False)[0]

    m = Tokens().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = tq.quantize_dynamic(m)
        q(torch.randn(2, 5, 32))
        tq.quantize_dynamic(nn.Sequential(nn.MultiheadAttention(16, 2, add_bias_kv=True)))
    assert isinstance(q.attn, QMHA)


def test_nested_inputs_are_refused_naming_the_argument():
    q = tq.quantize_dynamic(nn.Sequential(nn.MultiheadAttention(16, 2, batch_first=True)))[0]
    nt = torch.nested.nested_tensor([torch.randn(3, 16), torch.randn(5, 16)])
    with torch.no_grad(), pytest.raises(NotImplementedError, match=r"argument 'query' is a NestedTensor.*"
                                                                   r"to_padded_tensor"):
        q(nt, nt, nt, need_weights=False)


def test_report_of_a_bare_attention_and_of_an_encoder_called_with_a_padding_mask():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2).eval()
    q = tq.quantize_dynamic(mha)
    x = torch.randn(5, 3, 16)
    r = tq.report(mha, q, [{"query": x, "key": x, "value": x}])  # one row: the model (out_proj is part of it)
    assert len(r) == 1 and r.layers[0].sqnr_db > 25
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    qenc = tq.quantize_dynamic(enc)
    src = torch.randn(2, 6, 16)
    mask = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
    fast = torch.backends.mha.get_fastpath_enabled()
    # under no_grad the float encoder nests its input; report compared nested outputs and raised
    r = tq.report(enc, qenc, [{"src": src, "src_key_padding_mask": mask}])
    assert torch.backends.mha.get_fastpath_enabled() == fast
    assert any(row.name.endswith("self_attn") for row in r) and all(row.numel > 0 for row in r)
