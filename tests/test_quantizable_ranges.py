"""make_quantizable leaves in float an add of two activations whose magnitudes on the example
inputs are far apart (an additive attention mask), with a warning, and rewrites the others."""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import torchquant as tq


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()))


class _MaskedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))

    def forward(self, x, mask):
        ext = (1.0 - mask[:, None, :]) * -10000.0
        scores = self.q(x) @ self.k(x).transpose(1, 2) * 0.17 + ext
        return self.o(F.softmax(scores, -1) @ self.v(x))


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x):
        y = self.fc1(x)
        return y + self.fc2(y)


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.ones(4, 16)
        mask[:, 12:] = 0
        out.append((torch.randn(4, 16, 32, generator=g), mask))
    return out


def _int8_sqnr(model, float_model, calib, test):
    model.qconfig = tq.get_default_qconfig("x86")
    prepared = tq.prepare(model)
    for batch in calib:
        prepared(*batch)
    out = tq.convert(prepared)(*test)
    out = out.dequantize() if hasattr(out, "dequantize") else out
    return _sqnr(float_model(*test), out)


def test_attention_mask_add_stays_float_and_warns():
    torch.manual_seed(0)
    model = _MaskedAttention().eval()
    batches = _batches(6)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mq = tq.make_quantizable(model, batches[0])
    msgs = [str(w.message) for w in rec if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1 and "stay in float" in msgs[0] and "add" in msgs[0], msgs
    assert rec[0].filename == __file__  # points at the caller's line
    names = {n for n, _ in mq.named_modules()}
    assert not any(n.startswith("functional_add") for n in names), names
    assert "functional_mul_scalar" in names  # the mask's own arithmetic is still rewritten
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = _int8_sqnr(model, model, batches[1:5], batches[5])
        rewritten = _int8_sqnr(mq, model, batches[1:5], batches[5])
    assert rewritten > 30 and rewritten > plain - 3, (rewritten, plain)


def test_residual_add_of_similar_magnitudes_is_rewritten():
    torch.manual_seed(0)
    model = _Residual().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mq = tq.make_quantizable(model, torch.randn(8, 32))
    assert "functional_add" in {n for n, _ in mq.named_modules()}


def test_add_with_all_zero_operand_is_rewritten():
    # An all-zero operand (a zero-initialised residual branch) adds exactly: rewritten as before.
    torch.manual_seed(0)
    model = _Residual().eval()
    nn.init.zeros_(model.fc2.weight)
    nn.init.zeros_(model.fc2.bias)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mq = tq.make_quantizable(model, torch.randn(8, 32))
    assert "functional_add" in {n for n, _ in mq.named_modules()}
