"""Row-wise quantized Embedding / EmbeddingBag: the embedding_bag_rowwise kernel (every CPU
variant) bit-exact against a plain-torch reference, against torch.ao's quantized embedding-bag
ops, the static prepare/convert flow with torch.ao's qconfigs, bounds checks, state dicts."""
import contextlib
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
    # Another dtype is refused, naming the key, rather than cast (a float 0.7 -> 0).
    with pytest.raises(RuntimeError, match=r"packed_weight: the quantized EmbeddingBag's packed_weight must be "
                                           r"torch.uint8, got dtype torch.float32"):
        q2.load_state_dict({"packed_weight": sd["packed_weight"].float()})
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


@contextlib.contextmanager
def _threads(k):
    previous = torch.get_num_threads()
    torch.set_num_threads(k)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _reference_batched(packed, bits, dim, indices, offsets, mode, psw, padding_idx):
    """_reference, vectorized over bags (entry k of every bag at once, k in order): the same
    float32 operations in the same order per element, for problems too large for the loop. On
    one thread: its many small ops would each open a parallel region otherwise."""
    with _threads(1):
        return _reference_batched_impl(packed, bits, dim, indices, offsets, mode, psw, padding_idx)


def _reference_batched_impl(packed, bits, dim, indices, offsets, mode, psw, padding_idx):
    q, s, z = unpack_rowwise(packed, bits, dim)
    table = (q.float() - z[:, None]) * s[:, None]
    n, nb = indices.numel(), offsets.numel()
    ends = torch.cat([offsets[1:], torch.tensor([n])])
    lengths = ends - offsets
    out = torch.zeros(nb, dim)
    count = torch.zeros(nb, dtype=torch.long)
    for k in range(int(lengths.max()) if nb else 0):
        live = lengths > k
        pos = offsets[live] + k
        r = indices[pos]
        keep = r != padding_idx if padding_idx is not None else torch.ones_like(r, dtype=torch.bool)
        bags = live.nonzero().squeeze(1)[keep]
        pos, r = pos[keep], r[keep]
        v = table[r]
        if mode == 2:
            first = count[bags] == 0
            out[bags] = torch.where(first[:, None] | (v > out[bags]), v, out[bags])
        else:
            out[bags] = out[bags] + (v * psw[pos][:, None] if psw is not None else v)
        count[bags] += 1
    if mode == 1:
        out = torch.where(count[:, None] > 0, out / count.clamp(min=1)[:, None].float(), out)
    return out


def _random_table(n, dim, bits, seed):
    """Packed rows with arbitrary float qparams (negative, fractional, large zero points; scales
    from 1e-3 to 10), not only those an observer gives."""
    g = torch.Generator().manual_seed(seed)
    data = (dim * bits + 7) // 8
    q = torch.randint(0, 256, (n, data), generator=g, dtype=torch.uint8)
    s = torch.exp(torch.empty(n).uniform_(-7, 2.3, generator=g))
    z = torch.randn(n, generator=g) * 100
    z[: n // 4] = torch.randint(0, 1 << bits, (n // 4,), generator=g).float() + 0.5  # ties with q - z
    return pack_rowwise(q, s, z, bits, dim)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dim", [16, 32, 48, 64, 80, 128, 136])
def test_kernel_bit_exact_random_qparams(isa, bits, dim):
    packed = _random_table(64, dim, bits, seed=dim * bits)
    g = torch.Generator().manual_seed(dim)
    idx = torch.randint(0, 64, (100,), generator=g)
    offsets = torch.tensor([0, 3, 3, 40, 41, 90])
    psw = torch.randn(100, generator=g)
    for mode in (0, 1, 2):
        for w in ([None, psw] if mode == 0 else [None]):
            for pad in (None, int(idx[5])):
                got = ops.embedding_bag_rowwise(packed, bits, dim, idx, offsets, mode, w, False, pad)
                want = _reference(packed, bits, dim, idx, offsets, mode, w, False, pad)
                assert torch.equal(got, want), (mode, w is not None, pad)


def test_batched_reference_matches_loop():
    packed = _random_table(30, 24, 8, seed=1)
    idx = torch.randint(0, 30, (50,))
    offsets = torch.tensor([0, 0, 7, 20, 21])
    psw = torch.randn(50)
    for mode, w, pad in ((0, None, None), (0, psw, 3), (1, None, 3), (2, None, None), (2, None, 3)):
        assert torch.equal(_reference_batched(packed, 8, 24, idx, offsets, mode, w, pad),
                           _reference(packed, 8, 24, idx, offsets, mode, w, False, pad))


def _on_threads(k, *args):
    # Only the op runs on k threads: the references' many small torch ops would each open a
    # parallel region, which on a loaded machine waits for its second thread.
    with _threads(k):
        return ops.embedding_bag_rowwise(*args)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dim", [64, 72])
def test_threads_split_by_indices_bit_exact(isa, bits, dim):
    # Enough work for two threads; bags of very different sizes (empty ones, one of 600), so
    # that splitting by indices and by bags differ; every bag must come out as on one thread.
    packed = _random_table(5000, dim, bits, seed=7)
    g = torch.Generator().manual_seed(bits + dim)
    sizes = torch.randint(0, 80, (300,), generator=g)
    sizes[10] = 600
    sizes[::17] = 0
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])
    n = int(sizes.sum())
    idx = torch.randint(0, 5000, (n,), generator=g)
    psw = torch.randn(n, generator=g)
    for mode, w, pad in ((0, None, None), (0, psw, int(idx[3])), (1, None, int(idx[3])), (2, None, None)):
        got = _on_threads(2, packed, bits, dim, idx, offsets, mode, w, False, pad)
        one = _on_threads(1, packed, bits, dim, idx, offsets, mode, w, False, pad)
        assert torch.equal(got, one)
        assert torch.equal(got, _reference_batched(packed, bits, dim, idx, offsets, mode, w, pad))
    # 2-D indices (bags of equal size), also split over the threads.
    idx2 = torch.randint(0, 5000, (200, 50), generator=g)
    got = _on_threads(2, packed, bits, dim, idx2, None, 0)
    assert torch.equal(got, _reference_batched(packed, bits, dim, idx2.reshape(-1), torch.arange(0, 10000, 50),
                                               0, None, None))


def test_bad_index_reported_at_first_position_with_threads(isa):
    packed = _random_table(1000, 64, 8, seed=2)
    idx = torch.randint(0, 1000, (20000,))
    offsets = torch.arange(0, 20000, 50)
    for positions in ([19990], [15000, 19990], [30, 19990], [0]):
        bad = idx.clone()
        for p, v in zip(positions, (1000, -5)):
            bad[p] = v
        with pytest.raises(RuntimeError, match=f"argument 'indices' holds {int(bad[positions[0]])} at position "
                                               f"{positions[0]}, outside"):
            _on_threads(2, packed, 8, 64, bad, offsets, 0)
    # Indices after the last bag (include_last_offset) belong to no bag and are still checked.
    short = torch.tensor([1, 2, 3, 1000])
    with pytest.raises(RuntimeError, match="argument 'indices' holds 1000 at position 3"):
        ops.embedding_bag_rowwise(packed, 8, 64, short, torch.tensor([0, 2, 3]), 0, None, True)
    # ... as are the indices of a table of zero columns.
    with pytest.raises(RuntimeError, match="argument 'indices' holds 1000 at position 3"):
        ops.embedding_bag_rowwise(_random_table(1000, 0, 8, seed=0), 8, 0, short, torch.tensor([0, 2]), 0)


def test_small_problem_one_thread_same_result(isa):
    # Below the per-thread work threshold the call runs on the calling thread: same results.
    packed = _random_table(200, 64, 4, seed=3)
    idx = torch.randint(0, 200, (300,))
    offsets = torch.arange(0, 300, 30)
    got = _on_threads(2, packed, 4, 64, idx, offsets, 0)
    assert torch.equal(got, _reference(packed, 4, 64, idx, offsets, 0, None, False, None))
