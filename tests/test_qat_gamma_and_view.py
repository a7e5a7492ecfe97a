"""A QAT ConvBn whose BatchNorm weight is exactly 0 in a channel, and QTensor.view of codes an int8
op left channels last (eager and under torch.compile)."""
import copy
import warnings

import pytest
import torch
from torch import nn

import torchquant as tq


def _conv_bn(relu):
    torch.manual_seed(0)
    parts = [tq.QuantStub(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)] + ([nn.ReLU()] if relu else [])
    m = nn.Sequential(*parts, tq.DeQuantStub()).train()
    with torch.no_grad():
        m[2].weight[1] = 0  # a zero-initialised residual branch / a pruned channel
        m[2].bias[1] = 0.25
    ref = copy.deepcopy(m)
    m = tq.fuse_modules_qat(m, [["1", "2", "3"] if relu else ["1", "2"]])
    m.qconfig = tq.get_default_qat_qconfig("x86")
    return ref, tq.prepare_qat(m)


@pytest.mark.parametrize("relu", [False, True])
def test_qat_conv_bn_zero_gamma_channel_is_beta(relu):
    ref, p = _conv_bn(relu)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y, yr = p(x), ref(x)
        assert not torch.isnan(y).any()
        assert torch.isfinite(p[1].bn.running_mean).all()
        # the channel with gamma 0 is beta, as in float, within one output fake-quant step
        step = p[1].activation_post_process.scale.item()
        assert (y[:, 1] - yr[:, 1]).abs().max().item() <= step
        # its running mean is the conv's (weights fake-quantized), close to float's
        torch.testing.assert_close(p[1].bn.running_mean[1], ref[2].running_mean[1], atol=1e-3, rtol=0)
        p.eval()
        with torch.no_grad():
            assert not torch.isnan(p(x)).any()
            q = tq.convert(copy.deepcopy(p))
            assert torch.isfinite(q[1].bias).all()
            out = q(x)
    assert not torch.isnan(out).any()
    assert torch.allclose(out[:, 1], torch.full_like(out[:, 1], 0.25), atol=step)


class _GatedFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.mul = tq.nn.quantized.FloatFunctional()
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        a, b = self.conv(x).chunk(2, dim=1)
        y = self.mul.mul(a, b)  # channels-last codes, not viewable as (N, -1)
        return self.fc(y.view(y.size(0), -1))


def _converted_gated():
    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), _GatedFlatten(), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        p(x)
    return tq.convert(p), x


def test_qtensor_view_of_channels_last_codes_is_logical_order():
    q = tq.quantize_per_tensor(torch.randn(2, 4, 3, 3), 0.05, 128, torch.quint8)
    cl = q.contiguous(memory_format=torch.channels_last)
    v = cl.view(cl.size(0), -1)
    assert torch.equal(v.dequantize(), q.dequantize().view(2, -1))
    assert torch.equal(cl.view(size=(2, 36)).dequantize(), v.dequantize())
    # a viewable shape stays a view of the same codes
    assert q.view(2, -1).data.data_ptr() == q.data.data_ptr()
    with pytest.raises(RuntimeError, match="invalid"):
        cl.view(5, 7)


def test_view_after_int8_functional_op_eager_and_compiled():
    c, x = _converted_gated()
    with torch.no_grad():
        eager = c(x)
        torch._dynamo.reset()
        compiled = torch.compile(c, fullgraph=True, backend="eager")(x)
    assert eager.shape == (2, 4)
    assert torch.equal(eager, compiled)
