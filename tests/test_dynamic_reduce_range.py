"""Dynamic Linear and recurrent layers with 7-bit activation rows (reduce_range_dynamic_qconfig):
bit-identical with the oracle (per-row uint8 codes in [0, 127], then linear_int8) on every CPU
kernel variant, set by quantize_dynamic from the qconfig, and kept through copies and state
dicts."""
import copy
import io

import pytest
import torch
from torch import nn

import torchquant as tq
from torchquant import reference
from torchquant.nn import quantized as nnq

from conftest import SUPPORTED_ISAS

ops = torch.ops.torchquant


def _oracle(layer: nnq.DynamicLinear, x: torch.Tensor) -> torch.Tensor:
    q, scale, zp = reference.quantize_rowwise(x.float(), 0, 127)
    y = reference.linear_int8(q.view(torch.uint8), scale, zp, layer.qweight, layer.weight_scale, layer.bias,
                              relu=layer._relu)
    return y.to(x.dtype)


@pytest.mark.parametrize("shape", [(1, 67), (2, 67), (5, 67), (9, 4, 67), (0, 67), (3, 1)])
@pytest.mark.parametrize("relu", [False, True])
def test_7bit_rows_match_the_oracle_on_every_isa(shape, relu):
    torch.manual_seed(sum(shape) + relu)
    K = shape[-1]
    float_mod = nn.Sequential(nn.Linear(K, 37), nn.ReLU()) if relu else nn.Linear(K, 37)
    mod = tq.fuse_modules(float_mod, [["0", "1"]]) if relu else float_mod
    model = tq.quantize_dynamic(nn.Sequential(mod), {nn.Linear: tq.reduce_range_dynamic_qconfig,
                                                     tq.nn.intrinsic.LinearReLU: tq.reduce_range_dynamic_qconfig})
    layer = model[0][0] if relu else model[0]  # (the fused pair: DynamicLinear with its ReLU, then Identity)
    assert isinstance(layer, nnq.DynamicLinear) and layer.reduce_range and layer._relu == relu
    x = torch.randn(shape) * 3
    if x.numel():
        x.view(-1)[0] = 0.0
    want = _oracle(layer, x)
    for isa in SUPPORTED_ISAS:
        with tq.force_cpu_isa(isa):
            got = layer(x)
        assert got.dtype == x.dtype and got.shape == (*shape[:-1], 37)
        assert torch.equal(got, want), isa


def test_7bit_rows_differ_from_8bit_ones_and_stay_close_to_float():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 32))
    q7 = tq.quantize_dynamic(m, {nn.Linear: tq.reduce_range_dynamic_qconfig})
    q8 = tq.quantize_dynamic(m, {nn.Linear})
    assert not q8[0].reduce_range and q7[0].reduce_range and q7[2].reduce_range
    x = torch.randn(64, 256)
    with torch.no_grad():
        y, y7, y8 = m(x), q7(x), q8(x)
    e7, e8 = ((y7 - y).norm() / y.norm()).item(), ((y8 - y).norm() / y.norm()).item()
    assert not torch.equal(y7, y8)
    assert e8 < e7 < 0.03, (e7, e8)  # one bit less precision in the activations
    assert "reduce_range=True" in repr(q7[0]) and "reduce_range" not in repr(q8[0])


def test_7bit_rows_in_other_float_dtypes_and_with_input_grad():
    torch.manual_seed(1)
    layer = tq.quantize_dynamic(nn.Sequential(nn.Linear(40, 24)), {nn.Linear: tq.reduce_range_dynamic_qconfig})[0]
    for dt in (torch.bfloat16, torch.float16):
        x = torch.randn(6, 40).to(dt)
        assert torch.equal(layer(x), _oracle(layer, x))
    x = torch.randn(6, 40, requires_grad=True)
    y = layer(x)
    assert torch.equal(y.detach(), _oracle(layer, x.detach()))
    y.sum().backward()
    w = layer.qweight.float() * layer.weight_scale.reshape(-1, 1)
    assert torch.allclose(x.grad, w.sum(0).expand(6, -1), atol=1e-5)


def test_torch_ao_placeholder_with_quant_max_127_asks_for_7bit_rows():
    import torch.ao.quantization as aq

    qc = aq.QConfig(activation=aq.PlaceholderObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=127,
                                                                is_dynamic=True),
                    weight=aq.default_per_channel_weight_observer)
    assert tq.quantize_dynamic(nn.Sequential(nn.Linear(8, 4)), {nn.Linear: qc})[0].reduce_range
    # torch.ao's own default_dynamic_qconfig names the full range: 8-bit rows
    assert not tq.quantize_dynamic(nn.Sequential(nn.Linear(8, 4)), {nn.Linear: aq.default_dynamic_qconfig})[0].reduce_range


def test_7bit_rows_survive_copies_and_either_state_dict_loads():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(32, 16))
    q7 = tq.quantize_dynamic(m, {nn.Linear: tq.reduce_range_dynamic_qconfig})
    x = torch.randn(3, 32)
    y7 = q7(x)
    assert torch.equal(copy.deepcopy(q7)(x), y7)
    buf = io.BytesIO()
    torch.save(q7, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), y7)
    # the mode belongs to the module built, not to the checkpoint: an 8-bit skeleton loads it
    q8 = tq.quantize_dynamic(copy.deepcopy(m), {nn.Linear})
    q8.load_state_dict(q7.state_dict())
    assert not q8[0].reduce_range and torch.equal(q8[0].qweight, q7[0].qweight)
    assert set(q7.state_dict()) == set(q8.state_dict())


def _ref_linear(layer: nnq.DynamicLinear, x: torch.Tensor) -> torch.Tensor:
    return reference.linear_dynamic(x, layer.qweight, layer.weight_scale, layer.bias, False, True)


def _lstm_oracle(q, x, proj: bool):
    """One-layer unidirectional quantized LSTM, step by step: the int8 projections from the
    plain-torch oracle with 7-bit rows, the gate update from the op (its transcendentals are the
    ISA's: tests/test_rnn.py bounds them against the reference); x [T, B, I], zero initial
    state."""
    T, B = x.shape[:2]
    H, P = q.hidden_size, q.proj_size or q.hidden_size
    h, c = torch.zeros(B, P), torch.zeros(B, H)
    ig = _ref_linear(q.ih_l0, x)
    outs = []
    for t in range(T):
        h, c = ops.lstm_cell_update(ig[t], _ref_linear(q.hh_l0, h), c)
        if proj:
            h = _ref_linear(q.hr_l0, h)
        outs.append(h)
    return torch.stack(outs), h, c


@pytest.mark.parametrize("proj", [False, True])
def test_lstm_7bit_rows_match_the_oracle_on_every_isa(proj):
    torch.manual_seed(3 + proj)
    m = nn.LSTM(19, 24, proj_size=8 if proj else 0)
    q7 = tq.quantize_dynamic(nn.Sequential(m), {nn.LSTM: tq.reduce_range_dynamic_qconfig})[0]
    q8 = tq.quantize_dynamic(nn.Sequential(m), {nn.LSTM})[0]
    assert q7.reduce_range and not q8.reduce_range and "reduce_range=True" in repr(q7)
    x = torch.randn(6, 3, 19) * 2
    for isa in SUPPORTED_ISAS:
        with tq.force_cpu_isa(isa):
            out, (h, c) = q7(x)
            want, wh, wc = _lstm_oracle(q7, x, proj)
        assert torch.equal(out, want) and torch.equal(h[0], wh) and torch.equal(c[0], wc), isa
    # one bit less than the 8-bit rows, and still close to float
    with torch.no_grad():
        y, y8 = m(x)[0], q8(x)[0]
    assert not torch.equal(out, y8)
    e7, e8 = ((out - y).norm() / y.norm()).item(), ((y8 - y).norm() / y.norm()).item()
    assert e7 < 0.05 and e8 < 0.05, (e7, e8)


def test_gru_and_cells_take_7bit_rows():
    torch.manual_seed(4)
    qc = tq.reduce_range_dynamic_qconfig
    x = torch.randn(5, 2, 12)
    gru = nn.GRU(12, 16, num_layers=2, bidirectional=True)
    g7 = tq.quantize_dynamic(nn.Sequential(gru), {nn.GRU: qc})[0]
    g8 = tq.quantize_dynamic(nn.Sequential(gru), {nn.GRU})[0]
    assert g7.reduce_range and not torch.equal(g7(x)[0], g8(x)[0])
    # the padded one-op loop and a PackedSequence (steps in Python) agree with 7-bit rows too
    packed = nn.utils.rnn.pack_padded_sequence(x, [5, 5])
    assert torch.equal(g7(packed)[0].data, g7(x)[0].reshape(-1, 32))
    # the cells: one step from the oracle
    xc, hc = torch.randn(3, 12), torch.randn(3, 16)
    for cls in (nn.LSTMCell, nn.GRUCell, nn.RNNCell):
        cell = tq.quantize_dynamic(nn.Sequential(cls(12, 16)), {cls: qc})[0]
        assert cell.reduce_range
        ig, hg = _ref_linear(cell.ih, xc), _ref_linear(cell.hh, hc)
        if cls is nn.LSTMCell:
            cc = torch.randn(3, 16)
            assert all(torch.equal(a, b) for a, b in zip(cell(xc, (hc, cc)), ops.lstm_cell_update(ig, hg, cc)))
        elif cls is nn.GRUCell:
            assert torch.equal(cell(xc, hc), ops.gru_cell_update(ig, hg, hc))
        else:
            assert torch.equal(cell(xc, hc), torch.tanh(ig + hg))


def test_7bit_rows_holding_inf_give_nan_rows_as_8bit_ones():
    torch.manual_seed(4)
    m = nn.Sequential(nn.Linear(16, 8))
    q7 = tq.quantize_dynamic(m, {nn.Linear: tq.reduce_range_dynamic_qconfig})
    q8 = tq.quantize_dynamic(m, {nn.Linear})
    x = torch.randn(2, 3, 16)
    x[0, 1, 1] = float("inf")
    x[1, 2, 0], x[1, 2, 1] = 3e38, -3e38  # finite, but a range past float32's: an infinite scale
    y7, y8 = q7(x), q8(x)
    bad = torch.zeros(2, 3, dtype=torch.bool)
    bad[0, 1] = bad[1, 2] = True
    assert torch.isnan(y8[bad]).all() and torch.isnan(y7[bad]).all()
    assert torch.equal(y7[~bad], _oracle(q7[0], x[~bad]))


def test_7bit_rows_trace():
    torch.manual_seed(5)
    q7 = tq.quantize_dynamic(nn.Sequential(nn.Linear(16, 8)), {nn.Linear: tq.reduce_range_dynamic_qconfig})
    x = torch.randn(3, 16)
    traced = torch.jit.trace(q7, x)
    assert torch.equal(traced(x), q7(x))
    assert torch.equal(traced(x * 2), q7(x * 2))
