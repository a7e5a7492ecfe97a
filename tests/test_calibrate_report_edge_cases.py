"""calibrate and report on inputs at their edges: torch.ao's packed weights in the byte sizes,
one model given twice or sharing a submodule, NaN / inf outputs, data without a length,
namedtuple inputs, RecordingObserver's recorded values, the progress bar's length, empty batches."""
import copy
import math
from collections import namedtuple

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, IterableDataset

import torchquant
from torchquant.nn.quantized_ops import FloatFunctional
from torchquant.observer import MinMaxObserver, RecordingObserver


class Stubbed(nn.Module):
    def __init__(self, stubs):
        super().__init__()
        self.quant, self.fc, self.dq = stubs.QuantStub(), nn.Linear(64, 64), stubs.DeQuantStub()

    def forward(self, x):
        return self.dq(self.fc(self.quant(x)))


def _ao_converted():
    import torch.ao.quantization as aoq

    torch.manual_seed(0)
    m = Stubbed(aoq).eval()
    m.qconfig = aoq.get_default_qconfig("x86")
    p = aoq.prepare(copy.deepcopy(m))
    p(torch.randn(16, 64))
    return m, aoq.convert(p), aoq.quantize_dynamic(copy.deepcopy(m), {nn.Linear})


def test_size_counts_torch_ao_packed_weights():
    # torch.ao keeps a quantized Linear's weight and bias in a tuple of its state dict: an int8
    # weight is a fourth of the float one, not next to nothing.
    m, static, dynamic = _ao_converted()
    for q in (static, dynamic):
        row = torchquant.report(m, q, torch.randn(4, 64), show_size=True)["fc"]
        assert row.float_bytes == 64 * 64 * 4 + 64 * 4
        assert 3.0 < row.float_bytes / row.quantized_bytes < 4.5, (row.float_bytes, row.quantized_bytes)


class Shifted(nn.Module):
    """A Linear whose first output feature is off by ``shift`` (a stand-in for a quantized Linear)."""

    def __init__(self, lin, shift=0.05):
        super().__init__()
        self.lin, self.shift = copy.deepcopy(lin), shift

    def forward(self, x):
        y = self.lin(x)
        return torch.cat([y[..., :1] + self.shift, y[..., 1:]], -1)


def test_same_model_as_both_arguments_is_refused():
    m = nn.Sequential(nn.Linear(4, 4)).eval()
    with pytest.raises(ValueError, match="'float_model' and 'quantized_model' are the same Sequential object"):
        torchquant.report(m, m, torch.randn(2, 4))
    # (a model converted in place returns the same object)
    q = torchquant.quantize_dynamic(m, {nn.Linear}, inplace=True)
    with pytest.raises(ValueError, match="converted in place"):
        torchquant.report(m, q, torch.randn(2, 4))


def test_shared_submodule_is_compared_on_each_model_own_output():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)).eval()
    q = nn.Sequential(Shifted(f[0], 0.3), f[1]).eval()  # the LayerNorm object is in both
    x = torch.randn(16, 8)
    r = torchquant.report(f, q, x)
    with torch.no_grad():
        true_err = float((f(x) - q(x)).abs().max())
    assert true_err > 0.01
    assert math.isfinite(r["1"].sqnr_db) and r["1"].max_abs_error == pytest.approx(true_err, rel=1e-5)


class AddNet(nn.Module):
    def __init__(self, add):
        super().__init__()
        self.fc, self.add = nn.Linear(4, 4), add

    def forward(self, x):
        return self.add.add(self.fc(x), x)


class PlainAdd(FloatFunctional):
    """A FloatFunctional without its Identity child, so that it is the innermost module of its
    name (as a converted model's QFunctional is) and gets a row."""

    def __init__(self):
        super().__init__()
        del self.activation_post_process
        self.activation_post_process = torch.clone


def test_shared_float_functional_is_compared_on_each_model_own_output():
    torch.manual_seed(0)
    f = AddNet(PlainAdd()).eval()
    q = AddNet(f.add).eval()  # the same FloatFunctional object, another Linear
    q.fc = Shifted(f.fc, 0.25)
    r = torchquant.report(f, q, torch.randn(8, 4))
    assert r["add"].max_abs_error == pytest.approx(0.25, rel=1e-5)
    assert "add" not in f.add.__dict__  # its methods unwrapped afterwards


class Poke(nn.Module):
    """A copy of ``lin`` whose output's first element is set to ``value`` on the calls listed."""

    def __init__(self, lin, value, calls=(1,)):
        super().__init__()
        self.lin, self.value, self.calls, self.k = copy.deepcopy(lin), value, calls, 0

    def forward(self, x):
        self.k += 1
        y = self.lin(x) + 0.01
        if self.k in self.calls:
            y[0, 0] = self.value
        return y


def test_nan_in_quantized_output_shows_in_max_error():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(4, 4)).eval()
    x = torch.randn(8, 4)
    one = torchquant.report(f, nn.Sequential(Poke(f[0], math.nan)), x)["0"]
    assert math.isnan(one.sqnr_db) and math.isnan(one.max_abs_error)
    # after a finite batch too
    later = torchquant.report(f, nn.Sequential(Poke(f[0], math.nan, calls=(2,))), [x, x])["0"]
    assert math.isnan(later.sqnr_db) and math.isnan(later.max_abs_error)
    assert "nan" in str(torchquant.report(f, nn.Sequential(Poke(f[0], math.nan)), x)).split("\n")[-1]


def test_inf_in_quantized_output_is_minus_inf_db():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(4, 4)).eval()
    row = torchquant.report(f, nn.Sequential(Poke(f[0], math.inf)), torch.randn(8, 4))["0"]
    assert row.sqnr_db == -math.inf and row.max_abs_error == math.inf


class Observed(nn.Module):
    def __init__(self):
        super().__init__()
        self.obs = MinMaxObserver()

    def forward(self, x):
        return self.obs(x)


class Rows(IterableDataset):
    """Three rows, and no __len__."""

    def __iter__(self):
        for i in range(3):
            yield torch.full((2,), float(i))


@pytest.mark.parametrize("progress", [False, True])
def test_calibrate_on_a_loader_without_length(progress):
    m = Observed()
    torchquant.calibrate(m, DataLoader(Rows(), batch_size=2), progress=progress)
    assert float(m.obs.min_val) == 0.0 and float(m.obs.max_val) == 2.0


Pair = namedtuple("Pair", ["a", "b"])


class TakesPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.obs = MinMaxObserver()

    def forward(self, p):
        return self.obs(p.a + p.b)


def test_calibrate_moves_a_namedtuple_input():
    m = TakesPair()
    torchquant.calibrate(m, [{"p": Pair(torch.ones(2), torch.full((2,), 2.0))}], progress=False)
    assert float(m.obs.max_val) == 3.0
    r = torchquant.report(TakesPair(), TakesPair(), [{"p": Pair(torch.ones(2), torch.ones(2))}])
    assert r["obs"].sqnr_db == math.inf


class Lstm(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4)

    def forward(self, seq):
        return self.lstm(seq)[0].data


def test_calibrate_moves_a_packed_sequence_input():
    seq = nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])
    torchquant.calibrate(Lstm().eval(), [{"seq": seq}], progress=False)


def test_report_leaves_recorded_values_of_a_recording_observer():
    torch.manual_seed(0)

    class Rec(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.rec = nn.Linear(4, 4), RecordingObserver()

        def forward(self, x):
            return self.rec(self.fc(x))

    prepared = Rec().eval()
    prepared.rec(torch.ones(1, 4))
    values = prepared.rec.tensor_val
    first = values[0]
    q = copy.deepcopy(prepared)
    torchquant.report(prepared, q, [torch.randn(2, 4)] * 3)
    assert prepared.rec.tensor_val is values and len(values) == 1 and values[0] is first
    assert len(q.rec.tensor_val) == 1  # (as quantized_model too)


def test_progress_bar_length_is_at_most_the_data_length(monkeypatch):
    import tqdm.auto

    totals = []

    def bar(iterable, total=None, **kwargs):
        totals.append(total)
        return iterable

    monkeypatch.setattr(tqdm.auto, "tqdm", bar)
    data = [torch.randn(2, 2)] * 3
    torchquant.calibrate(Observed(), data, num_batches=10)
    torchquant.calibrate(Observed(), data, num_batches=2)
    torchquant.calibrate(Observed(), data)
    torchquant.calibrate(Observed(), iter(data), num_batches=5)
    assert totals == [3, 2, 3, 5]


def test_negative_num_batches_message_names_calibrate():
    with pytest.raises(ValueError, match=r"^calibrate: argument 'num_batches' must be >= 0 or None, got -1$"):
        torchquant.calibrate(Observed(), [torch.randn(2)], num_batches=-1)


def test_empty_tuple_batch_is_named():
    data = [torch.randn(2, 2), ()]
    with pytest.raises(ValueError, match=r"calibrate: batch 1 of argument 'data' is an empty tuple"):
        torchquant.calibrate(Observed(), data, progress=False)
    m = nn.Sequential(nn.Linear(2, 2)).eval()
    with pytest.raises(ValueError, match=r"report: batch 1 of argument 'data' is an empty list"):
        torchquant.report(m, copy.deepcopy(m), [torch.randn(2, 2), []])
