"""Row-wise quantized Embedding / EmbeddingBag: the embedding_bag_rowwise kernel (every CPU
variant) bit-exact against a plain-torch reference, against torch.ao's quantized embedding-bag
ops, the static prepare/convert flow with torch.ao's qconfigs, bounds checks, state dicts."""
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchquant as tq
from torchquant.nn import quantized as nnq
from torchquant.nn.quantized_embedding import pack_rowwise, unpack_rowwise

ops = torch.ops.torchquant


def _table(n, d, bits, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d, generator=g)
    w[0] = 0.0  # a constant row (scale falls back to 1)
    emb = nn.EmbeddingBag(n, d, mode="sum")
    emb.weight.data.copy_(w)
    emb.qconfig = tq.float_qparams_weight_only_qconfig if bits == 8 else tq.float_qparams_weight_only_qconfig_4bit
    return emb


def _reference(packed, bits, dim, indices, offsets, mode, psw, include_last_offset, padding_idx):
    """The contract in plain torch: dequantized rows, accumulated in index order in float32."""
    q, s, z = unpack_rowwise(packed, bits, dim)
    table = (q.float() - z[:, None]) * s[:, None]
    if offsets is None:
        bags = [(i * indices.shape[1], (i + 1) * indices.shape[1]) for i in range(indices.shape[0])]
        indices = indices.reshape(-1)
        psw = psw.reshape(-1) if psw is not None else None
    else:
        off = offsets.tolist()
        nb = len(off) - 1 if include_last_offset else len(off)
        bags = [(off[b], off[b + 1] if b + 1 < len(off) else indices.numel()) for b in range(nb)]
    out = torch.zeros(len(bags), dim)
    for b, (s0, e0) in enumerate(bags):
        acc, count = torch.zeros(dim), 0
        for i in range(s0, e0):
            r = int(indices[i])
            if padding_idx is not None and r == padding_idx:
                continue
            v = table[r]
            if mode == 2:
                acc = v.clone() if count == 0 else torch.where(v > acc, v, acc)
            else:
                acc = acc + (v * psw[i] if psw is not None else v)
            count += 1
        if mode == 1 and count:
            acc = acc / count
        out[b] = acc
    return out


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dim", [1, 7, 8, 15, 64, 72, 130])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_kernel_bit_exact_with_reference(isa, bits, dim, mode):
    emb = _table(50, dim, bits, seed=dim)
    q = nnq.EmbeddingBag.from_float(emb)
    g = torch.Generator().manual_seed(dim + mode)
    idx = torch.randint(0, 50, (40,), generator=g)
    idx[3] = idx[4] = 0  # repeated and constant rows
    offsets = torch.tensor([0, 0, 5, 5, 17, 39])  # empty bags, a bag of one
    for psw in ([None, torch.randn(40, generator=g)] if mode == 0 else [None]):
        for pad in (None, int(idx[7])):
            for ilo in (False, True):
                got = ops.embedding_bag_rowwise(q.packed_weight, bits, dim, idx, offsets, mode, psw, ilo, pad)
                want = _reference(q.packed_weight, bits, dim, idx, offsets, mode, psw, ilo, pad)
                assert torch.equal(got, want), (psw is not None, pad, ilo)


def test_2d_indices_int32_and_non_contiguous(isa):
    q = nnq.EmbeddingBag.from_float(_table(30, 24, 8, seed=3))
    idx = torch.randint(0, 30, (6, 8), dtype=torch.int32)
    got = ops.embedding_bag_rowwise(q.packed_weight, 8, 24, idx.t().contiguous().t(), None, 1)
    want = _reference(q.packed_weight, 8, 24, idx.long(), None, 1, None, False, None)
    assert torch.equal(got, want)
    idx_nc = torch.randint(0, 30, (80,))[::2]
    off = torch.tensor([0, 10, 20, 30])
    assert torch.equal(ops.embedding_bag_rowwise(q.packed_weight, 8, 24, idx_nc, off, 0),
                       _reference(q.packed_weight, 8, 24, idx_nc, off, 0, None, False, None))


def test_empty_inputs():
    q = nnq.EmbeddingBag.from_float(_table(10, 8, 8))
    assert ops.embedding_bag_rowwise(q.packed_weight, 8, 8, torch.zeros(0, dtype=torch.long),
                                     torch.zeros(0, dtype=torch.long), 0).shape == (0, 8)
    out = ops.embedding_bag_rowwise(q.packed_weight, 8, 8, torch.zeros(0, dtype=torch.long),
                                    torch.tensor([0, 0]), 2)
    assert torch.equal(out, torch.zeros(2, 8))


def test_weights_match_torch_ao_quantization():
    emb = _table(40, 16, 4, seed=5)
    for bits, qc in ((8, tq.float_qparams_weight_only_qconfig), (4, tq.float_qparams_weight_only_qconfig_4bit)):
        emb.qconfig = qc
        q = nnq.EmbeddingBag.from_float(emb)
        ao_emb = nn.EmbeddingBag(40, 16)
        ao_emb.weight.data.copy_(emb.weight)
        ao_emb.qconfig = torch.ao.quantization.float_qparams_weight_only_qconfig if bits == 8 else \
            torch.ao.quantization.float_qparams_weight_only_qconfig_4bit
        ao = torch.ao.nn.quantized.EmbeddingBag.from_float(ao_emb)
        torch.testing.assert_close(q.dequantized_weight(), ao.weight().dequantize(), rtol=0, atol=1e-6)
        idx = torch.randint(0, 40, (60,))
        off = torch.tensor([0, 20, 30, 31])
        q.mode = "sum"  # torch.ao's quantized EmbeddingBag always sums, whatever its mode
        # torch.ao's 4-bit kernel rounds each row's scale and offset to float16.
        tol = dict(rtol=1e-5, atol=1e-5) if bits == 8 else dict(rtol=2e-3, atol=2e-2)
        torch.testing.assert_close(q(idx, off), ao(idx, off), **tol)
        deq = ao.weight().dequantize()
        for mode in ("mean", "max"):
            q.mode = mode
            torch.testing.assert_close(q(idx, off), F.embedding_bag(idx, deq, off, mode=mode), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bits", [8, 4])
def test_vs_torch_ao_rowwise_offsets_ops(bits):
    torch.manual_seed(bits)
    n, d = 200, 64
    w = torch.randn(n, d)
    if bits == 8:
        packed_ao = torch.ops.quantized.embedding_bag_byte_prepack(w)
        fn = torch.ops.quantized.embedding_bag_byte_rowwise_offsets
    else:
        packed_ao = torch.ops.quantized.embedding_bag_4bit_prepack(w)
        fn = torch.ops.quantized.embedding_bag_4bit_rowwise_offsets
    emb = nn.EmbeddingBag(n, d, mode="sum")
    emb.weight.data.copy_(w)
    emb.qconfig = tq.float_qparams_weight_only_qconfig if bits == 8 else tq.float_qparams_weight_only_qconfig_4bit
    q = nnq.EmbeddingBag.from_float(emb)
    idx = torch.randint(0, n, (400,))
    off = torch.arange(0, 400, 40)
    psw = torch.rand(400)
    ours = q(idx, off, per_sample_weights=psw)
    theirs = fn(packed_ao, idx, off, False, 0, False, psw, None, False)
    # Both quantize the same float table per row (torch.ao's 4-bit op keeps fp16 qparams): each
    # bag of 40 rows agrees within the quantization error of the row values.
    err = ((ours - theirs).norm() / theirs.norm()).item()
    assert err < (0.01 if bits == 8 else 0.12), err
    ref = F.embedding_bag(idx, w, off, mode="sum", per_sample_weights=psw)
    ours_err = ((ours - ref).norm() / ref.norm()).item()
    theirs_err = ((theirs - ref).norm() / ref.norm()).item()
    assert ours_err <= theirs_err * 1.05 + 1e-6, (ours_err, theirs_err)


def test_static_prepare_convert_flow_and_embedding():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 12)
            self.bag = nn.EmbeddingBag(100, 12, mode="mean", include_last_offset=True)
            self.fc = nn.Linear(12, 4)

        def forward(self, idx, off):
            return self.emb(idx).sum(1) + self.bag(idx.reshape(-1), off)

    torch.manual_seed(0)
    m = M().eval()
    m.emb.qconfig = tq.float_qparams_weight_only_qconfig
    m.bag.qconfig = tq.float_qparams_weight_only_qconfig_4bit
    p = tq.prepare(m)
    idx = torch.randint(0, 100, (5, 3))
    off = torch.arange(0, 16, 3)
    p(idx, off)
    c = tq.convert(p)
    assert type(c.emb) is nnq.Embedding and c.emb.bits == 8
    assert type(c.bag) is nnq.EmbeddingBag and c.bag.bits == 4
    assert type(c.fc) is nn.Linear
    out = c(idx, off)
    ref = m(idx, off)
    assert ((out - ref).norm() / ref.norm()) < 0.1
    e = c.emb(idx)
    assert e.shape == (5, 3, 12)
    assert torch.equal(e, c.emb.dequantized_weight()[idx])


def test_quantize_dynamic_with_float_qparams_qconfig():
    m = nn.Sequential(nn.EmbeddingBag(50, 8))
    q = tq.quantize_dynamic(m, {nn.EmbeddingBag: tq.float_qparams_weight_only_qconfig})
    assert type(q[0]) is nnq.EmbeddingBag
    with pytest.raises(ValueError, match="per_channel_affine_float_qparams"):
        tq.quantize_dynamic(m, {nn.EmbeddingBag})


def test_bounds_checked():
    q = nnq.EmbeddingBag.from_float(_table(10, 8, 8))
    for bad in (10, -1, 2 ** 40):
        with pytest.raises(RuntimeError, match=f"argument 'indices' holds {bad} at position 2, outside \\[0, 10\\)"):
            q(torch.tensor([1, 2, bad, 3]), torch.tensor([0, 2]))
    with pytest.raises(RuntimeError, match="offsets\\[0\\] has to be 0"):
        q(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(RuntimeError, match="argument 'offsets' must be non-decreasing"):
        q(torch.tensor([1, 2, 3]), torch.tensor([0, 2, 1]))
    with pytest.raises(RuntimeError, match="argument 'offsets' holds 9 at position 1, past the 3 indices"):
        q(torch.tensor([1, 2, 3]), torch.tensor([0, 9]))
    with pytest.raises(RuntimeError, match="argument 'indices' must be an int64 or int32"):
        q(torch.tensor([1.0, 2.0]), torch.tensor([0]))
    with pytest.raises(RuntimeError, match="per_sample_weights is only supported for mode='sum'"):
        q.mode = "mean"
        q(torch.tensor([1, 2]), torch.tensor([0]), per_sample_weights=torch.ones(2))
    with pytest.raises(RuntimeError, match="argument 'packed' has rows of"):
        ops.embedding_bag_rowwise(q.packed_weight, 4, 8, torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(RuntimeError, match="argument 'bits' must be 8 or 4"):
        ops.embedding_bag_rowwise(q.packed_weight, 2, 8, torch.tensor([1]), torch.tensor([0]))
    qe = nnq.Embedding.from_float(_table(10, 8, 8))
    with pytest.raises(RuntimeError, match="argument 'indices' holds 11"):
        qe(torch.tensor([[1, 11]]))


def test_state_dict_weights_only_and_sizes():
    emb = _table(1000, 64, 4)
    q = nnq.EmbeddingBag.from_float(emb)
    sd = q.state_dict()
    assert list(sd) == ["packed_weight"] and sd["packed_weight"].dtype == torch.uint8
    assert sd["packed_weight"].shape == (1000, 32 + 8)  # 4-bit: 8x smaller values + 8 bytes of qparams
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    q2 = nnq.EmbeddingBag(1000, 64, dtype=torch.quint4x2)
    q2.load_state_dict(torch.load(buf, weights_only=True))
    idx, off = torch.randint(0, 1000, (30,)), torch.tensor([0, 10])
    assert torch.equal(q(idx, off), q2(idx, off))


def test_pack_unpack_roundtrip():
    q = torch.randint(0, 256, (5, 7), dtype=torch.uint8)
    s, z = torch.rand(5) + 0.1, torch.randn(5) * 10
    p = pack_rowwise(q, s, z, 8, 7)
    q2, s2, z2 = unpack_rowwise(p, 8, 7)
    assert torch.equal(q2, q.long()) and torch.equal(s2, s) and torch.equal(z2, z)
    q4 = torch.randint(0, 256, (5, 4), dtype=torch.uint8)
    v, _, _ = unpack_rowwise(pack_rowwise(q4, s, z, 4, 7), 4, 7)
    assert torch.equal(v[:, 0], (q4[:, 0] & 15).long()) and torch.equal(v[:, 1], (q4[:, 0] >> 4).long())
