"""Sequence models on CUDA (skipped without a GPU): the fused cell updates within the documented
bound of the reference, the embedding bag bit-identical with the CPU, and the modules on CUDA
against the same modules on the CPU."""
import pytest
import torch
from torch import nn

import torchquant as tq
from torchquant import reference
from torchquant.nn.quantized_embedding import pack_rowwise

pytestmark = pytest.mark.cuda
ops = torch.ops.torchquant


def test_cell_updates_on_cuda_within_bound():
    g = torch.Generator().manual_seed(0)
    ig, hg = torch.randn(9, 4 * 33, generator=g) * 5, torch.randn(9, 4 * 33, generator=g) * 5
    c = torch.randn(9, 33, generator=g)
    h2, c2 = ops.lstm_cell_update(ig.cuda(), hg.cuda(), c.cuda())
    rh, rc = reference.lstm_cell_update(ig, hg, c)
    for got, want in ((h2.cpu(), rh), (c2.cpu(), rc)):
        assert bool(((got - want).abs() <= reference.CELL_UPDATE_ATOL + reference.CELL_UPDATE_RTOL * want.abs()).all())
    got = ops.gru_cell_update(ig[:, :99].cuda(), hg[:, :99].cuda(), c.cuda()).cpu()
    want = reference.gru_cell_update(ig[:, :99], hg[:, :99], c)
    assert bool(((got - want).abs() <= reference.CELL_UPDATE_ATOL + reference.CELL_UPDATE_RTOL * want.abs()).all())


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_embedding_bag_cuda_equals_cpu(bits, mode):
    torch.manual_seed(bits + mode)
    emb = nn.EmbeddingBag(300, 37, mode="sum")
    emb.qconfig = tq.float_qparams_weight_only_qconfig if bits == 8 else tq.float_qparams_weight_only_qconfig_4bit
    q = tq.nn.quantized.EmbeddingBag.from_float(emb)
    idx = torch.randint(0, 300, (200,))
    off = torch.tensor([0, 0, 50, 51, 120])
    psw = torch.randn(200) if mode == 0 else None
    cpu = ops.embedding_bag_rowwise(q.packed_weight, bits, 37, idx, off, mode, psw, False, 5)
    gpu = ops.embedding_bag_rowwise(q.packed_weight.cuda(), bits, 37, idx.cuda(), off.cuda(), mode,
                                    psw.cuda() if psw is not None else None, False, 5)
    assert torch.equal(gpu.cpu(), cpu)
    assert torch.equal(cpu, reference.embedding_bag_rowwise(q.packed_weight, bits, 37, idx, off, mode, psw, False, 5))
    with pytest.raises(RuntimeError, match="argument 'indices' holds 300"):
        ops.embedding_bag_rowwise(q.packed_weight.cuda(), bits, 37, torch.tensor([1, 300]).cuda(),
                                  torch.tensor([0]).cuda(), mode)


def test_embedding_bag_cuda_unaligned_table():
    """A packed table that is a contiguous view starting one byte past an aligned address (the
    kernel reads each row's float scale and bias): copied once, equal to the CPU."""
    torch.manual_seed(3)
    emb = nn.EmbeddingBag(50, 13, mode="sum")
    emb.qconfig = tq.float_qparams_weight_only_qconfig
    table = tq.nn.quantized.EmbeddingBag.from_float(emb).packed_weight
    flat = torch.empty(table.numel() + 1, dtype=table.dtype, device="cuda")
    flat[1:].copy_(table.reshape(-1).cuda())
    t_off = flat[1:].view(table.shape)
    assert t_off.is_contiguous() and t_off.data_ptr() % 4 != 0
    idx, off = torch.randint(0, 50, (30,)), torch.tensor([0, 7, 20])
    want = ops.embedding_bag_rowwise(table, 8, 13, idx, off, 0)
    assert torch.equal(ops.embedding_bag_rowwise(t_off, 8, 13, idx.cuda(), off.cuda(), 0).cpu(), want)


def test_embedding_bag_cuda_fma_halfway_cases():
    # acc + q * s lands within half a float64 ulp of a float32 halfway point (see
    # tests/test_embedding.py::_halfway_cases): only a correctly rounded fma gives the oracle's bits.
    acc = [2.0 ** 30 + 128 * 5, 2.0 ** 30 + 128 * 6, 2.0 ** 31 + 256 * 3]
    q = [233, 59, 65]
    s = [2304167 * 2.0 ** -23, 9099507 * 2.0 ** -23, 16519105 * 2.0 ** -23]
    dim = 19
    vals = torch.ones(6, dim, dtype=torch.uint8)
    vals[1::2] = torch.tensor(q, dtype=torch.uint8)[:, None]
    scales = torch.tensor([x for pair in zip(acc, s) for x in pair], dtype=torch.float32)
    packed = pack_rowwise(vals, scales, torch.zeros(6), 8, dim)
    idx, off = torch.arange(6), torch.tensor([0, 2, 4])
    want = reference.embedding_bag_rowwise(packed, 8, dim, idx, off, 0)
    naive = (torch.tensor(q).double() * torch.tensor(s).double() + torch.tensor(acc).double()).float()
    assert not torch.equal(want[:, 0], naive)
    got = ops.embedding_bag_rowwise(packed.cuda(), 8, dim, idx.cuda(), off.cuda(), 0).cpu()
    assert torch.equal(got, want)
    # The plain Embedding on CUDA: the row values of the contract.
    qe = tq.nn.quantized.Embedding(6, dim)
    qe.packed_weight = packed
    assert torch.equal(qe.cuda()(idx.cuda().reshape(2, 3)).cpu(),
                       reference.embedding_row_values(packed, 8, dim)[idx.reshape(2, 3)])


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_recurrent_modules_on_cuda_match_cpu(cls):
    torch.manual_seed(1)
    f = cls(16, 32, num_layers=2, bidirectional=True).eval()
    q = tq.quantize_dynamic(nn.Sequential(f), {cls})[0]
    x = torch.randn(7, 3, 16)
    with torch.no_grad():
        out_cpu = q(x)[0]
        out_gpu = q.cuda()(x.cuda())[0].cpu()
    # The int8 GEMMs are exact on both devices; the gates' sigmoid / tanh differ within the
    # documented bound, which can move a quantized hidden state by one step.
    assert ((out_gpu - out_cpu).norm() / out_cpu.norm()) < 1e-2


@pytest.mark.parametrize("bits", [8, 4])
def test_embedding_qat_on_cuda_converts_to_the_cpu_table(bits):
    # prepare_qat with the embedding mapping on a CUDA model: the fake-quant lives on the GPU and
    # convert observes the table there; the packed rows equal those of the same flow on the CPU.
    qc = tq.default_embedding_qat_qconfig if bits == 8 else tq.default_embedding_qat_qconfig_4bit
    torch.manual_seed(bits)
    tables = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(bits)
        model = nn.Sequential(nn.EmbeddingBag(64, 24, mode="sum")).train()
        model[0].qconfig = qc
        prepared = tq.prepare_qat(model, mapping=tq.get_embedding_qat_module_mappings()).to(device)
        idx, off = torch.randint(0, 64, (30,)).to(device), torch.tensor([0, 10, 20]).to(device)
        prepared(idx, off).sum().backward()
        converted = tq.convert(prepared.eval())
        assert converted[0].packed_weight.device.type == device
        tables.append(converted[0].packed_weight.cpu())
        out = converted(idx, off)
        assert out.device.type == device and torch.isfinite(out).all()
    assert torch.equal(tables[0], tables[1])
