"""RTN, GPTQ and AWQ for the int4 format, each against a small plain-torch reference, and the
whole-model entry point quantize_weight_only (calibration by layer, AWQ folding, report)."""
import warnings

import pytest
import torch
from torch import nn

import torchquant
from torchquant.int4 import awq, gptq
from torchquant.int4 import format as fmt
from torchquant.int4 import reference as ref
from torchquant.nn.quantized import DynamicLinear, LinearWeightOnlyInt4


def _correlated_x(n, K, gen):
    # activations with a few large channels and correlated inputs, as in real layers
    base = torch.randn(n, K // 4, generator=gen)
    x = torch.cat([base, base + 0.1 * torch.randn(n, K // 4, generator=gen),
                   torch.randn(n, K - K // 2, generator=gen)], 1)
    x[:, :3] *= 8
    return x


def _h_err(W, Wq, H):
    D = (W - Wq).double()
    return float(torch.einsum("nk,kl,nl->", D, H.double(), D))


def _dq(q, s, z, gs):
    return fmt.dequantize_groups(q, s, z, gs)


# ---------------------------------------------------------------- GPTQ
@pytest.mark.parametrize("blocksize", [32, 64, 128])
def test_gptq_matches_unblocked_reference(blocksize):
    gen = torch.Generator().manual_seed(0)
    N, K, gs = 12, 96, 32
    W = torch.randn(N, K, generator=gen)
    X = _correlated_x(400, K, gen)
    acc = gptq.HessianAccumulator(K)
    for chunk in X.split(100):
        acc.add(chunk)
    assert acc.rows == 400
    assert torch.allclose(acc.H, 2 * X.double().t() @ X.double() / 400)
    q, s, z = gptq.gptq_quantize(W, acc.H, gs, blocksize=blocksize)
    q_ref, s_ref, z_ref = gptq.gptq_reference(W, acc.H, gs)
    # Same algorithm, different float association: all but (rare) near-ties agree.
    assert (q == q_ref).float().mean() > 0.995
    assert torch.allclose(s, s_ref, rtol=1e-4) and torch.equal(z, z_ref) or (z != z_ref).float().mean() < 0.02


def test_gptq_beats_rtn_on_the_layer_output():
    gen = torch.Generator().manual_seed(1)
    N, K, gs = 32, 128, 32
    W = torch.randn(N, K, generator=gen)
    X = _correlated_x(1000, K, gen)
    acc = gptq.HessianAccumulator(K)
    acc.add(X)
    s0, z0 = fmt.choose_group_qparams(W, gs)
    rtn = _dq(fmt.quantize_groups(W, s0, z0, gs), s0, z0, gs)
    for act_order in (False, True):
        q, s, z = gptq.gptq_quantize(W, acc.H, gs, act_order=act_order)
        assert q.max() <= 15
        g = _dq(q, s, z, gs)
        assert _h_err(W, g, acc.H) < 0.7 * _h_err(W, rtn, acc.H), act_order


@pytest.mark.parametrize("blocksize", [32, 128])
def test_symmetric_gptq_matches_unblocked_reference_and_chooses_only_scales(blocksize):
    gen = torch.Generator().manual_seed(20)
    N, K, gs = 12, 96, 32
    W = torch.randn(N, K, generator=gen)
    W[0, :32] = torch.rand(32, generator=gen) + 0.1  # a one-sided group
    X = _correlated_x(400, K, gen)
    acc = gptq.HessianAccumulator(K)
    acc.add(X)
    q, s, z = gptq.gptq_quantize(W, acc.H, gs, blocksize=blocksize, symmetric=True)
    q_ref, s_ref, z_ref = gptq.gptq_reference(W, acc.H, gs, symmetric=True)
    assert bool((z == 8).all()) and bool((z_ref == 8).all())
    # Same algorithm, different float association: all but (rare) near-ties agree.
    assert (q == q_ref).float().mean() > 0.995
    assert torch.allclose(s, s_ref, rtol=1e-4)
    # the first group's scale is the symmetric RTN one of the weights as given
    s0, _ = fmt.choose_group_qparams(W[:, :gs], gs, symmetric=True)
    assert torch.equal(s[:, 0], s0[:, 0])
    # not the asymmetric run relabelled
    qa, sa, za = gptq.gptq_quantize(W, acc.H, gs, blocksize=blocksize)
    assert not torch.equal(za, z) and not torch.equal(qa, q)
    # and it beats symmetric round-to-nearest on the layer output, with or without act_order
    ss, zs = fmt.choose_group_qparams(W, gs, symmetric=True)
    rtn = _dq(fmt.quantize_groups(W, ss, zs, gs), ss, zs, gs)
    for act_order in (False, True):
        q2, s2, z2 = gptq.gptq_quantize(W, acc.H, gs, blocksize=blocksize, act_order=act_order, symmetric=True)
        assert bool((z2 == 8).all()) and q2.max() <= 15
        assert _h_err(W, _dq(q2, s2, z2, gs), acc.H) < 0.7 * _h_err(W, rtn, acc.H), act_order
    for bad in ("yes", 1):
        with pytest.raises(TypeError, match=rf"argument 'symmetric' must be True or False, got {bad!r}"):
            gptq.gptq_quantize(W, acc.H, gs, symmetric=bad)
        with pytest.raises(TypeError, match=rf"argument 'symmetric' must be True or False, got {bad!r}"):
            gptq.gptq_reference(W, acc.H, gs, symmetric=bad)


def test_gptq_too_little_data_warns_with_condition():
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(8, 64, generator=gen)
    acc = gptq.HessianAccumulator(64)
    acc.add(torch.randn(10, 64, generator=gen))
    with pytest.warns(RuntimeWarning, match="10 calibration rows for K = 64.*condition number") as rec:
        q, s, z = gptq.gptq_quantize(W, acc.H, 32, rows=acc.rows)
    assert torch.isfinite(_dq(q, s, z, 32)).all()
    # the condition number given (from power iterations, no SVD) is the dampened Hessian's
    import re

    H = acc.H.double()
    exact = float(torch.linalg.cond(H + 0.01 * float(torch.diag(H).mean()) * torch.eye(64, dtype=torch.float64)))
    shown = float(re.search(r"condition number about ([0-9.e+]+)", str(rec[0].message)).group(1))
    assert abs(shown - exact) / exact < 0.01


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_reads_a_fixed_number_of_values_on_the_host(act_order):
    # every scalar read (int(t), t.item()) is a device sync on a GPU: GPTQ's column loop must not
    # read one per column (K syncs per layer)
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountReads(TorchDispatchMode):
        reads = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                CountReads.reads += 1
            return func(*args, **(kwargs or {}))

    gen = torch.Generator().manual_seed(5)
    counts = []
    for K in (64, 256):
        acc = gptq.HessianAccumulator(K)
        acc.add(torch.randn(4 * K, K, generator=gen))
        W = torch.randn(8, K, generator=gen)
        CountReads.reads = 0
        with CountReads():
            gptq.gptq_quantize(W, acc.H, 32, act_order=act_order)
        counts.append(CountReads.reads)
    assert counts[0] == counts[1] and counts[0] < 16, counts


@pytest.mark.parametrize("kind", ["indefinite", "zero", "nan_free_tiny"])
def test_gptq_non_positive_definite_hessian(kind):
    gen = torch.Generator().manual_seed(3)
    K = 64
    W = torch.randn(8, K, generator=gen)
    if kind == "indefinite":
        A = torch.randn(K, K, generator=gen, dtype=torch.float64)
        H = A + A.t()  # eigenvalues of both signs
    elif kind == "zero":
        H = torch.zeros(K, K, dtype=torch.float64)  # every input dead
    else:
        H = torch.full((K, K), 1e-30, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q, s, z = gptq.gptq_quantize(W, H, 32)
    dq = _dq(q, s, z, 32)
    assert torch.isfinite(dq).all() and torch.isfinite(s).all()
    if kind == "indefinite":
        with pytest.warns(RuntimeWarning, match="not positive definite"):
            gptq.gptq_quantize(W, H, 32)


# ---------------------------------------------------------------- AWQ
def test_awq_search_matches_brute_force():
    gen = torch.Generator().manual_seed(4)
    K, gs = 64, 32
    X = _correlated_x(256, K, gen)
    Ws = [torch.randn(16, K, generator=gen), torch.randn(8, K, generator=gen)]
    s, alpha, losses = awq.awq_search(X, Ws, gs, grid=10)
    # brute force, written out
    xm = X.abs().mean(0)
    y = X @ torch.cat(Ws).t()
    brute = []
    for i in range(10):
        a = i / 10
        sc = xm.clamp(min=1e-4) ** a
        sc = sc / (sc.max() * sc.min()).sqrt()
        wq = []
        for W in Ws:
            Wsc = W * sc
            gs_s, gs_z = fmt.choose_group_qparams(Wsc, gs)
            wq.append(_dq(fmt.quantize_groups(Wsc, gs_s, gs_z, gs), gs_s, gs_z, gs) / sc)
        brute.append(float(((X @ torch.cat(wq).t() - y) ** 2).mean()))
    assert losses == pytest.approx(brute, rel=1e-5)
    assert alpha == pytest.approx(brute.index(min(brute)) / 10)
    assert losses[0] >= min(losses)  # alpha = 0 is RTN: never better than the choice
    assert min(losses) < 0.9 * losses[0]  # with outlier channels the scales pay


def test_symmetric_awq_search_rounds_symmetrically_and_never_loses_to_symmetric_rtn():
    gen = torch.Generator().manual_seed(21)
    K, gs = 64, 32
    X = _correlated_x(256, K, gen)
    Ws = [torch.randn(16, K, generator=gen), torch.randn(8, K, generator=gen)]
    s, alpha, losses = awq.awq_search(X, Ws, gs, grid=10, symmetric=True)
    y = X @ torch.cat(Ws).t()
    # alpha = 0 is symmetric round-to-nearest, written out
    rtn = []
    for W in Ws:
        sc, zp = fmt.choose_group_qparams(W, gs, symmetric=True)
        assert bool((zp == 8).all())
        rtn.append(_dq(fmt.quantize_groups(W, sc, zp, gs), sc, zp, gs))
    rtn_loss = float(((X @ torch.cat(rtn).t() - y).double() ** 2).mean())
    assert losses[0] == pytest.approx(rtn_loss, rel=1e-6)
    assert torch.equal(awq.rtn_fake(Ws[0], gs, symmetric=True), rtn[0])
    _, _, asym = awq.awq_search(X, Ws, gs, grid=10)
    assert losses[0] != pytest.approx(asym[0], rel=1e-3)  # the symmetric grid, not the asymmetric one
    assert min(losses) <= losses[0] and losses[losses.index(min(losses))] == min(losses)
    assert alpha == pytest.approx(losses.index(min(losses)) / 10)
    assert min(losses) < 0.9 * losses[0]  # with outlier channels the scales pay
    with pytest.raises(TypeError, match=r"argument 'symmetric' must be True or False, got 'yes'"):
        awq.awq_search(X, Ws, gs, grid=2, symmetric="yes")


def test_input_channels_dead_on_the_calibration_rows_keep_awq_weights_and_are_named():
    # AWQ gave a channel that is 0 on every calibration row the smallest scale: its weights
    # rounded to 0 and its input scale amplified it (0.365 relative error where it is not 0)
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    calib = torch.randn(512, 64)
    calib[:, :8] = 0
    test = torch.randn(200, 64)
    with torch.no_grad():
        y_ref = lin(test)
        rtn = torchquant.quantize_weight_only(lin, group_size=32, progress=False)
        rtn_err = (rtn(test) - y_ref).norm() / y_ref.norm()
    with pytest.warns(RuntimeWarning, match=r"AWQ: 8 input channels of 1 layer were 0 on every calibration row "
                                            r"\(the model: 8 of 64\); AWQ left their weights unscaled"):
        q = torchquant.quantize_weight_only(lin, group_size=32, method="awq", calib_data=[calib], progress=False)
    assert torch.equal(q.input_scale[:8], torch.ones(8))
    with torch.no_grad():
        assert (q(test) - y_ref).norm() / y_ref.norm() < 1.2 * rtn_err
    s = awq.awq_candidate_scales(torch.tensor([0.0, 0.5, 2.0]), 0.5)
    assert s.tolist() == pytest.approx([1, 0.5 ** 0.5, 2 ** 0.5])
    # GPTQ sets their weights to 0 (documented): said once for the model, naming each layer
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    with torch.no_grad():
        m[0].bias[:5] = -100.0  # five hidden neurons that never fire
    with pytest.warns(RuntimeWarning) as record:
        q = torchquant.quantize_weight_only(m, group_size=32, method="gptq", calib_data=[calib], progress=False)
    said = [str(w.message) for w in record if "every calibration row" in str(w.message)]
    assert said == [said[0]] and said[0].startswith("GPTQ: 13 input channels of 2 layers were 0 on every calibration "
                                                    "row (0: 8 of 64, 2: 5 of 64); GPTQ set their weights to 0")
    assert q[2].weight[:, :5].abs().max() == 0


# ---------------------------------------------------------------- whole models
class Block(nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * d, d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x = x + self.fc2(self.act(self.fc1(self.ln(x))))
        return self.head(x)


def _data(gen, n=8, d=64):
    return [_correlated_x(64, d, gen) for _ in range(n)]


def _mse(model, ref_model, data):
    with torch.no_grad():
        return sum(float(((model(x) - ref_model(x)) ** 2).mean()) for x in data)


def test_quantize_weight_only_methods():
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(5)
    model = Block().eval()
    calib, test = _data(gen), _data(gen)
    errs = {}
    for method in ("rtn", "gptq", "awq"):
        q = torchquant.quantize_weight_only(model, group_size=32, method=method, calib_data=calib, progress=False)
        assert all(isinstance(getattr(q, n), LinearWeightOnlyInt4) for n in ("fc1", "fc2", "head"))
        errs[method] = _mse(q, model, test)
    assert errs["gptq"] < errs["rtn"] and errs["awq"] < errs["rtn"], errs
    # the original is untouched
    assert isinstance(model.fc1, nn.Linear)


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_quantize_weight_only_symmetric_round_trips_into_a_fresh_model(method, tmp_path):
    torch.manual_seed(22)
    gen = torch.Generator().manual_seed(22)
    model = Block().eval()
    calib, test = _data(gen, 4), _data(gen, 2)
    q = torchquant.quantize_weight_only(model, group_size=32, method=method, calib_data=calib, symmetric=True,
                                        progress=False)
    layers = {n: getattr(q, n) for n in ("fc1", "fc2", "head")}
    assert all(isinstance(m, LinearWeightOnlyInt4) for m in layers.values())
    for n, m in layers.items():
        assert bool((m.weight_zero_point == 8).all()), n
    if method == "rtn":  # the module's own RTN, layer by layer
        for n, m in layers.items():
            want = LinearWeightOnlyInt4.from_float(getattr(model, n), group_size=32, symmetric=True)
            assert torch.equal(m.qweight, want.qweight) and torch.equal(m.weight_scale, want.weight_scale), n
    # close to the float model: within twice asymmetric RTN's error, and the calibrated methods
    # below symmetric RTN's
    rtn = torchquant.quantize_weight_only(model, group_size=32, progress=False)
    err = _mse(q, model, test)
    assert err < 2 * _mse(rtn, model, test)
    if method != "rtn":
        sym_rtn = torchquant.quantize_weight_only(model, group_size=32, symmetric=True, progress=False)
        assert err < _mse(sym_rtn, model, test)
    torch.save(q.state_dict(), tmp_path / "q.pt")
    skeleton = torchquant.quantize_weight_only(Block().eval(), group_size=32, method="rtn", progress=False)
    skeleton.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True), strict=True)
    with torch.no_grad():
        for x in test:
            assert torch.equal(skeleton(x), q(x)), method
    assert bool((skeleton.fc1.weight_zero_point == 8).all())


def test_quantize_weight_only_bits8_is_symmetric_either_way():
    torch.manual_seed(23)
    gen = torch.Generator().manual_seed(23)
    model = Block().eval()
    calib = _data(gen, 2)
    for method in ("rtn", "gptq"):
        a = torchquant.quantize_weight_only(model, bits=8, method=method, calib_data=calib, progress=False)
        b = torchquant.quantize_weight_only(model, bits=8, method=method, calib_data=calib, symmetric=True,
                                            progress=False)
        assert isinstance(b.fc1, DynamicLinear)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), method


def test_awq_folds_into_layernorm_and_keeps_input_scale_elsewhere():
    torch.manual_seed(6)
    gen = torch.Generator().manual_seed(6)
    model = Block().eval()
    calib = _data(gen)
    q = torchquant.quantize_weight_only(model, group_size=32, method="awq", calib_data=calib, progress=False)
    assert q.fc1.input_scale is None  # folded into ln
    assert not torch.equal(q.ln.weight, model.ln.weight)
    assert q.fc2.input_scale is not None  # after GELU: nothing to fold into
    # the quantized model is exactly its modules: check fc1's output against the oracle
    x = calib[0]
    with torch.no_grad():
        h = q.ln(x)
        want = ref.linear_int4(h, q.fc1.qweight, q.fc1.weight_scale, q.fc1.weight_zero_point, q.fc1.bias, 64, 32)
        assert torch.equal(q.fc1(h), want)
    unfolded = torchquant.quantize_weight_only(model, group_size=32, method="awq", calib_data=calib,
                                               awq_fold=False, progress=False)
    assert unfolded.fc1.input_scale is not None and torch.equal(unfolded.ln.weight, model.ln.weight)


class _ReadsWeights(nn.Module):
    """ln feeds fc; the forward also reads fc's weight (fc_weight) or ln's (ln_weight) directly."""

    def __init__(self, read):
        super().__init__()
        self.ln, self.fc, self.read = nn.LayerNorm(64), nn.Linear(64, 64), read

    def forward(self, x):
        a = self.fc(self.ln(x))
        if self.read == "fc_weight":
            return a, nn.functional.linear(x, self.fc.weight)
        return a, nn.functional.layer_norm(x, (64,), self.ln.weight, self.ln.bias)


@pytest.mark.parametrize("read", ["fc_weight", "ln_weight"])
def test_awq_does_not_fold_into_weights_the_model_also_reads_directly(read):
    # fc would hold Q(W * s) with 1 / s in ln: a direct read of fc.weight got W * s, of ln.weight w / s
    torch.manual_seed(0)
    m = _ReadsWeights(read).eval()
    with torch.no_grad():
        m.ln.weight.copy_(torch.rand(64) + 0.5)
    scales = torch.logspace(-1, 1, 64)
    calib = [torch.randn(256, 64) * scales for _ in range(2)]
    x = torch.randn(32, 64) * scales
    with pytest.warns(UserWarning, match="could not be folded .* also reads its weights or theirs directly"):
        q = torchquant.quantize_weight_only(m, group_size=32, method="awq", calib_data=calib, progress=False)
    assert q.fc.input_scale is not None and torch.equal(q.ln.weight, m.ln.weight)
    with torch.no_grad():
        (a, b), (a_ref, b_ref) = q(x), m(x)
    assert (a - a_ref).norm() / a_ref.norm() < 0.1
    assert (b - b_ref).norm() / b_ref.norm() < 0.1  # (0.32 with the scale folded into fc)


def test_quantize_weight_only_gptq_layer_by_layer_sees_quantized_inputs():
    # fc2's Hessian must come from fc1's quantized output: compare with a manual two-step run.
    torch.manual_seed(7)
    gen = torch.Generator().manual_seed(7)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16)).eval()
    calib = _data(gen, 4, 32)
    q = torchquant.quantize_weight_only(model, group_size=32, method="gptq", calib_data=calib, progress=False)
    acc0 = gptq.HessianAccumulator(32)
    for x in calib:
        acc0.add(x)
    q0, s0, z0 = gptq.gptq_quantize(model[0].weight, acc0.H, 32)
    assert torch.equal(q[0].qvalues(), q0)
    w0 = _dq(q0, s0, z0, 32)
    acc1 = gptq.HessianAccumulator(64)
    for x in calib:
        acc1.add(torch.relu(x @ w0.t() + model[0].bias))
    q1, _, _ = gptq.gptq_quantize(model[2].weight, acc1.H, 32)
    assert (q[2].qvalues() == q1).float().mean() > 0.995


def test_quantize_weight_only_bits8_and_exclude_and_report():
    torch.manual_seed(8)
    gen = torch.Generator().manual_seed(8)
    model = Block().eval()
    calib = _data(gen)
    q8 = torchquant.quantize_weight_only(model, bits=8, method="gptq", calib_data=calib, exclude=["head"],
                                         progress=False)
    assert isinstance(q8.fc1, DynamicLinear) and isinstance(q8.head, nn.Linear)
    assert _mse(q8, model, calib) < 1e-3
    q4 = torchquant.quantize_weight_only(model, group_size=64, method="rtn")
    r = torchquant.report(model, q4, calib, show_size=True)
    fc1 = r["fc1"]
    assert fc1.sqnr_db > 15 and fc1.float_bytes == (64 * 256 + 256) * 4
    assert fc1.float_bytes / fc1.quantized_bytes > 5
    assert "quant KiB" in r.table()


def test_quantize_weight_only_warns_on_few_rows():
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(128, 8))
    with pytest.warns(RuntimeWarning, match="condition number"):
        torchquant.quantize_weight_only(model, group_size=32, method="gptq", calib_data=[torch.randn(20, 128)],
                                        progress=False)


def test_quantize_weight_only_hf_conv1d_as_linear():
    # GPT-2's layers are transformers' Conv1D (weight stored [in, out]): each becomes the
    # equivalent Linear, then int4; RTN's output equals the float model with each Conv1D's weight
    # replaced by its dequantized transpose, and GPTQ beats RTN.
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D
    torch.manual_seed(10)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=64, n_layer=1, n_head=2, n_positions=32, bos_token_id=0,
                                  eos_token_id=0)
    model = transformers.GPT2Model(cfg).eval()
    ids = torch.randint(0, 64, (4, 32))
    calib = [ids[:2], ids[2:]]
    conv_names = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    assert len(conv_names) == 4
    q = torchquant.quantize_weight_only(model, group_size=32, method="rtn", exclude=[conv_names[-1]], progress=False)
    assert all(isinstance(q.get_submodule(n), LinearWeightOnlyInt4) for n in conv_names[:-1])
    assert isinstance(q.get_submodule(conv_names[-1]), Conv1D)  # excluded: left as it is
    assert all(isinstance(m, Conv1D) for n, m in model.named_modules() if n in conv_names)  # original untouched
    fake = __import__("copy").deepcopy(model)
    with torch.no_grad():
        for n in conv_names[:-1]:
            qm = q.get_submodule(n)
            w = qm.dequantized_weight()
            assert w.shape == fake.get_submodule(n).weight.t().shape
            fake.get_submodule(n).weight.copy_(w.t())
        want, got = fake(ids).last_hidden_state, q(ids).last_hidden_state
        base = model(ids).last_hidden_state
    # the CPU kernel rounds activations to int8 (docs/quantization.md): far below the int4 error
    assert float((got - want).pow(2).mean()) < 0.02 * float((want - base).pow(2).mean())
    with torch.no_grad():
        err = {}
        for method in ("rtn", "gptq"):
            qm = torchquant.quantize_weight_only(model, group_size=32, method=method, calib_data=calib, progress=False)
            err[method] = float((qm(ids).last_hidden_state - base).pow(2).mean())
    assert err["gptq"] < err["rtn"], err


def test_quantize_weight_only_aliases_root_layers_and_failed_inplace_call():
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = Conv1D(64, 32)   # 32 -> 64
            self.alias = self.a       # the same layer under a second name
            self.lin = nn.Linear(64, 64)
            self.lin2 = self.lin

        def forward(self, x):
            return self.lin2(self.lin(self.a(x)))

    torch.manual_seed(11)
    m = M()
    with pytest.raises(ValueError, match="needs calib_data"):
        torchquant.quantize_weight_only(m, method="gptq", calib_data=None, inplace=True)
    assert isinstance(m.a, Conv1D) and type(m.lin) is nn.Linear  # nothing changed by the refused call
    q = torchquant.quantize_weight_only(m, group_size=32, progress=False)
    assert isinstance(q.a, LinearWeightOnlyInt4) and q.alias is q.a and q.lin2 is q.lin
    x = torch.randn(3, 32)
    assert float((q(x) - m(x)).norm() / m(x).norm()) < 0.1
    root = torchquant.quantize_weight_only(nn.Linear(64, 8), group_size=32, progress=False)
    assert isinstance(root, LinearWeightOnlyInt4) and not dict(root.named_children())
    root = torchquant.quantize_weight_only(Conv1D(8, 64), group_size=32, method="gptq",
                                           calib_data=[torch.randn(200, 64)], progress=False)
    assert isinstance(root, LinearWeightOnlyInt4) and root(torch.randn(2, 64)).shape == (2, 8)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrating_methods_take_a_linear_called_with_a_keyword_input(method):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 8)

        def forward(self, x):
            return self.fc(input=x)  # valid for nn.Linear

    torch.manual_seed(0)
    m = M()
    x = torch.randn(64, 16)
    q = torchquant.quantize_weight_only(m, group_size=8, method=method, calib_data=[x], progress=False)
    assert isinstance(q.fc, LinearWeightOnlyInt4)
    rel = (q(x) - m(x)).norm() / m(x).norm()
    assert rel < 0.2


def test_exclude_takes_one_name_as_a_string():
    m = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8))
    q = torchquant.quantize_weight_only(m, group_size=8, exclude="1", progress=False)
    assert isinstance(q[0], LinearWeightOnlyInt4) and type(q[1]) is nn.Linear
    with pytest.raises(ValueError, match=r"does not have: \['lm_head'\]"):
        torchquant.quantize_weight_only(m, group_size=8, exclude="lm_head", progress=False)


def test_exclude_takes_module_names_not_types():
    m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    for exclude in ([nn.Linear], [nn.Linear, nn.ReLU], nn.Linear):  # (two types failed in sorted())
        with pytest.raises(TypeError, match=r"argument 'exclude' takes module names \(qualified names as "
                                            r"model.named_modules\(\) gives them.*got the type "
                                            r"torch.nn.modules.linear.Linear; to leave every layer of a type"):
            torchquant.quantize_weight_only(m, group_size=8, exclude=exclude, progress=False)
    with pytest.raises(TypeError, match=r"'exclude' takes module names .*got int 2$"):
        torchquant.quantize_weight_only(m, group_size=8, exclude=["0", 2], progress=False)


def test_a_failed_inplace_call_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    m = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    x = torch.randn(256, 64) * torch.linspace(0.1, 5, 64)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    calls = {"n": 0}

    def interrupt(mod, args):  # stands in for Ctrl-C in a long run, after AWQ folded into the LayerNorm
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    h = m[3].register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        torchquant.quantize_weight_only(m, group_size=32, method="awq", calib_data=[x], inplace=True, progress=False)
    h.remove()
    assert [type(c) for c in m] == [nn.LayerNorm, nn.Linear, nn.ReLU, nn.Linear]
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_hf_conv1d_swap_is_undone_when_an_inplace_call_fails_and_a_dict_is_one_batch():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    g = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 16))
    before = {k: v.clone() for k, v in g.state_dict().items()}

    def fail(mod, args, kwargs):
        raise RuntimeError("stop")

    h = g.transformer.h[1].register_forward_pre_hook(fail, with_kwargs=True)
    with pytest.raises(RuntimeError, match="stop"):
        torchquant.quantize_weight_only(g, method="gptq", group_size=32, calib_data=[ids], inplace=True,
                                        progress=False)
    h.remove()
    assert type(g.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert all(torch.equal(v, g.state_dict()[k]) for k, v in before.items())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torchquant.quantize_weight_only(g, method="gptq", group_size=32, progress=False,
                                            calib_data={"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert isinstance(q.transformer.h[0].attn.c_attn, LinearWeightOnlyInt4)
    with pytest.raises(TypeError, match="'calib_data' must be a tensor, a dict"):
        torchquant.quantize_weight_only(g, method="gptq", calib_data=5, progress=False)


def test_checkpoints_reload_into_an_rtn_skeleton_and_group_size_is_checked():
    torch.manual_seed(0)
    m = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 40))
    x = torch.randn(128, 64) * torch.linspace(0.1, 5, 64)
    for method in ("gptq", "awq"):
        q = torchquant.quantize_weight_only(m, group_size=32, method=method, calib_data=[x], progress=False,
                                            awq_fold=False)
        skeleton = torchquant.quantize_weight_only(m, group_size=32, method="rtn", progress=False)
        skeleton.load_state_dict(q.state_dict(), strict=True)
        assert torch.equal(skeleton(x), q(x)), method
    lin = nn.Linear(64, 16)
    q = LinearWeightOnlyInt4.from_float(lin, group_size=32)
    other = LinearWeightOnlyInt4(64, 16, bias=True, group_size=48)  # the same shapes (2 groups)
    with pytest.raises(RuntimeError, match="quantized with group_size=32, this LinearWeightOnlyInt4 has group_size=48"):
        other.load_state_dict(q.state_dict())


def test_group_size_and_k_are_checked_on_a_state_dict_without_metadata(tmp_path):
    # safetensors (Hugging Face's save_pretrained) keeps no metadata: K = 64 has the same shapes at
    # group sizes 32 and 48, and K = 63 the same as K = 64
    from safetensors.torch import load_file, save_file
    torch.manual_seed(0)
    q = LinearWeightOnlyInt4.from_float(nn.Linear(64, 16), group_size=32)
    save_file(q.state_dict(), tmp_path / "q.safetensors")
    sd = load_file(tmp_path / "q.safetensors")
    with pytest.raises(RuntimeError, match="quantized with group_size=32, this LinearWeightOnlyInt4 has group_size=48"):
        LinearWeightOnlyInt4(64, 16, group_size=48).load_state_dict(sd)
    k64 = LinearWeightOnlyInt4.from_float(nn.Linear(64, 16), group_size=64)
    save_file(k64.state_dict(), tmp_path / "k.safetensors")
    with pytest.raises(RuntimeError, match="quantized with in_features=64, this LinearWeightOnlyInt4 has "
                                           "in_features=63"):
        LinearWeightOnlyInt4(63, 16, group_size=64).load_state_dict(load_file(tmp_path / "k.safetensors"))
    x = torch.randn(4, 64)
    same = LinearWeightOnlyInt4(64, 16, group_size=32)
    same.load_state_dict(sd)
    assert torch.equal(same(x), q(x))
    # a checkpoint saved before weight_format existed loads, strict, checked by its metadata
    old = q.state_dict()
    del old["weight_format"]
    fresh = nn.Sequential(LinearWeightOnlyInt4(64, 16, group_size=32)).to("meta").to_empty(device="cpu")
    fresh[0].load_state_dict(old)
    assert torch.equal(fresh[0](x), q(x)) and fresh[0].weight_format.tolist() == [32, 64]
    assert fresh[0].state_dict()["weight_format"].tolist() == [32, 64]
    with pytest.raises(RuntimeError, match="quantized with group_size=32"):
        LinearWeightOnlyInt4(64, 16, group_size=48).load_state_dict(old)


def test_gptq_shares_one_calibration_pass_among_linears_of_one_input(monkeypatch):
    # q, k and v read the same tensor: one capture and one Hessian for the three, the same
    # result as one pass each, with fewer forwards of the model.
    from torchquant import weight_only

    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(64, 64) for _ in range(3))
            self.o = torch.nn.Linear(64, 64)

        def forward(self, x):
            a = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) / 8, -1)
            return self.o(a @ self.v(x))

    torch.manual_seed(5)
    model = torch.nn.Sequential(Attn(), Attn())
    calib = [torch.randn(2, 16, 64) for _ in range(3)]

    def run():
        forwards = []
        h = model.register_forward_pre_hook(lambda m, a: forwards.append(1))
        try:  # whole forwards, counted (without the per-block cache tested below)
            q = torchquant.quantize_weight_only(model, bits=4, group_size=32, method="gptq", calib_data=calib,
                                                cache_block_inputs=False, progress=False)
        finally:
            h.remove()
        return q, len(forwards)

    shared, n_shared = run()
    orig = weight_only._execution_order
    monkeypatch.setattr(weight_only, "_execution_order", lambda m, lin, b, shared=None: orig(m, lin, b, None))
    alone, n_alone = run()
    sd_a, sd_b = shared.state_dict(), alone.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert n_shared == 1 + 4 * len(calib) and n_alone == 1 + 8 * len(calib)


def test_gptq_does_not_share_a_hessian_across_a_repeated_call(monkeypatch):
    # C reads the input of A's second call, which follows B's pass: it must get its own pass,
    # not B's Hessian (built from another input).
    from torchquant import weight_only

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.A, self.B, self.C = (torch.nn.Linear(32, 32) for _ in range(3))

        def forward(self, x):
            h = self.A(x)
            y = self.B(h) * 10 + 3
            return self.A(y) + self.C(y)

    torch.manual_seed(6)
    model = M()
    calib = [torch.randn(64, 32) for _ in range(2)]
    grouped = torchquant.quantize_weight_only(model, bits=4, group_size=32, method="gptq", calib_data=calib,
                                              progress=False)
    orig = weight_only._execution_order
    monkeypatch.setattr(weight_only, "_execution_order", lambda m, lin, b, shared=None: orig(m, lin, b, None))
    alone = torchquant.quantize_weight_only(model, bits=4, group_size=32, method="gptq", calib_data=calib,
                                            progress=False)
    sd_a, sd_b = grouped.state_dict(), alone.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


# ---------------------------------------------------------------- calibration by block
class _Layer(nn.Module):
    """A transformer-like block: the hidden state positionally, a mask and a tuple by keyword."""

    def __init__(self, d=64, inplace=False, stateful=False):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.inplace, self.stateful, self.calls = inplace, stateful, 0

    def forward(self, h, mask=None, rot=None):
        x = self.ln(h) * rot[0] + rot[1]
        a = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) / 8 + mask, -1) @ self.v(x)
        if self.inplace:
            h += self.o(a)
        else:
            h = h + self.o(a)
        if self.stateful:
            self.calls += 1
            h = h + self.calls
        return h + self.down(torch.relu(self.up(h))), a.sum()


class _Stack(nn.Module):
    def __init__(self, n=4, d=64, chain=True, **kw):
        super().__init__()
        self.inp = nn.Linear(16, d)
        self.layers = nn.ModuleList(_Layer(d, **kw) for _ in range(n))
        self.head = nn.Linear(d, 8)
        self.chain = chain
        self.register_buffer("rot", torch.linspace(0.5, 1.5, d))

    def forward(self, x):
        h = self.inp(x)
        mask = torch.triu(torch.full((x.shape[-2], x.shape[-2]), -1e4), 1)
        rot = (self.rot, self.rot - 1)
        prev = h
        for layer in self.layers:
            out = layer(h if self.chain else prev, mask=mask, rot=rot)[0]
            prev, h = h, out
        return self.head(h)


def _layer_calls(model):
    calls = [0]
    layers = model.layers if hasattr(model, "layers") else model
    hooks = [m.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1)) for m in layers]
    return calls, hooks


def _quantize_both_ways(model, calib, method, monkeypatch=None):
    from torchquant import weight_only
    plans = []
    if monkeypatch is not None:
        orig = weight_only._block_plan
        monkeypatch.setattr(weight_only, "_block_plan", lambda *a: plans.append(orig(*a)) or plans[-1])
    out = []
    for cache in (True, False):
        calls, hooks = _layer_calls(model)
        try:
            q = torchquant.quantize_weight_only(model, bits=4, group_size=32, method=method, calib_data=calib,
                                                cache_block_inputs=cache, progress=False)
        finally:
            for h in hooks:
                h.remove()
        out.append((q.state_dict(), calls[0]))
    (sa, ca), (sb, cb) = out
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), method
    return ca, cb, plans


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_cached_block_inputs_give_the_same_model_with_passes_linear_in_depth(method, monkeypatch):
    torch.manual_seed(11)
    calib = [torch.randn(4, 12, 16) for _ in range(3)]
    calls = {}
    for n in (2, 4, 8):
        model = _Stack(n).eval()
        cached, whole, plans = _quantize_both_ways(model, calib, method, monkeypatch)
        # every Linear inside the layers is calibrated from cached inputs; inp and head are not
        assert len(plans[0]) == 6 * n and not {"inp", "head"} & set(plans[0])
        calls[n] = cached, whole
    # whole forwards: each Linear's pass runs every layer before it; cached: each layer a few times
    (c2, w2), (c4, w4), (c8, w8) = calls[2], calls[4], calls[8]
    assert c8 - c4 == 2 * (c4 - c2), calls  # linear in the depth
    assert w8 - w4 > 3 * (w4 - w2) * 0.9 and c8 < w8 / 2, calls


@pytest.mark.parametrize("kw, why", [({"inplace": True}, "changes its input in place"),
                                     ({"stateful": True}, "keeps state between calls"),
                                     ({"chain": False}, "not a chain")])
def test_blocks_that_cannot_be_rerun_alone_get_whole_forwards(kw, why, monkeypatch):
    torch.manual_seed(12)
    calib = [torch.randn(6, 12, 16) for _ in range(2)]
    model = _Stack(3, **kw).eval()
    # (a stateful block's counter, advanced by the check's forwards, is put back: the whole
    # forwards that follow give what they give without the check)
    _, _, plans = _quantize_both_ways(model, calib, "gptq", monkeypatch)
    assert plans == [{}], why


def test_a_linear_shared_across_blocks_is_calibrated_by_whole_forwards(monkeypatch):
    torch.manual_seed(13)
    model = _Stack(3).eval()
    model.layers[2].up = model.layers[0].up  # one module called in two blocks
    calib = [torch.randn(6, 12, 16) for _ in range(2)]
    _, _, plans = _quantize_both_ways(model, calib, "gptq", monkeypatch)
    assert plans == [{}]


def test_awq_folding_into_another_block_keeps_whole_forwards(monkeypatch):
    # block i's last LayerNorm feeds block i+1's first Linear alone: folding AWQ's scale there would
    # change inputs already cached, so the model runs whole forwards (and folds as before)
    torch.manual_seed(14)
    d = 32
    blocks = [nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.LayerNorm(d)) for _ in range(3)]
    model = nn.Sequential(*blocks).eval()
    calib = [torch.randn(64, d) for _ in range(2)]
    from torchquant import weight_only
    fed = []
    orig = weight_only._Feeder.__init__
    monkeypatch.setattr(weight_only._Feeder, "__init__", lambda self, m, b, plan, *a: fed.append(plan) or orig(self, m, b, plan, *a))
    _, _, plans = _quantize_both_ways(model, calib, "awq", monkeypatch)
    assert len(plans[0]) == 6 and fed[0] == {}  # a chain, whose inputs AWQ's folding cannot cache
    q = torchquant.quantize_weight_only(model, bits=4, group_size=32, method="awq", calib_data=calib, progress=False)
    assert q[1][0].input_scale is None  # folded into block 0's LayerNorm
    # GPTQ folds nothing: the same model is calibrated block by block there
    fed.clear()
    _quantize_both_ways(model, calib, "gptq", monkeypatch)
    assert len(fed[0]) == 6


def test_hf_llama_calibrates_by_block_and_keeps_its_config(monkeypatch):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    torch.manual_seed(15)
    model = transformers.LlamaModel(cfg).eval()
    calib = [torch.randint(0, 100, (4, 16)) for _ in range(2)]
    for method in ("gptq", "awq"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, _, plans = _quantize_both_ways(model, calib, method, monkeypatch)
        assert len(plans[0]) == 7 * 3, method  # q, k, v, o, gate, up, down of each layer
        assert model.config.use_cache is True


def test_rtn_swaps_as_it_goes_shares_only_replaced_weights_and_undoes_an_interrupted_inplace_call(monkeypatch):
    from torchquant import weight_only
    torch.manual_seed(16)

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 32)
            self.a, self.b, self.keep = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)
            self.b2 = self.b  # one layer under two names
            self.head = nn.Linear(32, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, i):
            return self.head(self.keep(self.b(self.a(self.emb(i)))))

    m = Tied()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.warns(UserWarning, match="head shares its weight"):
        q = torchquant.quantize_weight_only(m, group_size=32, exclude=["keep"], progress=False)
    assert isinstance(q.a, LinearWeightOnlyInt4) and q.b is q.b2 and isinstance(q.b, LinearWeightOnlyInt4)
    # the layers left in float are the copy's own (a copy's weight changed in place leaves m alone)
    assert q.keep.weight is not m.keep.weight and q.head.weight is q.emb.weight is not m.emb.weight
    with torch.no_grad():
        q.keep.weight.zero_()
        q.emb.weight.zero_()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())

    # inplace: the second layer's rounding is interrupted; the first layer's swap is undone
    n = {"calls": 0}
    orig = weight_only._rtn

    def interrupted(*a):
        n["calls"] += 1
        if n["calls"] == 2:
            raise KeyboardInterrupt
        return orig(*a)

    monkeypatch.setattr(weight_only, "_rtn", interrupted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            torchquant.quantize_weight_only(m, group_size=32, inplace=True, progress=False)
    assert type(m.a) is nn.Linear and type(m.b) is nn.Linear and m.b2 is m.b
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_linear_subclasses_keeping_its_forward_are_quantized_and_others_named():
    class Plain(nn.Linear):  # keeps nn.Linear's forward (as NonDynamicallyQuantizableLinear)
        pass

    class Own(nn.Linear):  # a forward of its own (as Falcon's FalconLinear)
        def forward(self, x):
            return x @ self.weight.T + self.bias

    m = nn.Sequential(Plain(32, 32), Own(32, 32), nn.MultiheadAttention(32, 4), nn.Linear(32, 8))
    with pytest.warns(UserWarning, match=r"\['Own'\] subclass nn.Linear but have a forward\(\) of their own"):
        q = torchquant.quantize_weight_only(m, group_size=32, progress=False)
    assert isinstance(q[0], LinearWeightOnlyInt4) and type(q[1]) is Own and isinstance(q[3], LinearWeightOnlyInt4)
    assert type(q[2].out_proj) is type(m[2].out_proj)  # MultiheadAttention reads it directly
    with pytest.warns(UserWarning, match="nothing was quantized"):
        torchquant.quantize_weight_only(nn.Sequential(Own(32, 32)), group_size=32, progress=False)


class _Res(nn.Module):
    """A residual block (the residual inside: the parent hands each block's output to the next)."""

    def __init__(self, d=32, parent=None):
        super().__init__()
        self.ln, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.parent = [parent]  # (not a submodule)

    def forward(self, h, stack=None):
        y = self.fc2(torch.nn.functional.gelu(self.fc1(self.ln(h))))
        if self.parent[0] is not None:
            y = y * self.parent[0].ctx["scale"]  # state the parent's forward sets per batch
        if stack is not None:  # an argument (a list) whose contents change between blocks
            y = y + stack[-1]
            stack.append(y)
        return h + y


class _Ctx(nn.Module):
    """A chain of blocks whose forward breaks the reuse of cached inputs in the ways models do."""

    def __init__(self, case, d=32, n=3):
        super().__init__()
        self.case, self.ctx = case, {}
        self.inp, self.head = nn.Linear(d, d), nn.Linear(d, d)
        reads = case in ("parent_state", "reads_context")
        self.blocks = nn.ModuleList(_Res(d, self if reads else None) for _ in range(n))

    def forward(self, x):
        self.ctx["scale"] = x.shape[1] / 8
        h = self.inp(x)
        stack = [h] if self.case == "list_arg" else None
        for i, b in enumerate(self.blocks):
            if self.case == "early_exit" and x.shape[0] == 1 and i == 1:
                break  # a later batch takes another path
            h = b(h, stack) if stack is not None else b(h)
            if self.case == "inplace_between" and i == 1:
                h.mul_(0.5)  # the parent changes a block's output before the next block
        if self.case == "reads_context":
            self.ctx.clear()  # the blocks run only inside the model's forward
        return self.head(h)


@pytest.mark.parametrize("case", ["plain", "early_exit", "parent_state", "inplace_between", "reads_context",
                                  "list_arg"])
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_cached_block_inputs_equal_whole_forwards_when_batches_or_blocks_misbehave(case, method, monkeypatch):
    from torchquant import weight_only
    plans = []
    orig = weight_only._block_plan
    monkeypatch.setattr(weight_only, "_block_plan", lambda *a: plans.append(orig(*a)) or plans[-1])
    torch.manual_seed(17)
    g = torch.Generator().manual_seed(17)
    calib = [torch.randn(3, 8, 32, generator=g), torch.randn(1, 12, 32, generator=g),
             torch.randn(2, 6, 32, generator=g)]
    model = _Ctx(case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = []
    for cache in (True, False):
        q = torchquant.quantize_weight_only(model, bits=4, group_size=32, method=method, calib_data=calib,
                                            cache_block_inputs=cache, progress=False)
        out.append(q.state_dict())
    assert out[0].keys() == out[1].keys() and all(torch.equal(out[0][k], out[1][k]) for k in out[0]), case
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert (len(plans[0]) == 6) == (case == "plain")  # every other case runs whole forwards


def test_awq_fx_trace_leaves_no_proxy_in_a_model_whose_forward_sets_attributes():
    class Mem(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.fc = nn.LayerNorm(32), nn.Linear(32, 32)

        def forward(self, x):
            y = self.fc(self.ln(x))
            self.last = y.detach().mean()  # tracing would store an fx Proxy here
            return y

    torch.manual_seed(19)
    m = nn.Sequential(Mem(), Mem())
    x = torch.randn(64, 32)
    m(x)
    torchquant.quantize_weight_only(m, group_size=32, method="awq", calib_data=[x], inplace=True, progress=False)
    assert all(not isinstance(v, torch.fx.Proxy) for mod in m.modules() for v in mod.__dict__.values())
    m(x)  # still runs


def test_hf_llama_with_a_cache_requested_by_a_later_batch_runs_whole_forwards():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    torch.manual_seed(18)
    model = transformers.LlamaModel(cfg).eval()
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[0, 9:] = 0  # (a padded batch: the layers then take a mask tensor)
    calib = [{"input_ids": torch.randint(0, 100, (4, 16)), "attention_mask": mask, "use_cache": c}
             for c in (False, True, True)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = (torchquant.quantize_weight_only(model, group_size=32, method="gptq", calib_data=calib,
                                                cache_block_inputs=c, progress=False).state_dict() for c in (True, False))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reparametrized_linears_calibrate_as_their_effective_weight():
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(20)

    def build(norm):
        m = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 8))
        with torch.no_grad():
            m[0].weight.mul_(torch.logspace(-1, 1, 32).reshape(-1, 1))
        if norm:
            weight_norm(m[0])
            torch.nn.utils.weight_norm(m[2])  # (the hook-based form)
        return m.eval()

    torch.manual_seed(20)
    normed = build(True)
    torch.manual_seed(20)
    plain = build(False)  # the same biases; the normed layers' effective weights, plain
    with torch.no_grad():
        plain[0].weight.copy_(normed[0].weight)
        plain[2].weight.copy_(normed[2].weight)
    calib = [torch.randn(128, 32) for _ in range(2)]
    for method in ("gptq", "awq"):
        a = torchquant.quantize_weight_only(normed, group_size=32, method=method, calib_data=calib, progress=False)
        b = torchquant.quantize_weight_only(plain, group_size=32, method=method, calib_data=calib, progress=False)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.allclose(sa[k].float(), sb[k].float(), rtol=1e-5, atol=1e-6)
                                              for k in sa), method
    assert parametrize.is_parametrized(normed[0])  # the given model keeps its parametrizations
    # an excluded re-parametrized Linear feeding a quantized one takes no AWQ scale (it would drop
    # it from its computed weight and keep it in its bias: a wrong model, silently)
    pair = nn.Sequential(weight_norm(nn.Linear(32, 32)), nn.Linear(32, 32)).eval()
    x = torch.randn(256, 32)
    with pytest.warns(UserWarning, match="could not be folded"):
        q = torchquant.quantize_weight_only(pair, group_size=32, method="awq", calib_data=[x], exclude=["0"],
                                            progress=False)
    nofold = torchquant.quantize_weight_only(pair, group_size=32, method="awq", calib_data=[x], exclude=["0"],
                                             awq_fold=False, progress=False)
    assert q[1].input_scale is not None
    with torch.no_grad():
        assert torch.equal(q(x), nofold(x))


def test_inplace_failures_training_flags_hooks_aliases_and_tied_producers(monkeypatch):
    from torchquant.nn import quantized_int4
    torch.manual_seed(21)

    def build():
        m = nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 32), nn.BatchNorm1d(32), nn.Linear(32, 32)).train()
        m[2].eval()  # a module's own flag
        return m

    calib = [torch.randn(64, 32) for _ in range(2)]
    # an interrupt during the final swap of an inplace GPTQ / AWQ call: nothing of it stays
    for method in ("gptq", "awq"):
        m = build()
        before = {k: v.clone() for k, v in m.state_dict().items()}
        orig = quantized_int4.LinearWeightOnlyInt4.from_qparams.__func__
        n = {"calls": 0}

        def interrupted(cls, *a, **k):
            n["calls"] += 1
            if n["calls"] == 2:
                raise KeyboardInterrupt
            return orig(cls, *a, **k)

        monkeypatch.setattr(quantized_int4.LinearWeightOnlyInt4, "from_qparams", classmethod(interrupted))
        with pytest.raises(KeyboardInterrupt):
            torchquant.quantize_weight_only(m, group_size=32, method=method, calib_data=calib, inplace=True,
                                            progress=False)
        monkeypatch.undo()
        assert [type(c) for c in m] == [nn.LayerNorm, nn.Linear, nn.BatchNorm1d, nn.Linear], method
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items()), method
        assert [c.training for c in m] == [True, True, False, True] and m.training
    # each module keeps its own training flag; a quantized layer takes the replaced one's
    m = build()
    m[3].eval()
    fired = []
    m[3].register_forward_pre_hook(lambda mod, a: fired.append("pre"))
    m[3].register_forward_hook(lambda mod, a, out: fired.append("fwd"))
    q = torchquant.quantize_weight_only(m, group_size=32, progress=False)
    assert [c.training for c in q] == [True, True, False, False]
    q.eval()(calib[0])
    assert fired == ["pre", "fwd"]  # the user's hooks, carried to the int4 layer
    # a layer under two names is excluded by either
    two = nn.Sequential(nn.Linear(32, 32))
    two.add_module("again", two[0])
    q = torchquant.quantize_weight_only(two, group_size=32, exclude=["again"], progress=False)
    assert type(q[0]) is nn.Linear and q.again is q[0]
    # AWQ folds no scale into a LayerNorm whose weight another LayerNorm shares
    tied = nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 32), nn.LayerNorm(32), nn.Linear(32, 32)).eval()
    tied[2].weight = tied[0].weight
    with torch.no_grad():
        tied[0].weight.uniform_(0.5, 2.0)
    x = torch.randn(256, 32) * torch.linspace(0.1, 4, 32)
    a = torchquant.quantize_weight_only(tied, group_size=32, method="awq", calib_data=[x], progress=False)
    assert torch.equal(a[0].weight, tied[0].weight) and a[1].input_scale is not None


def test_a_spectral_norm_in_training_mode_is_read_without_its_power_iteration():
    from torch.nn.utils.parametrizations import spectral_norm
    torch.manual_seed(22)
    m = nn.Sequential(spectral_norm(nn.Linear(32, 32)), nn.Linear(32, 8)).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for method in ("rtn", "gptq"):
        torchquant.quantize_weight_only(m, group_size=32, method=method, calib_data=[torch.randn(64, 32)],
                                        progress=False)
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items()), method  # u, v untouched


@pytest.mark.parametrize("method,bits", [("awq", 4), ("gptq", 4), ("gptq", 8)])
def test_non_finite_huge_or_empty_calibration_data(method, bits):
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8)).eval()

    x = torch.randn(8, 64)
    x[0, 0] = float("nan")
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"inputs of 0 on the calibration data hold NaN or inf.*'calib_data'"):
        torchquant.quantize_weight_only(m, bits=bits, group_size=32, method=method, calib_data=[x], progress=False,
                                inplace=True)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items()) and isinstance(m[0], nn.Linear)
    # Finite rows whose squared error overflows float32, and empty batches, still quantize.
    for data in ([torch.randn(8, 64) * 1e30], [torch.randn(0, 64)]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = torchquant.quantize_weight_only(model(), bits=bits, group_size=32, method=method, calib_data=data,
                                        progress=False)
        for p in q.state_dict().values():
            assert not p.is_floating_point() or bool(torch.isfinite(p).all())
    X = torch.randn(16, 64) * 1e38  # the product itself overflows: no finite loss, alpha 0 (RTN)
    s, alpha, _ = awq.awq_search(X, [torch.randn(8, 64)], 32, grid=4)
    assert alpha == 0.0 and bool(torch.isfinite(s).all())


def _live_tensor_bytes(exclude=()):
    """Bytes of the storages of every tensor Python holds, less those of `exclude`."""
    import gc
    gc.collect()
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (isinstance on some deprecated objects of torch warns)
        # (plain tensors only: fake or functional ones other tests left to the collector have no data)
        objects = [o for o in gc.get_objects() if type(o) in (torch.Tensor, nn.Parameter)]
    for o in objects:
        if not o.is_meta and o.device.type == "cpu":
            try:
                st = o.untyped_storage()
                ptr = st.data_ptr()
            except RuntimeError:
                continue
            if ptr and ptr not in skip:
                seen[ptr] = st.nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("method", ["gptq", "awq"])
@pytest.mark.parametrize("inplace", [False, True])
def test_calibrating_methods_hold_no_second_float_copy_and_leave_the_given_weights_alone(method, inplace):
    # GPTQ / AWQ compute with each quantized layer's dequantized weight put in the float weight's
    # place (not written into it): neither a copy of the model nor the originals kept to restore
    # an inplace call; a finished block's stand-ins are let go. Measured at each call of the last
    # layer: live tensors beyond the model's own, against its Linear weights.
    torch.manual_seed(21)
    model = _Stack(8, d=256).eval()
    calib = [torch.randn(2, 12, 16) for _ in range(2)]
    lins = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    given = {n: (m.weight, m.weight._version, m.weight.detach().clone()) for n, m in lins.items()}
    own = [t for t in model.state_dict().values()]
    linear_bytes = sum(m.weight.numel() * 4 for m in lins.values())
    ref = {n: v for n, (_, _, v) in given.items()}
    extra = []
    base = _live_tensor_bytes(own + list(ref.values()))
    hook = model.layers[7].down.register_forward_pre_hook(
        lambda m, a: extra.append(_live_tensor_bytes(own + list(ref.values())) - base))
    try:
        out = torchquant.quantize_weight_only(model, bits=4, group_size=32, method=method, calib_data=calib,
                                              inplace=inplace, progress=False)
    finally:
        hook.remove()
    assert isinstance(out.layers[7].down, LinearWeightOnlyInt4)
    # (what stays: the int4 codes and qparams of the layers done, one block's stand-ins, a Hessian;
    # a second float copy made it 1.4x-1.5x)
    assert extra and max(extra) < 0.75 * linear_bytes, (extra, linear_bytes)
    for n, m in lins.items():  # the given Linears (swapped out of an inplace model) as they were
        p, version, values = given[n]
        assert m.weight is p and p._version == version and torch.equal(p, values), n
        assert "forward" not in m.__dict__, n


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_a_linears_own_forward_wrapper_runs_through_calibration_and_stays(method):
    # a wrapper set on the instance (as accelerate's hooks set one) runs at every call of the layer,
    # before and after the layer is quantized, and the swapped-out layer keeps it
    torch.manual_seed(22)
    model = _Stack(3).eval()
    lin = model.layers[0].up
    inner, counts = lin.forward, {"wrapper": 0, "calls": 0}

    def wrapper(x):
        counts["wrapper"] += 1
        return inner(x) * 0.5

    lin.forward = wrapper
    # (calls that ran: a pre-hook also counts the calibration's capture of the layer's own inputs,
    # which stops the forward there)
    lin.register_forward_hook(lambda m, a, y: counts.__setitem__("calls", counts["calls"] + 1))
    calib = [torch.randn(2, 12, 16) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchquant.quantize_weight_only(model, bits=4, group_size=32, method=method, calib_data=calib,
                                        inplace=True, progress=False)
    assert counts["calls"] > 4 and counts["wrapper"] == counts["calls"], counts
    assert lin.__dict__.get("forward") is wrapper


def test_awq_inplace_leaves_the_swapped_out_producer_linears_as_given():
    # AWQ folds the scale of b into a (a Linear feeding b alone): the int4 modules hold the divided
    # qparams and bias, the float modules swapped out of the model keep their weights and biases
    torch.manual_seed(23)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    before = {n: (m, m.weight, m.weight.detach().clone(), m.bias.detach().clone())
              for n, m in model.named_children() if isinstance(m, nn.Linear)}
    calib = [torch.randn(64, 64) * torch.linspace(0.1, 4, 64) for _ in range(2)]
    with torch.no_grad():
        ref = model(calib[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = torchquant.quantize_weight_only(model, bits=4, group_size=32, method="awq", calib_data=calib,
                                              inplace=True, progress=False)
    assert out is model and all(isinstance(model[i], LinearWeightOnlyInt4) for i in (0, 1, 3))
    assert model[1].input_scale is None  # folded into model[0]
    for n, (m, p, w, b) in before.items():
        assert m.weight is p and torch.equal(p, w) and torch.equal(m.bias, b), n
    with torch.no_grad():
        assert (model(calib[0]) - ref).norm() < 0.1 * ref.norm()


class _ReadsInBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):  # fc called, and its weight also read directly, inside the block
        return x + self.fc2(torch.relu(self.fc(x))) + 0.1 * nn.functional.linear(x, self.fc.weight)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_a_finished_blocks_direct_weight_reads_see_the_quantized_weight_in_later_whole_forwards(method, monkeypatch):
    # the head after the chain is calibrated by whole forwards, which run every finished block again
    torch.manual_seed(24)
    model = nn.Sequential(nn.ModuleList(_ReadsInBlock(64) for _ in range(3)), nn.Linear(64, 8))

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers, self.head = model[0], model[1]

        def forward(self, x):
            for b in self.layers:
                x = b(x)
            return self.head(x)

    calib = [torch.randn(4, 10, 64) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, plans = _quantize_both_ways(M().eval(), calib, method, monkeypatch)
    assert len(plans[0]) == 6 and "head" not in plans[0]


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_a_linear_whose_weight_is_a_buffer_calibrates(method):
    torch.manual_seed(25)
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    w = m[0].weight.detach().clone()
    del m[0].weight
    m[0].register_buffer("weight", w)
    x = torch.randn(16, 64)
    with torch.no_grad():
        ref = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torchquant.quantize_weight_only(m, bits=4, group_size=32, method=method, calib_data=[x], progress=False)
    assert isinstance(q[0], LinearWeightOnlyInt4) and m[0].weight is w and "weight" not in m[0]._parameters
    with torch.no_grad():
        assert (q(x) - ref).norm() < 0.1 * ref.norm()


def test_gptq_does_not_share_a_hessian_across_an_in_place_change_of_the_input():
    # a = fc1(h); h.relu_(); b = fc2(h): one tensor object, two inputs
    from torchquant.int4 import gptq as G

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre, self.fc1, self.fc2 = nn.Linear(32, 32), nn.Linear(32, 16), nn.Linear(32, 16)

        def forward(self, x):
            h = self.pre(x)
            a = self.fc1(h)
            h.relu_()
            return a + self.fc2(h)

    torch.manual_seed(0)
    m, x = M(), torch.randn(256, 32)
    q = torchquant.quantize_weight_only(m, bits=4, group_size=16, method="gptq", calib_data=[x], progress=False,
                                exclude=["pre"])
    acc = G.HessianAccumulator(32)
    with torch.no_grad():
        acc.add(torch.relu(m.pre(x)))
    want, _, _ = G.gptq_quantize(m.fc2.weight.detach().float(), acc.H, 16, rows=acc.rows)
    assert torch.equal(q.fc2.qvalues(), want)


# ---------------------------------------------------------------- inference tensors
def _quantized_state(model, method, calib, inplace, cache, in_inference_mode):
    import copy
    model = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.inference_mode(in_inference_mode):
            q = torchquant.quantize_weight_only(model, bits=4, group_size=32, method=method, calib_data=calib,
                                                inplace=inplace, cache_block_inputs=cache, awq_grid=4, progress=False)
    return {k: v.clone() for k, v in q.state_dict().items()}


@pytest.mark.parametrize("inplace, cache", [(False, True), (True, True), (False, False), (True, False)])
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibration_data_or_a_call_under_inference_mode_gives_the_same_model(method, inplace, cache):
    # inference tensors have no version counter: a chain of blocks (here the Sequential itself)
    # holding them is not verified (whole forwards), and the result is the one normal tensors give
    torch.manual_seed(30)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(4, 12, 32)
    with torch.inference_mode():
        x_inf = x.clone()
    assert x_inf.is_inference()
    want = _quantized_state(model, method, [x], False, True, False)
    for calib, mode in (([x_inf], False), ([x], True)):  # data made under inference mode; a call inside it
        got = _quantized_state(model, method, calib, inplace, cache, mode)
        assert got.keys() == want.keys(), mode
        assert all(torch.equal(got[k], want[k]) for k in want), mode


def test_state_snapshot_compares_the_values_of_inference_buffers():
    from torchquant.weight_only import _StateSnapshot
    with torch.inference_mode():
        m = nn.Linear(4, 4)
        m.register_buffer("count", torch.zeros(3))
    snap = _StateSnapshot(m)
    assert not snap.changed()
    with torch.inference_mode():
        m.count.add_(1)
    assert snap.changed()
    snap.restore()
    assert torch.equal(m.count, torch.zeros(3)) and not snap.changed()


class _Aliased(nn.Module):
    """One layer registered under two names (a and b), called twice."""

    def __init__(self, layer, head):
        super().__init__()
        self.a, self.c = layer, head
        self.b = self.a

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.parametrize("kind", ["conv1d", "weight_norm"])
def test_a_converted_layer_excluded_under_one_of_its_names_stays_under_all(kind):
    # Conv1D and re-parametrized Linears are replaced by plain Linears before quantization: an
    # excluded name keeps the one module in float under every name, shared as it was
    torch.manual_seed(31)
    if kind == "conv1d":
        pytest.importorskip("transformers")
        from transformers.pytorch_utils import Conv1D
        layer, head = Conv1D(32, 32), Conv1D(8, 32)
        def as_given(m):
            return type(m) is Conv1D
    else:
        from torch.nn.utils import parametrize
        from torch.nn.utils.parametrizations import weight_norm
        layer, head = weight_norm(nn.Linear(32, 32)), nn.Linear(32, 8)
        def as_given(m):
            return parametrize.is_parametrized(m, "weight")
    model = _Aliased(layer, head).eval()
    x = torch.randn(64, 32)
    for method in ("rtn", "gptq"):
        for exclude in (["b"], ["a"]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = torchquant.quantize_weight_only(model, group_size=32, method=method, calib_data=[x],
                                                    exclude=exclude, progress=False)
            assert q.a is q.b and as_given(q.a), (method, exclude, type(q.a), type(q.b))
            assert isinstance(q.c, LinearWeightOnlyInt4)


def test_gptq_bits8_warns_on_fewer_calibration_rows_than_inputs():
    torch.manual_seed(32)
    model = nn.Sequential(nn.Linear(64, 8))
    for bits in (4, 8):
        with pytest.warns(RuntimeWarning, match="saw 8 calibration rows for K = 64 inputs.*condition number"):
            torchquant.quantize_weight_only(model, bits=bits, group_size=32, method="gptq",
                                            calib_data=[torch.randn(8, 64)], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough rows: no warning
        torchquant.quantize_weight_only(model, bits=8, method="gptq", calib_data=[torch.randn(64, 64)],
                                        progress=False)


@pytest.mark.parametrize("percdamp", [True, False])
def test_percdamp_takes_no_bool(percdamp):
    model = nn.Sequential(nn.Linear(32, 8))
    with pytest.raises(ValueError, match=f"argument 'percdamp' .*got {percdamp}"):
        torchquant.quantize_weight_only(model, group_size=32, method="gptq", calib_data=[torch.randn(64, 32)],
                                        percdamp=percdamp, progress=False)


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.spare = nn.Linear(64, 8), nn.Linear(64, 8)

    def forward(self, x):
        return self.fc(x)


def test_calibration_warnings_point_at_the_callers_line(monkeypatch):
    torch.manual_seed(33)
    x = torch.randn(8, 64)  # fewer rows than K
    cholesky_ex, failed = torch.linalg.cholesky_ex, []

    def fails_once(*args, **kwargs):  # the first factorization fails: dampening is raised, with a warning
        L, info = cholesky_ex(*args, **kwargs)
        if not failed:
            failed.append(True)
            info = torch.ones_like(info)
        return L, info

    monkeypatch.setattr(torch.linalg, "cholesky_ex", fails_once)
    seen = {}
    for method, bits in (("gptq", 4), ("gptq", 8), ("awq", 4)):
        failed.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torchquant.quantize_weight_only(_Unused().eval(), bits=bits, group_size=32, method=method,
                                            calib_data=[x], progress=False)
        for w in caught:
            for key in ("not called on the calibration data", "calibration rows for K", "not positive definite"):
                if key in str(w.message):
                    seen[method, bits, key] = w.filename
    assert all(f == __file__ for f in seen.values()), seen
    assert len(seen) == 7, sorted(seen)  # each of GPTQ's three, for bits 4 and 8, and AWQ's first
    failed.clear()
    with pytest.warns(RuntimeWarning, match="not positive definite") as caught:  # a direct call
        gptq.gptq_quantize(torch.randn(8, 64), 2 * x.double().t() @ x.double() / 8, 32)
    assert all(w.filename == __file__ for w in caught)


def test_calibration_data_made_under_inference_mode_keeps_the_block_cache():
    # outside inference mode an inference tensor cannot be written in place: a chain of blocks
    # fed one is still verified, and calibrated from cached block inputs (a forward per batch
    # and block, not one per Linear)
    class Blk(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 32)

        def forward(self, x):
            return x + self.b(torch.relu(self.a(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Blk() for _ in range(4))

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    torch.manual_seed(31)
    net = Net().eval()
    x = torch.randn(64, 32)
    with torch.inference_mode():
        x_inf = x.clone()
    calls, states = [], []
    for data in (x, x_inf):
        n = [0]
        h = net.blocks[0].register_forward_pre_hook(lambda *a: n.__setitem__(0, n[0] + 1))
        q = torchquant.quantize_weight_only(net, bits=4, group_size=32, method="gptq", calib_data=[data],
                                            progress=False)
        h.remove()
        calls.append(n[0])
        states.append(q.state_dict())
    assert calls[1] == calls[0], calls
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("percdamp", [True, 0, -0.01, float("nan"), "0.01"])
def test_gptq_quantize_refuses_a_percdamp_that_is_not_a_positive_number(percdamp):
    W, H = torch.randn(4, 32), torch.eye(32)
    with pytest.raises(ValueError, match="argument 'percdamp'"):
        gptq.gptq_quantize(W, H, 32, percdamp=percdamp)
