"""Dynamic int8 LSTM / GRU / cells: the fused cell-update ops against the plain-torch reference
(every CPU variant), the modules against fp32 and against torch.ao's dynamic modules on the same
weights, every option of the float modules, state dicts and bad input."""
import io
import itertools
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import torchquant as tq
from torchquant import reference
from torchquant.nn.quantized import dynamic as nnqd

ops = torch.ops.torchquant


def _q(f, cls):
    """quantize_dynamic swaps children (as torch.ao's): the module is wrapped."""
    return tq.quantize_dynamic(nn.Sequential(f), {cls})[0]


def _close_to_ref(got, want):
    bound = reference.CELL_UPDATE_ATOL + reference.CELL_UPDATE_RTOL * want.abs()
    err = (got - want).abs()
    assert bool((err <= bound).all()), f"max excess {(err - bound).max().item():.3g}"


# ---------------------------------------------------------------- fused cell-update ops
@pytest.mark.parametrize("B,H", [(1, 1), (3, 7), (2, 8), (5, 9), (4, 33), (0, 5), (2, 0), (17, 64)])
@pytest.mark.parametrize("scale", [0.5, 4.0, 40.0])
def test_lstm_cell_update_matches_reference(isa, B, H, scale):
    g = torch.Generator().manual_seed(B * 100 + H)
    ig = torch.randn(B, 4 * H, generator=g) * scale
    hg = torch.randn(B, 4 * H, generator=g) * scale
    c = torch.randn(B, H, generator=g) * scale
    if B and H:  # ties at zero, saturation, exact values
        ig[0, 0] = 0.0
        hg[0, 0] = 0.0
        ig[-1, -1] = 200.0
        ig[0, -1] = -200.0
    h2, c2 = ops.lstm_cell_update(ig, hg, c)
    rh, rc = reference.lstm_cell_update(ig, hg, c)
    _close_to_ref(h2, rh)
    _close_to_ref(c2, rc)
    assert h2.shape == (B, H) and c2.shape == (B, H)


@pytest.mark.parametrize("B,H", [(1, 1), (3, 7), (2, 8), (5, 9), (4, 33), (0, 5), (17, 64)])
@pytest.mark.parametrize("scale", [0.5, 4.0, 40.0])
def test_gru_cell_update_matches_reference(isa, B, H, scale):
    g = torch.Generator().manual_seed(B * 100 + H + 1)
    ig = torch.randn(B, 3 * H, generator=g) * scale
    hg = torch.randn(B, 3 * H, generator=g) * scale
    h = torch.randn(B, H, generator=g)
    got = ops.gru_cell_update(ig, hg, h)
    _close_to_ref(got, reference.gru_cell_update(ig, hg, h))


def test_cell_update_variants_agree_and_take_non_contiguous_inputs(isa):
    g = torch.Generator().manual_seed(7)
    big = torch.randn(6, 2 * 4 * 13, generator=g) * 3
    ig, hg = big[:, ::2], big[:, 1::2]  # non-contiguous
    c = torch.randn(13, 6, generator=g).t()
    h2, c2 = ops.lstm_cell_update(ig, hg, c)
    rh, rc = reference.lstm_cell_update(ig, hg, c)
    _close_to_ref(h2, rh)
    _close_to_ref(c2, rc)
    # Inputs untouched.
    assert torch.equal(big, torch.randn(6, 2 * 4 * 13, generator=torch.Generator().manual_seed(7)) * 3)


def test_cell_update_propagates_nan(isa):
    ig = torch.zeros(1, 16)
    ig[0, 0] = float("nan")
    h, c = ops.lstm_cell_update(ig, torch.zeros(1, 16), torch.zeros(1, 4))
    assert torch.isnan(h[0, 0]) and torch.isnan(c[0, 0]) and not torch.isnan(h[0, 1:]).any()


def _close_or_both_nan(got, want):
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    keep = ~torch.isnan(want)
    assert torch.equal(got[keep].isinf(), want[keep].isinf())
    fin = keep & torch.isfinite(want)
    _close_to_ref(got[fin], want[fin])


def test_cell_update_extreme_gates_and_states(isa):
    # gates past log(FLT_MAX) = 88.72 (sigmoid exactly 0 or 1 as with expf), infinite gates, and
    # huge or infinite states: a closed forget / update gate times an infinite state is NaN (a
    # diverged state stays diverged), times a huge finite one 0, as in the reference and torch
    gates = torch.tensor([-float("inf"), -1e4, -200.0, -100.0, -88.8, -88.7, -88.5, -88.4, -88.3, -87.0,
                          0.0, 87.0, 88.5, 88.8, 200.0, float("inf")])
    states = torch.tensor([-float("inf"), -3e38, -1e35, -1.0, 0.0, 1.0, 1e35, 3e38, float("inf")])
    G, S = gates.numel(), states.numel()
    H = G * S
    f = gates.repeat_interleave(S).reshape(1, H)
    st = states.repeat(G).reshape(1, H)
    closed = torch.full((1, H), -1e4)  # input gate shut: c' = sigmoid(f) * c exactly
    ig = torch.cat([closed, f, torch.zeros(1, H), torch.zeros(1, H)], 1)
    h2, c2 = ops.lstm_cell_update(ig, torch.zeros_like(ig), st)
    rh, rc = reference.lstm_cell_update(ig, torch.zeros_like(ig), st)
    _close_or_both_nan(c2, rc)
    _close_or_both_nan(h2, rh)
    assert torch.isnan(c2[0, 0 * S + S - 1])  # sigmoid(-inf) * inf
    assert torch.isnan(c2[0, 2 * S + S - 1])  # sigmoid(-200) * inf
    # GRU: h' = (h - n) * z + n with z closed
    igr = torch.cat([torch.zeros(1, H), f, torch.zeros(1, H)], 1)
    got = ops.gru_cell_update(igr, torch.zeros_like(igr), st)
    _close_or_both_nan(got, reference.gru_cell_update(igr, torch.zeros_like(igr), st))


@pytest.mark.parametrize("bad,match", [
    (dict(ig=torch.zeros(2, 12)), "argument 'igates' must have shape \\[2, 16\\]"),
    (dict(hg=torch.zeros(2, 12)), "argument 'hgates' must have the shape of igates"),
    (dict(c=torch.zeros(2, 4, dtype=torch.float64)), "argument 'c' must be a float32 tensor"),
    (dict(ig=torch.zeros(2, 16, 1)), "argument 'igates' must be 2-D"),
    (dict(hg=torch.zeros(2, 16, dtype=torch.int32)), "argument 'hgates' must be a float32 tensor"),
])
def test_cell_update_bad_arguments(bad, match):
    a = dict(ig=torch.zeros(2, 16), hg=torch.zeros(2, 16), c=torch.zeros(2, 4))
    a.update(bad)
    with pytest.raises(RuntimeError, match=match):
        ops.lstm_cell_update(a["ig"], a["hg"], a["c"])


def test_gru_cell_update_bad_shape():
    with pytest.raises(RuntimeError, match="argument 'igates' must have shape \\[2, 12\\]"):
        ops.gru_cell_update(torch.zeros(2, 16), torch.zeros(2, 16), torch.zeros(2, 4))


# ---------------------------------------------------------------- modules vs fp32 and torch.ao
def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _flat(out):
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        return out.data
    if isinstance(out, (tuple, list)):
        return torch.cat([_flat(o).reshape(-1) for o in out if o is not None])
    return out.reshape(-1)


def _ao(mod, types):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(nn.Sequential(mod), types, dtype=torch.qint8)[0]
    assert type(q).__module__.startswith("torch.ao"), type(q)
    return q


# The int8 modules' output (and final states) against fp32, relative L2 error, for the sizes
# below (hidden 32, 3 layers at most, sequence 9): measured 0.2-0.8 %; bound 3 %.
REL_BOUND_FP32 = 0.03


LSTM_OPTIONS = list(itertools.product([1, 2], [False, True], [False, True], [True, False], [0, 12]))


@pytest.mark.parametrize("layers,bidir,batch_first,bias,proj", LSTM_OPTIONS)
def test_lstm_options_vs_fp32_and_torch_ao(layers, bidir, batch_first, bias, proj):
    torch.manual_seed(layers * 31 + bidir * 7 + batch_first * 3 + bias + proj)
    f = nn.LSTM(20, 32, num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias,
                proj_size=proj, dropout=0.3 if layers > 1 else 0.0).eval()
    q = _q(f, nn.LSTM)
    assert type(q) is nnqd.LSTM
    x = torch.randn(5, 9, 20) if batch_first else torch.randn(9, 5, 20)
    D = 2 if bidir else 1
    h0 = torch.randn(layers * D, 5, proj or 32) * 0.5
    c0 = torch.randn(layers * D, 5, 32) * 0.5
    for hx in (None, (h0, c0)):
        with torch.no_grad():
            want = f(x, hx)
            got = q(x, hx)
        assert got[0].shape == want[0].shape
        assert got[1][0].shape == want[1][0].shape and got[1][1].shape == want[1][1].shape
        err = _rel(_flat(got), _flat(want))
        assert 0 < err < REL_BOUND_FP32, err
        if proj == 0 and bias:  # torch.ao's dynamic LSTM has neither bias=False nor proj_size
            ao = _ao(f, {nn.LSTM})
            with torch.no_grad():
                ao_err = _rel(_flat(ao(x, hx)), _flat(want))
            assert err <= ao_err * 1.05 + 1e-4, (err, ao_err)


GRU_OPTIONS = list(itertools.product([1, 3], [False, True], [False, True], [True, False]))


@pytest.mark.parametrize("layers,bidir,batch_first,bias", GRU_OPTIONS)
def test_gru_options_vs_fp32_and_torch_ao(layers, bidir, batch_first, bias):
    torch.manual_seed(layers * 31 + bidir * 7 + batch_first * 3 + bias + 100)
    f = nn.GRU(20, 32, num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias).eval()
    q = _q(f, nn.GRU)
    assert type(q) is nnqd.GRU
    x = torch.randn(4, 9, 20) if batch_first else torch.randn(9, 4, 20)
    D = 2 if bidir else 1
    for hx in (None, torch.randn(layers * D, 4, 32) * 0.5):
        with torch.no_grad():
            want = f(x, hx)
            got = q(x, hx)
        err = _rel(_flat(got), _flat(want))
        assert 0 < err < REL_BOUND_FP32, err
        if bias:  # torch.ao's dynamic GRU has no bias=False
            ao = _ao(f, {nn.GRU})
            with torch.no_grad():
                ao_err = _rel(_flat(ao(x, hx)), _flat(want))
            assert err <= ao_err * 1.05 + 1e-4, (err, ao_err)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_input(mode, bidir, enforce_sorted):
    torch.manual_seed(11)
    f = getattr(nn, mode)(12, 16, num_layers=2, bidirectional=bidir).eval()
    q = _q(f, type(f))
    lengths = torch.tensor([7, 5, 5, 2, 1]) if enforce_sorted else torch.tensor([2, 7, 1, 5, 5])
    x = torch.randn(7, 5, 12)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    D = 2 if bidir else 1
    hx = torch.randn(2 * D, 5, 16) * 0.5
    hx = (hx, torch.randn(2 * D, 5, 16) * 0.5) if mode == "LSTM" else hx
    for h in (None, hx):
        with torch.no_grad():
            want_out, want_h = f(packed, h)
            got_out, got_h = q(packed, h)
        assert torch.equal(got_out.batch_sizes, want_out.batch_sizes)
        assert torch.equal(got_out.unsorted_indices, want_out.unsorted_indices) if not enforce_sorted else True
        assert _rel(got_out.data, want_out.data) < REL_BOUND_FP32
        assert _rel(_flat(got_h), _flat(want_h)) < REL_BOUND_FP32
        # Same as running each sequence alone, unpadded.
        padded, lens = pad_packed_sequence(got_out)
        with torch.no_grad():
            for i in (0, 2):
                hi = None
                if h is not None:
                    hi = tuple(t[:, i:i + 1] for t in h) if mode == "LSTM" else h[:, i:i + 1]
                alone, _ = q(x[: lengths[i], i:i + 1], hi)
                torch.testing.assert_close(padded[: lengths[i], i:i + 1], alone, atol=1e-5, rtol=1e-5)
        ao = _ao(f, {type(f)})
        with torch.no_grad():
            ao_err = _rel(ao(packed, h)[0].data, want_out.data)
        assert _rel(got_out.data, want_out.data) <= ao_err * 1.05 + 1e-4


@pytest.mark.parametrize("cls,kw", [(nn.LSTMCell, {}), (nn.GRUCell, {}), (nn.RNNCell, {"nonlinearity": "tanh"}),
                                    (nn.RNNCell, {"nonlinearity": "relu"})])
@pytest.mark.parametrize("bias", [True, False])
def test_cells_vs_fp32_and_torch_ao(cls, kw, bias):
    torch.manual_seed(5)
    f = cls(20, 24, bias=bias, **kw).eval()
    q = tq.quantize_dynamic(nn.Sequential(f), {cls})[0]
    assert type(q).__name__ == cls.__name__ and type(q).__module__.startswith("torchquant")
    x = torch.randn(6, 20)
    states = (torch.randn(6, 24), torch.randn(6, 24)) if cls is nn.LSTMCell else torch.randn(6, 24)
    ao = _ao(f, {cls}) if bias else None  # torch.ao's dynamic cells have no bias=False
    for hx in (None, states):
        with torch.no_grad():
            want, got = f(x, hx), q(x, hx)
        err = _rel(_flat(got), _flat(want))
        assert 0 < err < REL_BOUND_FP32
        if ao is not None:
            with torch.no_grad():
                assert err <= _rel(_flat(ao(x, hx)), _flat(want)) * 1.05 + 1e-4
    # Unbatched input.
    with torch.no_grad():
        un = q(x[0])
        bat = q(x[:1])
    assert _flat(un).shape == _flat(bat).shape
    torch.testing.assert_close(_flat(un), _flat(bat))


def test_unbatched_input_and_float64():
    torch.manual_seed(3)
    f = nn.LSTM(8, 16, 2).eval()
    q = _q(f, nn.LSTM)
    x = torch.randn(6, 8)
    with torch.no_grad():
        out, (h, c) = q(x)
        out_b, (hb, cb) = q(x.unsqueeze(1))
        out64, _ = q(x.double())
    assert out.shape == (6, 16) and h.shape == (2, 16)
    torch.testing.assert_close(out, out_b.squeeze(1))
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out)


def test_dropout_applies_in_training_only():
    torch.manual_seed(4)
    q = _q(nn.LSTM(8, 16, 3, dropout=0.5).eval(), nn.LSTM)
    x = torch.randn(5, 2, 8)
    a, b = q(x)[0], q(x)[0]
    assert torch.equal(a, b)
    q.train()
    torch.manual_seed(0)
    t1 = q(x)[0]
    assert not torch.equal(t1, a)


def test_flatten_parameters_is_a_no_op_and_repr():
    q = _q(nn.LSTM(8, 16, 2, bidirectional=True, proj_size=4), nn.LSTM)
    x = torch.randn(3, 2, 8)
    before = q(x)[0]
    q.flatten_parameters()
    assert torch.equal(q(x)[0], before)
    assert q.extra_repr() == "8, 16, proj_size=4, num_layers=2, bidirectional=True, dtype=torch.qint8"
    assert repr(q).startswith("DynamicQuantizedLSTM(")


def test_state_dict_plain_tensors_weights_only_roundtrip():
    torch.manual_seed(8)
    model = nn.Sequential()
    model.add_module("lstm", nn.LSTM(8, 16, 2, bidirectional=True, proj_size=4))
    q = _q(model, nn.LSTM)
    sd = q.state_dict()
    assert all(type(v) is torch.Tensor for v in sd.values())
    assert sd["lstm.ih_l0.qweight"].dtype == torch.int8 and sd["lstm.hr_l1_reverse.qweight"].shape == (4, 16)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    q2 = tq.quantize_dynamic(nn.Sequential(), {nn.LSTM})
    q2.add_module("lstm", nnqd.LSTM(8, 16, 2, bidirectional=True, proj_size=4))
    q2.load_state_dict(loaded)
    x = torch.randn(4, 3, 8)
    assert torch.equal(q(x)[0], q2(x)[0])


def test_report_compares_lstm_outputs():
    torch.manual_seed(9)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 16)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(self.lstm(x)[0])

    f = M().eval()
    q = tq.quantize_dynamic(f, {nn.LSTM, nn.Linear})
    r = tq.report(f, q, torch.randn(6, 3, 8))
    assert r["lstm"].quantized_type == "LSTM" and r["lstm"].sqnr_db > 30
    assert r["lstm"].numel == 6 * 3 * 16


# ---------------------------------------------------------------- bad input
def test_wrong_input_size_gives_torchs_error():
    f = nn.LSTM(8, 16)
    q = _q(f, nn.LSTM)
    x = torch.randn(3, 2, 7)
    with pytest.raises(RuntimeError) as ef:
        f(x)
    with pytest.raises(RuntimeError) as eq:
        q(x)
    assert str(eq.value) == str(ef.value)
    cell = nn.GRUCell(8, 16)
    qc = tq.quantize_dynamic(nn.Sequential(cell), {nn.GRUCell})[0]
    with pytest.raises(RuntimeError, match="input has inconsistent input_size: got 7 expected 8"):
        qc(torch.randn(2, 7))


def test_wrong_hidden_size_gives_torchs_error():
    f = nn.GRU(8, 16, 2)
    q = _q(f, nn.GRU)
    x, h = torch.randn(3, 2, 8), torch.randn(2, 3, 16)
    with pytest.raises(RuntimeError) as ef:
        f(x, h)
    with pytest.raises(RuntimeError) as eq:
        q(x, h)
    assert str(eq.value) == str(ef.value)


@pytest.mark.parametrize("cls,hx", [
    (nn.LSTMCell, lambda: (torch.randn(3, 12), torch.randn(3, 12))),   # batch of hidden0
    (nn.LSTMCell, lambda: (torch.randn(4, 12), torch.randn(3, 12))),   # batch of hidden1
    (nn.LSTMCell, lambda: (torch.randn(4, 11), torch.randn(4, 12))),   # hidden_size
    (nn.GRUCell, lambda: torch.randn(4, 11)),
    (nn.RNNCell, lambda: torch.randn(5, 12)),
])
def test_cells_wrong_hidden_state_give_torchs_error(cls, hx):
    f = cls(8, 12)
    q = tq.quantize_dynamic(nn.Sequential(f), {cls})[0]
    x, h = torch.randn(4, 8), hx()
    with pytest.raises(RuntimeError) as ef:
        f(x, h)
    with pytest.raises(RuntimeError) as eq:
        q(x, h)
    assert str(eq.value) == str(ef.value)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_empty_sequence_gives_torchs_error(cls):
    f = cls(8, 12)
    q = _q(f, cls)
    x = torch.randn(0, 3, 8)
    with pytest.raises(RuntimeError) as ef:
        f(x)
    with pytest.raises(RuntimeError) as eq:
        q(x)
    assert str(eq.value) == str(ef.value)


def test_unsorted_lengths_with_enforce_sorted_raise_as_in_torch():
    with pytest.raises(RuntimeError, match="must be sorted in decreasing order"):
        pack_padded_sequence(torch.randn(5, 3, 8), torch.tensor([2, 5, 3]), enforce_sorted=True)


def test_integer_input_is_a_clear_error():
    q = _q(nn.LSTM(8, 16), nn.LSTM)
    with pytest.raises(TypeError, match="argument 'input' must be a floating-point tensor"):
        q(torch.zeros(3, 2, 8, dtype=torch.int64))


def test_torch_compile_of_quantized_lstm():
    torch.manual_seed(10)
    q = _q(nn.LSTM(8, 16), nn.LSTM)
    x = torch.randn(4, 2, 8)
    eager = q(x)[0]
    compiled = torch.compile(q, backend="eager")(x)[0]
    torch.testing.assert_close(compiled, eager)


# ---------------------------------------------------------------- the layer ops (time loop in C++)
@pytest.mark.parametrize("mode,proj,reverse,T,B", [
    ("LSTM", 0, False, 6, 3), ("LSTM", 0, True, 5, 1), ("LSTM", 5, False, 4, 2), ("LSTM", 5, True, 3, 2),
    ("GRU", 0, False, 6, 3), ("GRU", 0, True, 5, 1), ("LSTM", 0, False, 0, 2), ("GRU", 0, True, 0, 2),
    ("LSTM", 0, False, 3, 0)])
def test_layer_op_is_bit_identical_to_the_step_loop(isa, mode, proj, reverse, T, B):
    torch.manual_seed(11)
    kw = {"proj_size": proj} if proj else {}
    q = _q(getattr(nn, mode)(7, 9, **kw), getattr(nn, mode))
    from torchquant.nn.quantized_dynamic_rnn import _linear_args
    hh = _linear_args(q.hh_l0)
    hr = _linear_args(q.hr_l0) if proj else None
    igates = torch.randn(T, B, (4 if mode == "LSTM" else 3) * 9) * 3
    h0 = torch.randn(B, proj or 9)
    c0 = torch.randn(B, 9) if mode == "LSTM" else None
    h0_copy, c0_copy = h0.clone(), (c0.clone() if c0 is not None else None)
    got = q._run_padded(igates, h0, c0, hh, hr, reverse)
    want = q._run_padded_steps(igates, h0, c0, hh, hr, reverse)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        else:
            assert g.shape == w.shape and torch.equal(g, w)
    # Nothing the caller passed is modified, and no output aliases an input.
    assert torch.equal(h0, h0_copy) and (c0 is None or torch.equal(c0, c0_copy))
    assert all(g is None or g.data_ptr() not in (h0.data_ptr(), igates.data_ptr()) or g.numel() == 0 for g in got)


def test_layer_ops_pass_opcheck():
    torch.manual_seed(12)
    from torchquant.nn.quantized_dynamic_rnn import _linear_args
    lstm = _q(nn.LSTM(6, 8, proj_size=4), nn.LSTM)
    hh, hr = _linear_args(lstm.hh_l0), _linear_args(lstm.hr_l0)
    args = (torch.randn(3, 2, 32), torch.randn(2, 4), torch.randn(2, 8), *hh, *hr[:3], True)
    torch.library.opcheck(ops.lstm_layer_dynamic.default, args)
    gru = _q(nn.GRU(6, 8), nn.GRU)
    torch.library.opcheck(ops.gru_layer_dynamic.default, (torch.randn(3, 2, 24), torch.randn(2, 8),
                                                          *_linear_args(gru.hh_l0), False))


def test_layer_op_bad_arguments():
    from torchquant.nn.quantized_dynamic_rnn import _linear_args
    gru = _q(nn.GRU(6, 8), nn.GRU)
    hh = _linear_args(gru.hh_l0)
    with pytest.raises(RuntimeError, match="argument 'igates' must be 3-D"):
        ops.gru_layer_dynamic(torch.randn(2, 24), torch.randn(2, 8), *hh, False)
    with pytest.raises(RuntimeError, match="argument 'igates' has batch 3 but 'h0' has batch 2"):
        ops.gru_layer_dynamic(torch.randn(4, 3, 24), torch.randn(2, 8), *hh, False)
    # The recurrent weights are checked before the loop, under the layer's names, also for a
    # sequence of length 0 (they were checked by the first step's linear_dynamic, under its names)
    w, cs, sc, b = hh
    for T in (0, 3):
        ig = torch.randn(T, 2, 24)
        for bad, msg in [((w.double(), cs, sc, b), "argument 'w_packed' must be a contiguous int8"),
                         ((w, cs, torch.zeros_like(sc), b), "argument 'w_scale' must be > 0"),
                         ((w, cs, sc, b.long()), "argument 'bias' must be a floating-point tensor")]:
            with pytest.raises(RuntimeError, match=r"gru_layer_dynamic: arguments 'hh_w', 'hh_col_sums', 'hh_scale', "
                                                   r"'hh_bias' .* were refused: " + msg):
                ops.gru_layer_dynamic(ig, torch.randn(2, 8), *bad, False)
    lstm = _q(nn.LSTM(6, 8, proj_size=3), nn.LSTM)
    hh, hr = _linear_args(lstm.hh_l0), _linear_args(lstm.hr_l0)
    with pytest.raises(RuntimeError, match=r"arguments 'hr_w', 'hr_col_sums', 'hr_scale' .* the 8 units of 'c0'\) were "
                                           r"refused: argument 'w_scale' must be > 0"):
        ops.lstm_layer_dynamic(torch.randn(0, 2, 32), torch.randn(2, 3), torch.randn(2, 8), *hh, hr[0], hr[1],
                               torch.zeros_like(hr[2]), False)


# ---------------------------------------------------------------- the model itself swapped
@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.LSTMCell, nn.Linear])
def test_quantize_dynamic_swaps_a_bare_module(cls):
    """torch.ao swaps only submodules and returns a bare nn.LSTM in float; torchquant swaps it."""
    torch.manual_seed(13)
    f = cls(8, 16).eval()
    q = tq.quantize_dynamic(f, {cls})
    assert type(q).__module__.startswith("torchquant.nn"), type(q)
    assert type(f) is cls  # not inplace: the float module is untouched
    x = torch.randn(5, 8)
    out_q, out_f = _flat(q(x)), _flat(f(x))
    assert _rel(out_q, out_f) < 0.02
    wrapped = tq.quantize_dynamic(nn.Sequential(f), {cls})[0]
    torch.testing.assert_close(_flat(wrapped(x)), out_q, rtol=0, atol=0)


def test_layer_ops_and_cat_refuse_a_meta_tensor_among_cpu_ones():
    # a meta argument sends the call to the fake kernel, which must not hand back uninitialized
    # CPU memory (the C++ device check never runs)
    ops = torch.ops.torchquant
    T, B, H = 4, 2, 6
    h0 = torch.randn(B, H, device="meta")
    wp, cs = ops.pack_weight(torch.randint(-127, 128, (3 * H, H), dtype=torch.int8))
    with pytest.raises(RuntimeError, match="argument 'h0' is on meta but 'igates' is on cpu"):
        ops.gru_layer_dynamic(torch.randn(T, B, 3 * H), h0, wp, cs, torch.rand(3 * H) + 0.01, None)
    wp4, cs4 = ops.pack_weight(torch.randint(-127, 128, (4 * H, H), dtype=torch.int8))
    with pytest.raises(RuntimeError, match="argument 'c0' is on meta but 'igates' is on cpu"):
        ops.lstm_layer_dynamic(torch.randn(T, B, 4 * H), torch.randn(B, H), torch.randn(B, H, device="meta"), wp4,
                               cs4, torch.rand(4 * H) + 0.01, None, None, None, None)
    a = torch.randint(0, 255, (2, 3), dtype=torch.uint8)
    s, z = torch.tensor([0.1]), torch.tensor([3], dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"argument 'scales\[1\]' is on meta but 'tensors\[0\]' is on cpu"):
        ops.cat([a, a], [s, s.to("meta")], [z, z], 0, s, z)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("batched,h_dim,c_dim", [(True, 3, 2), (True, 2, 3), (False, 2, 3), (False, 3, 2)])
def test_hidden_state_rank_errors_are_torchs(mode, batched, h_dim, c_dim):
    # The message named h_0's rank only, also where c_0 was the wrong one.
    torch.manual_seed(0)
    f = getattr(nn, mode)(4, 6)
    q = tq.quantize_dynamic(f, {getattr(nn, mode)})
    x = torch.randn(3, 2, 4) if batched else torch.randn(3, 4)
    h = torch.zeros((1, 2, 6) if h_dim == 3 else (1, 6))
    hx = (h, torch.zeros((1, 2, 6) if c_dim == 3 else (1, 6))) if mode == "LSTM" else h
    if mode == "GRU" and h_dim == (3 if batched else 2):
        return
    with pytest.raises(RuntimeError) as want:
        f(x, hx)
    with pytest.raises(RuntimeError, match=re.escape(str(want.value))):
        q(x, hx)


def test_recurrent_weight_errors_name_the_module():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec, self.cell = nn.LSTM(8, 12), nn.LSTM(12, 12), nn.GRUCell(8, 12)

    for spec, where in [({"dec": tq.float_qparams_weight_only_qconfig}, "dec.weight_ih_l0"),
                        ({"cell": tq.float_qparams_weight_only_qconfig}, "cell.weight_ih")]:
        with pytest.raises(ValueError, match=f"^{re.escape(where)}: torchquant's int8 Linear needs symmetric weights"):
            tq.quantize_dynamic(M(), spec)


def test_a_bare_recurrent_layers_weight_errors_name_its_state_dict_keys():
    for mod, key in ((nn.LSTM(8, 12), "weight_ih_l0"), (nn.GRUCell(8, 12), "weight_ih")):
        with pytest.raises(ValueError, match=f"^{key}: torchquant's int8 Linear needs symmetric weights"):
            tq.quantize_dynamic(mod, {type(mod): tq.float_qparams_weight_only_qconfig})


# ---------------------------------------------------------------- gradients (training through the layer)
def _dequantized_twin(q, float_cls, **kw):
    """The float module (same options) on q's dequantized weights: int8 codes times their
    per-channel scales, from the state dict, and the float biases."""
    sd = q.state_dict()
    f = float_cls(q.input_size, q.hidden_size, **kw)
    with torch.no_grad():
        for name, p in f.named_parameters():
            kind, child = name.split("_", 1)  # weight_ih_l0_reverse: the child ih_l0_reverse's weight
            if kind == "weight":
                p.copy_(sd[f"{child}.qweight"].float() * sd[f"{child}.weight_scale"][:, None])
            else:
                p.copy_(sd[f"{child}.bias"])
    return f.train(q.training)


def _outputs(out):
    """The returned tensors: output (a PackedSequence's data), then the state(s)."""
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        return [out.data]
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _outputs(o)]


def _grads_as_float(q, f, make_inputs):
    """(values with grad, values under no_grad, input grads of q, input grads of f) for the same
    upstream gradient on every returned tensor."""
    with torch.no_grad():
        want = _outputs(q(*make_inputs(False)[1]))
    leaves, args = make_inputs(True)
    got = _outputs(q(*args))
    upstream = [torch.randn(t.shape, generator=torch.Generator().manual_seed(i)).to(t.dtype)
                for i, t in enumerate(got)]
    sum((t * u).sum() for t, u in zip(got, upstream)).backward()
    f_leaves, f_args = make_inputs(True)
    sum((t * u).sum() for t, u in zip(_outputs(f(*f_args)), upstream)).backward()
    return got, want, [t.grad for t in leaves], [t.grad for t in f_leaves]


RNN_GRAD_CASES = [
    ("LSTM", dict(), False, False),
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True), True, False),
    ("LSTM", dict(num_layers=2, proj_size=3, bias=False), True, False),
    ("LSTM", dict(bidirectional=True, proj_size=4), True, True),
    ("LSTM", dict(num_layers=2, batch_first=True), False, True),
    ("GRU", dict(), True, False),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True, bias=False), True, True),
    ("GRU", dict(num_layers=3), False, True),
]


@pytest.mark.parametrize("mode,kw,with_hx,packed", RNN_GRAD_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rnn_input_and_state_gradients_are_the_float_modules_on_dequantized_weights(mode, kw, with_hx, packed,
                                                                                      dtype):
    # The input gradient was dropped (x.grad None): the values stay the int8 path's, bit for bit,
    # and the gradients are those of nn.LSTM / nn.GRU on the dequantized weights.
    torch.manual_seed(RNN_GRAD_CASES.index((mode, kw, with_hx, packed)))
    cls = getattr(nn, mode)
    q = _q(cls(6, 8, **kw), cls)
    f = _dequantized_twin(q, cls, **kw)
    B, T, L, D = 3, 5, kw.get("num_layers", 1), 2 if kw.get("bidirectional") else 1
    bf = kw.get("batch_first", False)
    x0 = torch.randn(B, T, 6) if bf else torch.randn(T, B, 6)
    h0, c0 = torch.randn(L * D, B, kw.get("proj_size") or 8), torch.randn(L * D, B, 8)

    def make_inputs(grad):
        leaves = [t.clone().to(dtype).requires_grad_(grad) for t in (x0, h0, c0)]
        x, h, c = leaves
        inp = pack_padded_sequence(x, torch.tensor([5, 2, 4]), batch_first=bf, enforce_sorted=False) if packed else x
        if not with_hx:
            return leaves[:1], (inp,)
        return (leaves, (inp, (h, c))) if mode == "LSTM" else (leaves[:2], (inp, h))

    got, want, grads, f_grads = _grads_as_float(q, f.to(dtype), make_inputs)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == dtype and torch.equal(g, w)
    assert len(grads) == (1 if not with_hx else 3 if mode == "LSTM" else 2)
    for g, fg in zip(grads, f_grads):
        assert g is not None and g.abs().sum() > 0
        torch.testing.assert_close(g, fg, rtol=1e-5, atol=1e-6)


def test_rnn_unbatched_input_and_state_gradient_of_the_state_alone():
    torch.manual_seed(3)
    q = _q(nn.GRU(6, 8, num_layers=2), nn.GRU)
    f = _dequantized_twin(q, nn.GRU, num_layers=2)
    x0, h0 = torch.randn(4, 6), torch.randn(2, 8)

    def make_inputs(grad):
        h = h0.clone().requires_grad_(grad)  # the input itself does not require grad
        return [h], (x0, h)

    got, want, (gh,), (fh,) = _grads_as_float(q, f, make_inputs)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    torch.testing.assert_close(gh, fh, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls,kw", [(nn.LSTMCell, {}), (nn.GRUCell, {}), (nn.RNNCell, {}),
                                    (nn.RNNCell, {"nonlinearity": "relu"}), (nn.LSTMCell, {"bias": False}),
                                    (nn.GRUCell, {"bias": False})])
@pytest.mark.parametrize("batched", [True, False])
def test_cell_input_and_state_gradients_are_the_float_cells_on_dequantized_weights(cls, kw, batched):
    torch.manual_seed(5)
    q = _q(cls(6, 8, **kw), cls)
    sd = q.state_dict()
    f = cls(6, 8, **kw)
    with torch.no_grad():
        for k in ("ih", "hh"):
            getattr(f, f"weight_{k}").copy_(sd[f"{k}.qweight"].float() * sd[f"{k}.weight_scale"][:, None])
            if f.bias:
                getattr(f, f"bias_{k}").copy_(sd[f"{k}.bias"])
    shape = (3,) if batched else ()
    x0, h0, c0 = torch.randn(*shape, 6), torch.randn(*shape, 8), torch.randn(*shape, 8)

    def make_inputs(grad):
        x, h, c = (t.clone().requires_grad_(grad) for t in (x0, h0, c0))
        return ([x, h, c], (x, (h, c))) if cls is nn.LSTMCell else ([x, h], (x, h))

    got, want, grads, f_grads = _grads_as_float(q, f, make_inputs)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    for g, fg in zip(grads, f_grads):
        assert g is not None
        torch.testing.assert_close(g, fg, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_rnn_gradient_in_training_draws_the_int8_paths_dropout_masks(mode):
    # Between layers the float module draws its masks from the RNG state the int8 path drew
    # from: the gradient is the float module's with the same masks, and the RNG state after the
    # call is the one a call without gradient leaves.
    cls = getattr(nn, mode)
    q = _q(cls(6, 8, num_layers=3, dropout=0.5), cls).train()
    f = _dequantized_twin(q, cls, num_layers=3, dropout=0.5)
    x0 = torch.randn(5, 3, 6)
    torch.manual_seed(1)
    with torch.no_grad():
        want = q(x0)[0]
    rng_after = torch.get_rng_state()
    torch.manual_seed(1)
    x = x0.clone().requires_grad_()
    out = q(x)[0]
    assert torch.equal(out, want) and torch.equal(torch.get_rng_state(), rng_after)
    out.sum().backward()
    torch.manual_seed(1)
    fx = x0.clone().requires_grad_()
    f(fx)[0].sum().backward()
    torch.testing.assert_close(x.grad, fx.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_no_float_pass_without_a_gradient_to_give(cls, monkeypatch):
    # Inference (no_grad, inputs that do not require grad, parameters that do elsewhere) runs the
    # int8 path alone: the float module is never built.
    from torchquant.nn import quantized_dynamic_rnn as rnn

    def refuse(*a, **k):
        raise AssertionError("float path ran")

    monkeypatch.setattr(rnn._RNNBase, "_float_forward", refuse)
    monkeypatch.setattr(rnn._CellBase, "_float_args", refuse)
    q = _q(cls(6, 8), cls)
    x = torch.randn(4, 3, 6) if cls in (nn.LSTM, nn.GRU) else torch.randn(3, 6)
    assert not any(t.requires_grad for t in _outputs(q(x)))  # grad mode on, an input without requires_grad
    with torch.no_grad():
        assert not any(t.requires_grad for t in _outputs(q(x.clone().requires_grad_())))
    with torch.inference_mode():
        q(x)
    with pytest.raises(AssertionError, match="float path ran"):  # (and it does run where one is needed)
        q(x.clone().requires_grad_())


def test_gradient_outputs_can_be_changed_in_place():
    q = _q(nn.LSTM(6, 8), nn.LSTM)
    x = torch.randn(4, 3, 6, requires_grad=True)
    out, (h, c) = q(x)
    out.mul_(2)
    h.add_(1)
    (out.sum() + h.sum()).backward()
    assert x.grad is not None


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRUCell])
def test_torch_compile_fullgraph_of_the_inference_path(cls):
    # The check for a gradient to give is traced in one graph with the int8 path.
    torch.manual_seed(11)
    q = _q(cls(8, 16), cls)
    x = torch.randn(4, 2, 8) if cls is nn.LSTM else torch.randn(2, 8)
    eager = _outputs(q(x))
    compiled = _outputs(torch.compile(q, backend="eager", fullgraph=True)(x))
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_initial_state_of_another_dtype_or_device_is_refused_naming_hx(cls):
    # An integer / complex state was cast to float32 silently; one on another device was
    # reported by a kernel under an internal argument name ('igates', or 'x' for the cells).
    q = tq.quantize_dynamic(cls(4, 3), {cls})
    cell = cls in (nn.LSTMCell, nn.GRUCell, nn.RNNCell)
    x = torch.randn(2, 4) if cell else torch.randn(5, 2, 4)
    shape = (2, 3) if cell else (1, 2, 3)
    lstm = cls in (nn.LSTM, nn.LSTMCell)

    def state(**kw):
        h = torch.zeros(shape, **kw)
        return (h, torch.zeros(shape)) if lstm else h

    for dtype in (torch.int64, torch.bool, torch.complex64):
        with pytest.raises(TypeError, match=r"argument 'hx' must be a floating-point tensor, got torch\."):
            q(x, state(dtype=dtype))
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same device, found input tensor "
                                           "at cpu and hidden tensor at meta"):
        q(x, state(device="meta"))
    q(x, state(dtype=torch.float64))  # a float state of another dtype is taken, as before


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.LSTMCell])
def test_from_float_refuses_a_float16_qconfig_naming_it(cls):
    from torch.ao.quantization import float16_dynamic_qconfig
    m = cls(5, 8)
    m.qconfig = float16_dynamic_qconfig
    qcls = getattr(nnqd, cls.__name__)
    with pytest.raises(ValueError, match=r"weight dtype is torch.float16 \(such as float16_dynamic_qconfig\)"):
        qcls.from_float(m)
    lin = nn.Linear(4, 3)
    lin.qconfig = float16_dynamic_qconfig
    with pytest.raises(ValueError, match=r"weight dtype is torch.float16"):
        tq.nn.quantized.DynamicLinear.from_float(lin)


@pytest.mark.parametrize("cls", [nn.LSTMCell, nn.LSTM])
def test_lstm_state_with_a_missing_entry_is_refused_naming_it(cls):
    # (h, None) ran with c = zeros (the cell) or failed in a kernel naming 'c0' (the layer).
    q = tq.quantize_dynamic(cls(4, 6), {cls})
    x, shape = (torch.randn(3, 4), (3, 6)) if cls is nn.LSTMCell else (torch.randn(5, 3, 4), (1, 3, 6))
    h = torch.randn(shape)
    with pytest.raises(TypeError, match=r"argument 'hx\[1\]' must be a Tensor, got NoneType"):
        q(x, (h, None))
    with pytest.raises(TypeError, match=r"argument 'hx\[0\]' must be a Tensor, got NoneType"):
        q(x, (None, h))
    q(x, (h, h))


@pytest.mark.parametrize("cls", [nn.GRUCell, nn.RNNCell])
def test_single_state_cells_refuse_a_tuple_state(cls):
    # (h,) was unwrapped and run; torch takes a Tensor alone.
    q = tq.quantize_dynamic(cls(4, 6), {cls})
    x, h = torch.randn(3, 4), torch.randn(3, 6)
    for hx in [(h,), [h], (h, h)]:
        with pytest.raises(TypeError, match=f"^DynamicQuantized{cls.__name__}: argument 'hx' must be a Tensor, got "
                                            f"{type(hx).__name__}$"):
            q(x, hx)
    q(x, h)


@pytest.mark.parametrize("cls,which", [(nn.LSTMCell, 0), (nn.LSTMCell, 1), (nn.GRUCell, 0), (nn.RNNCell, 0)])
@pytest.mark.parametrize("batched", [True, False])
def test_cells_state_rank_errors_are_torchs(cls, which, batched):
    # A 3-D state gave 'hidden0 has inconsistent hidden_size or batch' (a RuntimeError).
    f = cls(4, 6)
    q = tq.quantize_dynamic(cls(4, 6), {cls})
    x = torch.randn(3, 4) if batched else torch.randn(4)
    good, bad = torch.randn(3, 6) if batched else torch.randn(6), torch.randn(1, 3, 6)
    hx = ((bad, good) if which == 0 else (good, bad)) if cls is nn.LSTMCell else bad
    with pytest.raises(ValueError) as want:
        f(x, hx)
    with pytest.raises(ValueError, match=f"^{re.escape(str(want.value))}$"):
        q(x, hx)
    with pytest.raises(ValueError, match=r"Expected (hx\[0\]|hidden) to be 1D or 2D, got 3D instead"):
        q(torch.randn(3, 5), (bad, bad) if cls is nn.LSTMCell else bad)  # (before the input's size, as torch)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_input_on_another_device_than_the_weights_gives_torchs_error(cls):
    # The kernel reported it under its own argument names ('w_packed', 'x').
    q = tq.quantize_dynamic(cls(4, 6), {cls})
    x = torch.randn(3, 4) if cls in (nn.LSTMCell, nn.GRUCell, nn.RNNCell) else torch.randn(5, 3, 4)
    msg = ("Input and parameter tensors are not at the same device, found input tensor at meta and parameter "
           "tensor at cpu")
    if cls in (nn.LSTM, nn.GRU):
        with pytest.raises(RuntimeError) as want:
            cls(4, 6)(x.to("meta"))
        assert str(want.value) == msg
        with pytest.raises(RuntimeError, match=f"^{msg}$"):
            q(pack_padded_sequence(x.to("meta"), torch.tensor([5, 4, 2])))
    with pytest.raises(RuntimeError, match=f"^{msg}$"):
        q(x.to("meta"))
    with pytest.raises(RuntimeError, match=f"^{msg}$"):
        q(x.to("meta").requires_grad_())


def test_lstm_state_of_the_wrong_length_names_the_length():
    # 'must be a tuple (h_0, c_0), got tuple' said nothing of what was wrong with it.
    q = tq.quantize_dynamic(nn.LSTM(4, 6), {nn.LSTM})
    qc = tq.quantize_dynamic(nn.LSTMCell(4, 6), {nn.LSTMCell})
    h = torch.randn(1, 3, 6)
    for m, x, hs in [(q, torch.randn(5, 3, 4), h), (qc, torch.randn(3, 4), h[0])]:
        with pytest.raises(TypeError, match=r"argument 'hx' must be a tuple \(h_0, c_0\), got a tuple of 3 tensors$"):
            m(x, (hs, hs, hs))
        with pytest.raises(TypeError, match=r"argument 'hx' must be a tuple \(h_0, c_0\), got a list of 1 tensor$"):
            m(x, [hs])
        with pytest.raises(TypeError, match=r"argument 'hx' must be a tuple \(h_0, c_0\), got Tensor$"):
            m(x, hs)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("args,kw", [
    ((4, 8.0), {}), ((4.0, 8), {}), ((-1, 8), {}), ((0, 8), {}), ((4, 0), {}), ((4, 8, 0), {}),
    ((4, 8), {"proj_size": 8}), ((4, 8), {"proj_size": -1}), ((4, 8), {"bias": 1}), ((4, 8), {"batch_first": None}),
    ((4, 8), {"dropout": 2.0}), ((0, 8), {"proj_size": 2}), ((4.0, 8), {"dropout": -1}),
])
def test_constructor_checks_are_nn_rnnbases(mode, args, kw):
    # A float size failed in zeros(), a negative one in zeros(), input_size=0 was taken, and GRU's
    # proj_size was refused as 'has to be smaller than hidden_size'.
    with pytest.raises((TypeError, ValueError)) as want:
        getattr(nn, mode)(*args, **kw)
    with pytest.raises(want.type, match=f"^{re.escape(str(want.value))}$"):
        getattr(nnqd, mode)(*args, **kw)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_constructor_checks_name_the_size(name):
    # (a float or negative size failed in zeros(); an empty one is taken, as nn.RNNCellBase's)
    qcls = getattr(nnqd, name)
    with pytest.raises(TypeError, match="^hidden_size should be of type int, got: float$"):
        qcls(4, 8.0)
    with pytest.raises(TypeError, match="^input_size should be of type int, got: float$"):
        qcls(4.0, 8)
    with pytest.raises(ValueError, match="^input_size must be non-negative, got -1$"):
        qcls(-1, 8)
    with pytest.raises(ValueError, match="^hidden_size must be non-negative, got -2$"):
        qcls(4, -2)
    assert qcls(0, 8)(torch.randn(2, 0)) is not None and qcls(4, 0)(torch.randn(2, 4)) is not None
