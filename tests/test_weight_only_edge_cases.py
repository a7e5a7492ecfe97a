"""quantize_weight_only and its int4 algorithms on the cases at their edges: NaN / inf weights
under GPTQ, AWQ and int8 RTN, AWQ's captured rows (copies, at most awq_max_rows of them),
from_qparams' input scale, GPTQ groups that straddle a block, asymmetric RTN of weights near
the float32 maximum, and the int4 layer under torch.compile (a short last group, torch functions
on its weight view) and the int4 ops' checks of a bias and of a scale."""
import gc
import io
import re
import warnings

import pytest
import torch
from torch import nn

import torchquant
from torchquant import weight_only
from torchquant.int4 import awq, gptq
from torchquant.int4 import format as fmt
from torchquant.nn.quantized import LinearWeightOnlyInt4


def _hessian(K, gen, n=600):
    X = torch.randn(n, K, generator=gen) @ (torch.eye(K) + 0.3 * torch.randn(K, K, generator=gen))
    acc = gptq.HessianAccumulator(K)
    acc.add(X)
    return acc


# ---------------------------------------------------------------- NaN / inf weights
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_takes_a_non_finite_weight_as_zero_and_keeps_its_row(symmetric, act_order):
    gen = torch.Generator().manual_seed(0)
    N, K, gs = 4, 96, 32
    W = torch.randn(N, K, generator=gen)
    acc = _hessian(K, gen)
    bad = W.clone()
    bad[0, 5], bad[1, 40], bad[2, 70] = float("nan"), float("inf"), -float("inf")
    zeroed = bad.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    got = gptq.gptq_quantize(bad, acc.H, gs, blocksize=32, act_order=act_order, symmetric=symmetric)
    want = gptq.gptq_quantize(zeroed, acc.H, gs, blocksize=32, act_order=act_order, symmetric=symmetric)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert bool(torch.isfinite(got[1]).all())


def test_gptq_whole_model_with_a_nan_weight_quantizes_the_rest_of_its_row():
    torch.manual_seed(0)
    K, gs = 128, 32
    m = nn.Sequential(nn.Linear(K, 4, bias=False))
    with torch.no_grad():
        m[0].weight[0, 5] = float("nan")
    W = m[0].weight.detach().clone()
    with pytest.warns(UserWarning, match=r"the weights of \['0'\] hold NaN or inf"):
        q = torchquant.quantize_weight_only(m, method="gptq", group_size=gs, calib_data=torch.randn(512, K),
                                            progress=False)
    err = (q[0].dequantized_weight() - W).abs()
    ok = torch.isfinite(W)
    # row 0's other weights are as close as row 1's (the NaN's error spread over the row before)
    assert float(err[0][ok[0]].max()) < 2 * float(err[1].max())


def test_awq_search_takes_non_finite_weights_as_zero():
    torch.manual_seed(0)
    K = 128
    x = torch.randn(512, K)
    x[:, :4] *= 20
    W1, W2 = torch.randn(64, K), torch.randn(64, K)
    s0, a0, _ = awq.awq_search(x, [W1, W2], 32, grid=10)
    assert a0 > 0
    W1n = W1.clone()
    W1n[3, 7], W1n[10, 9] = float("nan"), float("inf")
    s, a, losses = awq.awq_search(x, [W1n, W2], 32, grid=10)
    assert all(torch.isfinite(torch.tensor(losses)))
    sz, az, _ = awq.awq_search(x, [W1n.nan_to_num(nan=0.0, posinf=0.0), W2], 32, grid=10)
    assert a == az > 0 and torch.equal(s, sz)


def test_awq_whole_model_with_a_nan_weight_still_searches():
    torch.manual_seed(0)
    K = 64
    m = nn.Sequential(nn.Linear(K, 16))
    calib = torch.randn(256, K)
    calib[:, :4] *= 30
    clean = torchquant.quantize_weight_only(m, method="awq", group_size=32, calib_data=calib, progress=False)
    with torch.no_grad():
        m[0].weight[2, 50] = float("nan")  # a channel the search barely weighs
    with pytest.warns(UserWarning, match=r"the weights of \['0'\] hold NaN or inf"):
        q = torchquant.quantize_weight_only(m, method="awq", group_size=32, calib_data=calib, progress=False)
    # the search is not forced to alpha = 0 (input_scale all 1)
    assert not bool((q[0].input_scale == 1).all())
    assert torch.allclose(q[0].input_scale, clean[0].input_scale, rtol=1e-3)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_int8_non_finite_weights_go_on_as_int4_does(method, value):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 4))
    with torch.no_grad():
        m[0].weight[0, 1] = value
    with pytest.warns(UserWarning, match=r"the weights of \['0'\] hold NaN or inf"):
        q = torchquant.quantize_weight_only(m, bits=8, method=method, calib_data=torch.randn(64, 16), progress=False)
    assert bool(torch.isfinite(q[0].weight_scale).all()) and bool((q[0].weight_scale > 0).all())
    y = q(torch.randn(2, 16))
    assert bool(torch.isfinite(y[:, 1:]).all())
    if not (method == "rtn" and value == float("inf")):  # (an inf sets its channel's scale under RTN)
        assert bool(torch.isfinite(y).all())


def test_int8_rtn_of_finite_weights_is_unchanged():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(32, 64, generator=gen) * torch.rand(32, 1, generator=gen)
    q, s, _ = weight_only._int8_rtn(w)
    s0 = (w.abs().amax(1).clamp(min=torch.finfo(torch.float32).eps) / 127.5).reshape(-1, 1)
    assert torch.equal(s, s0)
    assert torch.equal(q, torch.clamp(torch.round(w * (1.0 / s0)), -128, 127).to(torch.int8))


# ---------------------------------------------------------------- AWQ's captured rows
class _Twice(nn.Module):
    def __init__(self, inplace):
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.inplace = inplace

    def forward(self, x):
        x = x.clone()
        for _ in range(2):
            if self.inplace:
                x += self.fc(x)
            else:
                x = x + self.fc(x)
        return x


def test_awq_captures_copies_of_inputs_the_model_changes_in_place():
    torch.manual_seed(0)
    a, b = _Twice(False), _Twice(True)
    b.load_state_dict(a.state_dict())
    calib = torch.randn(256, 64)
    calib[:, :4] *= 30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qa = torchquant.quantize_weight_only(a, method="awq", group_size=32, calib_data=calib, progress=False)
        qb = torchquant.quantize_weight_only(b, method="awq", group_size=32, calib_data=calib, progress=False)
    assert torch.equal(qa.fc.input_scale, qb.fc.input_scale) and torch.equal(qa.fc.qweight, qb.fc.qweight)
    # the rows of both calls, as the model computed them (fewer than awq_max_rows: all, in order)
    with torch.no_grad():
        x2 = calib + a.fc(calib)
    s, _, _ = awq.awq_search(torch.cat([calib, x2]), [a.fc.weight.detach()], 32)
    assert torch.equal(qb.fc.input_scale, 1.0 / s)


class _TwoLayers(nn.Module):  # (no chain of blocks: whole forwards)
    def __init__(self, K):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(K, K), nn.Linear(K, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _live_cpu_tensor_bytes(exclude):
    gc.collect()
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        objects = [o for o in gc.get_objects() if type(o) in (torch.Tensor, nn.Parameter)]
    for o in objects:
        if o.is_meta or o.device.type != "cpu":
            continue
        try:
            ptr = o.untyped_storage().data_ptr()
        except RuntimeError:
            continue
        if ptr and ptr not in skip:
            seen[ptr] = o.untyped_storage().nbytes()
    return sum(seen.values())


def test_awq_holds_at_most_awq_max_rows_of_a_layers_inputs(monkeypatch):
    torch.manual_seed(0)
    K, max_rows = 64, 64
    model = _TwoLayers(K).eval()
    calib = [torch.randn(64, K) for _ in range(32)]  # 2048 rows, 512 KiB per layer input
    own = list(model.state_dict().values()) + calib
    base = _live_cpu_tensor_bytes(own)
    extra, shapes = [], []
    search = awq.awq_search

    def spy(x, *args, **kwargs):
        shapes.append(tuple(x.shape))
        extra.append(_live_cpu_tensor_bytes(own) - base)
        return search(x, *args, **kwargs)

    monkeypatch.setattr(weight_only._awq, "awq_search", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchquant.quantize_weight_only(model, method="awq", group_size=32, calib_data=calib, awq_max_rows=max_rows,
                                        progress=False)
    assert shapes == [(max_rows, K)] * 2
    # the rows kept, the layers' weights, codes and stand-ins: far below the 512 KiB of fc2's inputs
    assert max(extra) < 160 * 1024, extra


def test_row_sample_is_all_rows_in_order_while_they_fit_else_a_uniform_sample():
    gen = torch.Generator().manual_seed(0)
    rows = torch.arange(100, dtype=torch.float32).reshape(-1, 1).expand(-1, 3)
    s = weight_only._RowSample(100, gen)
    for part in rows.split(7):
        s.add(part)
    assert torch.equal(s.rows(), rows) and s.seen == 100
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())  # nothing drawn
    assert s.finite and s.live.tolist() == [True] * 3
    counts = torch.zeros(100)
    for seed in range(400):
        s = weight_only._RowSample(20, torch.Generator().manual_seed(seed))
        for part in rows.split(10):
            s.add(part)
        got = s.rows()[:, 0]
        assert got.shape == (20,) and got.unique().numel() == 20  # a sample without replacement
        counts[got.long()] += 1
    # every row, early or late, in about 20% of the samples
    assert float((counts / 400 - 0.2).abs().max()) < 0.1, counts
    again = weight_only._RowSample(20, torch.Generator().manual_seed(399))
    for part in rows.split(10):
        again.add(part)
    assert torch.equal(again.rows()[:, 0], got)  # deterministic given the generator


# ---------------------------------------------------------------- from_qparams' input scale
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_from_qparams_refuses_an_input_scale_load_state_dict_refuses(value):
    torch.manual_seed(0)
    W = torch.randn(8, 16)
    s, z = fmt.choose_group_qparams(W, 8)
    q = fmt.quantize_groups(W, s, z, 8)
    isc = torch.ones(16)
    isc[3] = value
    with pytest.raises(ValueError, match=rf"argument 'input_scale' must be > 0 and finite, got {value} at input "
                                         r"channel 3"):
        LinearWeightOnlyInt4.from_qparams(q, s, z, None, 8, input_scale=isc)
    m = LinearWeightOnlyInt4.from_qparams(q, s, z, None, 8, input_scale=torch.full((16,), 0.5))
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = LinearWeightOnlyInt4(16, 8, bias=False, group_size=8, input_scale=True)
    m2.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(2, 16)
    assert torch.equal(m2(x), m(x))


# ---------------------------------------------------------------- GPTQ groups across blocks
@pytest.mark.parametrize("group_size, blocksize", [(96, 128), (160, 128), (192, 128), (96, 64), (40, 32)])
def test_gptq_blocked_matches_unblocked_when_groups_straddle_blocks(group_size, blocksize):
    gen = torch.Generator().manual_seed(1)
    N, K = 16, 384
    W = torch.randn(N, K, generator=gen)
    acc = _hessian(K, gen, n=1000)
    q, s, z = gptq.gptq_quantize(W, acc.H, group_size, blocksize=blocksize)
    q_ref, s_ref, z_ref = gptq.gptq_reference(W, acc.H, group_size)
    # Same algorithm, different float association: all but (rare) near-ties agree.
    assert (q == q_ref).float().mean() > 0.995
    assert torch.allclose(s, s_ref, rtol=1e-4) and (z != z_ref).float().mean() < 0.02


# ---------------------------------------------------------------- asymmetric RTN near the float32 maximum
def test_asymmetric_qparams_of_huge_weights_stay_finite():
    w = torch.zeros(2, 32)
    w[0, 0], w[0, 1] = 2e38, -2e38
    w[1, 0], w[1, 1] = float("inf"), -float("inf")
    s, z = fmt.choose_group_qparams(w, 32)
    assert bool(torch.isfinite(s).all()) and bool((s > 0).all())
    assert s[0, 0].item() == pytest.approx(4e38 / 15, rel=1e-6) and z[0, 0].item() == 8
    m = nn.Sequential(nn.Linear(32, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.cat([w[:1], w[:1]]))
    q = torchquant.quantize_weight_only(m, method="rtn", group_size=32, progress=False)
    assert torch.equal(q[0].weight_scale, fmt.choose_group_qparams(m[0].weight.detach(), 32)[0])


def test_asymmetric_qparams_of_ordinary_weights_are_unchanged():
    # the scale is (max - min) / 15 rounded as before, bit for bit
    gen = torch.Generator().manual_seed(5)
    eps = torch.finfo(torch.float32).eps
    for mag in (1e-6, 1e-3, 1.0, 50.0, 1e20):
        w = torch.randn(64, 200, generator=gen) * mag * torch.rand(64, 1, generator=gen) ** 3
        w[:4] = w[:4].abs()  # one-sided groups
        s, z = fmt.choose_group_qparams(w, 32)
        wg = fmt._grouped(w, 32)
        zero = torch.zeros(())
        mn = torch.minimum(torch.nan_to_num(wg, nan=float("inf")).amin(-1), zero)
        mx = torch.maximum(torch.nan_to_num(wg, nan=float("-inf")).amax(-1), zero)
        s0 = (mx - mn) / torch.full_like(mx, 15.0)
        s0 = torch.where(s0 > eps, s0, torch.full_like(s0, eps))
        assert torch.equal(s, s0)
        assert torch.equal(z, torch.clamp(-torch.round(mn / s0), 0, 15).to(torch.int64))


# ---------------------------------------------------------------- report() of an AWQ fold
class _LnChain(nn.Module):  # ln -> fc1 -> fc2: both of AWQ's scales fold (into ln, into fc1)
    def __init__(self):
        super().__init__()
        self.ln, self.fc1, self.fc2 = nn.LayerNorm(64), nn.Linear(64, 64), nn.Linear(64, 16)

    def forward(self, x):
        return self.fc2(self.fc1(self.ln(x)))


def test_report_undoes_an_exact_awq_fold():
    torch.manual_seed(0)
    m = _LnChain().eval()
    X = torch.randn(256, 64) * torch.linspace(0.1, 8, 64)
    q = torchquant.quantize_weight_only(m, method="awq", calib_data=X, group_size=32, progress=False)
    assert q.fc1.input_scale is None and q.fc2.input_scale is None  # (both folded)
    rtn = torchquant.quantize_weight_only(m, method="rtn", group_size=32, progress=False)
    assert q.state_dict().keys() == rtn.state_dict().keys()  # the record is no state
    r = torchquant.report(m, q, X)
    # the LayerNorm is the float one with its output divided by s: no error of its own
    assert r["ln"].sqnr_db > 100 and r["ln"].max_abs_error < 1e-4
    assert not hasattr(m.ln, weight_only._FOLD_ATTR)  # (the given model is untouched)
    # fc1's row is its own rounding error, not fc2's 1 / s: as RTN's row, within a few dB
    assert abs(r["fc1"].sqnr_db - torchquant.report(m, rtn, X)["fc1"].sqnr_db) < 6
    with torch.no_grad():
        s2 = getattr(q.fc1, weight_only._FOLD_ATTR)
        want = 10 * torch.log10((m.fc1(m.ln(X)) ** 2).sum() / ((m.fc1(m.ln(X)) - q.fc1(q.ln(X)) * s2) ** 2).sum())
    assert r["fc1"].sqnr_db == pytest.approx(float(want), abs=0.05)
    # the record travels with deepcopy and pickle
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    for copy in (__import__("copy").deepcopy(q), torch.load(buf, weights_only=False)):
        assert torchquant.report(m, copy, X)["ln"].sqnr_db > 100


# ---------------------------------------------------------------- a tuple as calib_data
def test_calib_data_refuses_a_tuple_of_tensors():
    torch.manual_seed(0)
    seen = []

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(100, 64), nn.Linear(64, 64)

        def forward(self, input_ids, attention_mask=None):
            seen.append(attention_mask is not None)
            return self.fc(self.emb(input_ids)) * attention_mask[..., None]

    ids, mask = torch.randint(2, 100, (4, 16)), torch.ones(4, 16, dtype=torch.long)
    for method in ("gptq", "awq"):
        with pytest.raises(TypeError, match=r"'calib_data' is a tuple of 2 tensors.*\[\(ids, mask\)\] for one batch "
                                            r"or \[x1, x2, \.\.\.\] for several"):
            torchquant.quantize_weight_only(LM(), method=method, calib_data=(ids, mask), group_size=32,
                                            progress=False)
    assert not seen  # refused before any forward
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchquant.quantize_weight_only(LM(), method="gptq", calib_data=[(ids, mask)], group_size=32, progress=False)
    assert seen and all(seen)


# ---------------------------------------------------------------- a Linear with in_features = 0
def test_group_format_and_int8_rtn_of_an_empty_k():
    w = torch.zeros(4, 0)
    s, z = fmt.choose_group_qparams(w, 8)
    q = fmt.quantize_groups(w, s, z, 8)
    assert q.shape == (4, 0) and s.shape == z.shape == (4, 0)
    assert fmt.dequantize_groups(q, s, z, 8).shape == (4, 0)
    q8, s8, _ = weight_only._int8_rtn(w)
    assert q8.shape == (4, 0) and bool((s8 > 0).all())


@pytest.mark.parametrize("bits, method", [(4, "rtn"), (4, "gptq"), (4, "awq"), (8, "rtn"), (8, "gptq")])
def test_a_linear_with_no_inputs_quantizes_to_its_bias(bits, method):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(0, 4), nn.ReLU(), nn.Linear(4, 4))
    x = torch.randn(8, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torchquant.quantize_weight_only(m, bits=bits, method=method, calib_data=x, group_size=8, progress=False)
    assert type(q[0]) is type(q[2]) is not nn.Linear
    assert torch.equal(q[0](x), m[0](x).detach())
    lone = LinearWeightOnlyInt4.from_float(nn.Linear(0, 4), group_size=8)
    assert torch.equal(lone(x), lone.bias.expand(8, 4))


def test_awq_of_a_layer_with_no_inputs_after_its_producer():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 0), nn.Linear(0, 4))  # (a producer with no output channels)
    x = torch.randn(8, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torchquant.quantize_weight_only(m, method="awq", calib_data=x, group_size=8, progress=False)
    assert torch.equal(q(x), m(x).detach())


# ---------------------------------------------------------------- messages of a model that is one Linear
def test_messages_name_the_model_when_it_is_the_one_linear():
    lin = nn.Linear(64, 16)
    with pytest.warns(RuntimeWarning, match=r"GPTQ: the model saw 8 calibration rows"):
        torchquant.quantize_weight_only(lin, method="gptq", calib_data=torch.randn(8, 64), group_size=32,
                                        progress=False)
    for method in ("gptq", "awq"):
        with pytest.warns(RuntimeWarning) as rec:
            torchquant.quantize_weight_only(lin, method=method, calib_data=[torch.zeros(0, 64)], group_size=32,
                                            progress=False)
        msgs = [str(w.message) for w in rec]
        # called, on empty batches only: not "not called"
        assert any(f"{method.upper()}: the model saw no calibration rows" in s for s in msgs), msgs
        assert not any("not called" in s or "['']" in s for s in msgs), msgs
        with pytest.raises(ValueError, match=r"the inputs of the model on the calibration data hold NaN"):
            torchquant.quantize_weight_only(lin, method=method, calib_data=torch.full((100, 64), float("nan")),
                                            group_size=32, progress=False)


def test_a_layer_never_called_is_still_named_as_not_called():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 8)

        def forward(self, x):
            return self.a(x)

    for method in ("gptq", "awq"):
        with pytest.warns(RuntimeWarning, match=rf"{method.upper()}: b was not called on the calibration data"):
            torchquant.quantize_weight_only(Skip(), method=method, calib_data=torch.randn(256, 64), group_size=32,
                                            progress=False)


def test_a_fold_into_a_float_linear_stays_recorded_when_it_is_quantized_later():
    torch.manual_seed(0)
    m = _LnChain().eval()
    X = torch.randn(256, 64) * torch.linspace(0.1, 8, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torchquant.quantize_weight_only(m, method="awq", calib_data=X, group_size=32, progress=False,
                                            exclude=["fc1"])
    assert type(q.fc1) is nn.Linear and torchquant.report(m, q, X)["fc1"].sqnr_db > 100  # (float, divided by s)
    q2 = torchquant.quantize_weight_only(q, method="rtn", group_size=32, progress=False)
    assert torch.equal(getattr(q2.fc1, weight_only._FOLD_ATTR), getattr(q.fc1, weight_only._FOLD_ATTR))
    rtn = torchquant.quantize_weight_only(m, method="rtn", group_size=32, progress=False)
    assert abs(torchquant.report(m, q2, X)["fc1"].sqnr_db - torchquant.report(m, rtn, X)["fc1"].sqnr_db) < 6


# ---------------------------------------------------------------- int4 under torch.compile, argument checks
def _int4_layer(K, N=8, group_size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(K, N)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=gen))
        lin.bias.copy_(torch.randn(N, generator=gen))
    return LinearWeightOnlyInt4.from_float(lin, group_size=group_size)


def test_inductor_dequantizes_a_short_last_group_as_eager():
    # K = 70 in groups of 32: inductor left the channels of the last, short group uninitialized
    # (the expansion of the group qparams to [N, K]), in the weight and in the input gradient
    torch._dynamo.reset()
    q = _int4_layer(70)
    x = torch.randn(2, 70, generator=torch.Generator().manual_seed(1), requires_grad=True)
    q(x).sum().backward()
    want, x.grad = x.grad.clone(), None
    torch.compile(q, fullgraph=True)(x).sum().backward()
    assert torch.equal(x.grad, want)
    assert torch.equal(torch.compile(q.dequantized_weight, fullgraph=True)(), q.dequantized_weight())
    torch._dynamo.reset()


def test_torch_functions_on_the_int4_weight_view_trace_with_fullgraph():
    torch._dynamo.reset()
    q = _int4_layer(64)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    for f in (lambda x: torch.nn.functional.linear(x, q.weight), lambda x: torch.mm(q.weight, x.t()),
              lambda x: x @ torch.t(q.weight)):
        assert torch.equal(torch.compile(f, backend="eager", fullgraph=True)(x), f(x))
    torch._dynamo.reset()
    with pytest.raises(TypeError, match=r"Int4WeightView\.zero_: the int4 layer's weight view is read-only"):
        torch.nn.init.zeros_(q.weight)


def test_linear_int4_refuses_a_bias_that_is_not_1d_of_out_features():
    from torch._subclasses.fake_tensor import FakeTensorMode
    ops = torch.ops.torchquant
    q = _int4_layer(64, N=8)
    b = q._buffers
    x = torch.randn(2, 64)
    for bias in (torch.zeros(1, 8), torch.zeros(8, 1), torch.zeros(2, 4)):  # 8 elements, not [8]
        msg = (r"argument 'bias' must be a floating-point tensor of shape \[8\], got dtype [\w.]+ and shape "
               + re.escape(str(list(bias.shape))))
        with pytest.raises(RuntimeError, match=msg):
            ops.linear_int4(x, b["_w_packed"], b["_w_qp"], b["_w_scale"], bias, 64, 8, 32)
        with FakeTensorMode() as mode:  # the fake kernel (torch.compile, torch.export): the same check
            args = [mode.from_tensor(t) for t in (x, b["_w_packed"], b["_w_qp"], b["_w_scale"], bias)]
            with pytest.raises(RuntimeError, match=msg):
                ops.linear_int4(*args, 64, 8, 32)
    assert torch.equal(ops.linear_int4(x, b["_w_packed"], b["_w_qp"], b["_w_scale"], b["bias"], 64, 8, 32), q(x))


def test_a_bad_int4_scale_is_named_by_channel_and_group():
    N, K, gs = 6, 70, 32
    qv, z = torch.zeros(N, K, dtype=torch.uint8), torch.full((N, 3), 8)
    s = torch.ones(N, 3)
    s[4, 2] = float("nan")
    with pytest.raises(RuntimeError, match=r"argument 'scale' must be > 0 and finite, got nan at channel 4, group 2$"):
        LinearWeightOnlyInt4.from_qparams(qv, s, z, None, gs)
    s = torch.ones(N, 3, dtype=torch.float64)
    s[3, 1] = 1e-200  # (0 in float32)
    with pytest.raises(RuntimeError, match=r"got 1e-200 \(0 in float32\) at channel 3, group 1$"):
        torch.ops.torchquant.int4_pack_weight(fmt.pack_int4(qv), s, z, K, gs)
