"""The eager API on CUDA: models prepared, calibrated and converted on either device, moved with
.to("cuda") / .cpu(), dynamic and QAT flows, state_dict across devices. The CUDA kernels are
bit-identical to the CPU ones, so a converted model gives the same bits on both devices. All skip
without a GPU."""
import copy
import io

import pytest
import torch
import torch.nn as nn

import torchquant
from torchquant.nn import quantized as nnq

pytestmark = pytest.mark.cuda


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torchquant.QuantStub()
        self.fc1 = nn.Linear(84, 96)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(96, 64)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(64, 10)
        self.dequant = torchquant.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.dequant(self.fc3(x))


def _data(n, seed):
    return torch.rand(n, 84, generator=torch.Generator().manual_seed(seed))


def _convert(model, qconfig, device, batches=4):
    model = copy.deepcopy(model).eval().to(device)
    model.qconfig = qconfig
    prepared = torchquant.prepare(model)
    with torch.no_grad():
        for i in range(batches):
            prepared(_data(32, i).to(device))
    return torchquant.convert(prepared)


@pytest.mark.parametrize("qconfig_name", ["per_channel_qconfig", "per_tensor_qconfig"])
def test_converted_on_cpu_then_moved_gives_the_same_bits(qconfig_name):
    torch.manual_seed(0)
    q_cpu = _convert(MLP(), getattr(torchquant, qconfig_name), "cpu")
    q_gpu = copy.deepcopy(q_cpu).to("cuda")
    assert q_gpu.fc1.qweight.is_cuda and type(q_gpu.fc1) is nnq.Linear
    x = _data(37, 100)
    with torch.no_grad():
        want = q_cpu(x)
        got = q_gpu(x.cuda())
    assert got.is_cuda and got.dtype == torch.float32
    assert torch.equal(got.cpu(), want)
    # and back again
    with torch.no_grad():
        assert torch.equal(q_gpu.cpu()(x), want)


def test_prepared_and_calibrated_on_cuda():
    """The whole flow on CUDA. Weights are quantized bit for bit as on the CPU; activation
    ranges come from float Linear layers, whose CUDA and CPU results differ in the last bits,
    so the outputs agree to within a couple of output quantization steps."""
    torch.manual_seed(1)
    m = MLP()
    q_cpu = _convert(m, torchquant.per_channel_qconfig, "cpu")
    q_gpu = _convert(m, torchquant.per_channel_qconfig, "cuda")
    assert q_gpu.fc2.qweight.is_cuda
    for name in ("fc1", "fc2", "fc3"):
        a, b = getattr(q_cpu, name), getattr(q_gpu, name)
        assert torch.equal(a.qweight, b.qweight.cpu()), name
        assert torch.equal(a.weight_scale, b.weight_scale.cpu()), name
    # The first observer sees the same input on both devices: the same qparams.
    assert torch.equal(q_cpu.quant.scale, q_gpu.quant.scale.cpu())
    x = _data(5, 7)
    with torch.no_grad():
        y_gpu, y_cpu = q_gpu(x.cuda()).cpu(), q_cpu(x)
    assert (y_gpu - y_cpu).abs().max() <= 2 * float(q_cpu.fc3.scale) + 1e-7


def test_default_qconfig_on_cuda_is_close_to_fp32():
    torch.manual_seed(2)
    m = MLP().eval()
    q = _convert(m, torchquant.get_default_qconfig("x86"), "cuda")
    x = _data(64, 3)
    with torch.no_grad():
        y = q(x.cuda()).cpu()
        ref = m(x)
    assert (y - ref).abs().max() < 0.05


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_quantize_dynamic_on_cuda_matches_cpu(batch):
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(84, 96), nn.ReLU(), nn.Linear(96, 10)).eval()
    d_cpu = torchquant.quantize_dynamic(copy.deepcopy(m), {nn.Linear})
    d_gpu = torchquant.quantize_dynamic(copy.deepcopy(m).cuda(), {nn.Linear})
    x = _data(batch, 4)
    with torch.no_grad():
        want = d_cpu(x)
        assert torch.equal(d_gpu(x.cuda()).cpu(), want)
        assert torch.equal(copy.deepcopy(d_cpu).cuda()(x.cuda()).cpu(), want)


def test_qat_on_cuda_trains_and_converts():
    torch.manual_seed(4)
    m = MLP().train().cuda()
    m.qconfig = torchquant.get_default_qat_qconfig("x86")
    qat = torchquant.prepare_qat(m)
    opt = torch.optim.SGD(qat.parameters(), lr=0.05)
    x = _data(64, 5).cuda()
    target = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(6)).cuda()
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(qat(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    q = torchquant.convert(qat.eval())
    assert type(q.fc1) is nnq.Linear and q.fc1.qweight.is_cuda
    with torch.no_grad():
        fq = qat(x)
        y = q(x)
    assert (y - fq).abs().max() < 0.1


def test_state_dict_saved_on_cuda_loads_on_cpu():
    torch.manual_seed(5)
    q_gpu = _convert(MLP(), torchquant.per_channel_qconfig, "cuda")
    buf = io.BytesIO()
    torch.save(q_gpu.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True, map_location="cpu")
    q_cpu = _convert(MLP(), torchquant.per_channel_qconfig, "cpu")
    q_cpu.load_state_dict(sd)
    x = _data(9, 8)
    with torch.no_grad():
        assert torch.equal(q_cpu(x), q_gpu(x.cuda()).cpu())


def test_int8_mm_public_function_on_cuda_any_shape():
    gen = torch.Generator().manual_seed(9)
    for m, k, n in ((1, 3, 5), (3, 100, 7), (17, 64, 24)):
        a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
        b = torch.randint(-128, 128, (k, n), generator=gen, dtype=torch.int8)
        assert torch.equal(torchquant.int8_mm(a.cuda(), b.cuda()).cpu(), torchquant.int8_mm(a, b))


@pytest.mark.parametrize("make", [
    lambda: torchquant.fake_quantize.default_fused_act_fake_quant(),
    lambda: torchquant.fake_quantize.default_fused_per_channel_wt_fake_quant(),
    lambda: torchquant.fake_quantize.default_fake_quant(),
    lambda: torchquant.fake_quantize.default_per_channel_weight_fake_quant(),
], ids=["fused_act", "fused_weight", "act", "weight"])
def test_fake_quant_training_steps_on_cuda_equal_the_cpu_bit_for_bit(make):
    # flags toggled between steps: the fused fake-quant applies them on the device, the others
    # read them on the host; outputs, input gradients and state equal the CPU's
    g = torch.Generator().manual_seed(9)
    xs = [torch.randn(6, 5, generator=g) * (i + 1) for i in range(6)]
    flags = [(1, 1), (0, 1), (1, 0), (0, 0), (1, 1), (0, 1)]
    cpu = make().train()
    cpu(xs[0])
    gpu = copy.deepcopy(cpu).cuda()
    for x, (obs_on, fq_on) in zip(xs, flags):
        outs = []
        for fq, dev in ((cpu, "cpu"), (gpu, "cuda")):
            fq.observer_enabled.fill_(obs_on)
            fq.fake_quant_enabled.fill_(fq_on)
            xi = x.to(dev).requires_grad_()
            y = fq(xi)
            y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape).to(dev))
            outs.append((y.detach().cpu(), xi.grad.cpu()))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    for k, v in cpu.state_dict().items():
        assert torch.equal(gpu.state_dict()[k].cpu(), v), k


def test_fused_fake_quant_training_step_on_cuda_does_not_synchronize():
    fq = torchquant.fake_quantize.default_fused_act_fake_quant().train().cuda()
    x = torch.randn(64, 32, device="cuda")
    fq(x)  # (eps read once)
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = fq(x.requires_grad_())
        y.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
