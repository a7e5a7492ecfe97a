"""Row-wise quantized Embedding / EmbeddingBag: the embedding_bag_rowwise kernel (every CPU
variant) bit-exact against a plain-torch reference, against torch.ao's quantized embedding-bag
ops, the static prepare/convert flow with torch.ao's qconfigs, bounds checks, state dicts."""
import copy
import ctypes
import ctypes.util
import io
import math
import pickle
import random
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F
from torch import nn

import torchquant as tq
from torchquant import reference
from torchquant.nn import quantized as nnq
from torchquant.nn.quantized_embedding import pack_rowwise, unpack_rowwise

from conftest import num_threads

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
    return reference.embedding_bag_rowwise(packed, bits, dim, indices, offsets, mode, psw, include_last_offset,
                                           padding_idx)


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
        idx = torch.randint(0, 40, (60,), generator=torch.Generator().manual_seed(bits))
        off = torch.tensor([0, 20, 30, 31])
        q.mode = "sum"  # torch.ao's quantized EmbeddingBag always sums, whatever its mode
        if bits == 8:
            # Two orders of each bag's 2n rounded terms (docs/sequence.md): within
            # 2 (2n + 1) 2^-24 sum(|q s| + |b|), plus the 1e-6 per row the tables may differ by.
            qv, sc, zp = unpack_rowwise(q.packed_weight, 8, 16)
            mag = qv[idx].double() * sc[idx].double()[:, None] + (zp * sc).double().abs()[idx][:, None]
            ends = off.tolist()[1:] + [60]
            bound = torch.stack([2 * (2 * (e - b0) + 1) * 2.0 ** -24 * mag[b0:e].sum(0) + 1e-6 * (e - b0)
                                 for b0, e in zip(off.tolist(), ends)])
            assert bool(((q(idx, off).double() - ao(idx, off).double()).abs() <= bound).all())
        else:
            # torch.ao's 4-bit kernel rounds each row's scale and offset to float16.
            torch.testing.assert_close(q(idx, off), ao(idx, off), rtol=2e-3, atol=2e-2)
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
    with pytest.raises(NotImplementedError, match="per_sample_weights is only supported for mode='sum'"):
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


_threads = num_threads


def _reference_batched(packed, bits, dim, indices, offsets, mode, psw, padding_idx):
    """The reference on one thread: its many small ops would each open a parallel region
    otherwise."""
    with _threads(1):
        return reference.embedding_bag_rowwise(packed, bits, dim, indices, offsets, mode, psw, False, padding_idx)


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


# ---- the 8-bit contract's fma: oracle against C, kernels on halfway cases, torch.ao on the same table ----

def _libm_fmaf():
    """C's fmaf through ctypes (the correctly rounded float32 fma of the C library)."""
    name = ctypes.util.find_library("m") or "libm.so.6"
    try:
        f = ctypes.CDLL(name).fmaf
    except (OSError, AttributeError):
        pytest.skip("no C library fmaf to compare with")
    f.restype = ctypes.c_float
    f.argtypes = [ctypes.c_float] * 3
    return lambda a, b, c: torch.tensor([f(x, y, z) for x, y, z in zip(a.tolist(), b.tolist(), c.tolist())],
                                        dtype=torch.float32)


def _halfway_cases(n, seed):
    """(q, s, acc) float32 [n] where q * s + acc lies within half a float64 ulp of a float32
    halfway point without being on it: fl64(q * s + acc) is that halfway point, so rounding it to
    float32 (to even) is wrong about half the time, and a correctly rounded fma is needed.

    acc = 2^E + k 2^(E - 23) (E = 30..32, a float32 whose halfway points are 2^(E - 24) apart);
    q * s = 2^(E - 24) + sign * c * 2^-23 with q * m = 2^(E - 1) + sign * c, s = m * 2^-23,
    q < 256, m < 2^24; all scaled by a random power of two."""
    base = []
    for e in (30, 31, 32):
        for sign in (1, -1):
            for c in range(1, 2 ** (e - 30) + 1 if e > 30 else 2):
                big = 2 ** (e - 1) + sign * c
                base += [(e, q, big // q) for q in range(1, 256) if big % q == 0 and big // q < 2 ** 24]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(base), (n,), generator=g).tolist()
    k = torch.randint(0, 2 ** 23, (n,), generator=g).tolist()
    j = torch.randint(-40, 20, (n,), generator=g).tolist()
    q = torch.tensor([float(base[p][1]) for p in pick])
    s = torch.tensor([math.ldexp(base[p][2], jj - 23) for p, jj in zip(pick, j)], dtype=torch.float32)
    acc = torch.tensor([math.ldexp(2 ** 23 + kk, base[p][0] - 23 + jj) for p, kk, jj in zip(pick, k, j)],
                       dtype=torch.float32)
    sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1  # both signs of the whole sum
    return q, s * sign, acc * sign


def test_fma32_is_correctly_rounded():
    fmaf = _libm_fmaf()
    g = torch.Generator().manual_seed(0)
    n = 4000
    a = torch.randn(n, generator=g) * torch.exp2(torch.randint(-40, 40, (n,), generator=g).float())
    b = torch.randn(n, generator=g)
    c = torch.randn(n, generator=g) * torch.exp2(torch.randint(-40, 40, (n,), generator=g).float())
    a[:100] = torch.randint(0, 256, (100,), generator=g).float()  # the kernels' q
    c[100:200] = -a[100:200] * b[100:200]  # cancellation: the product's rounding error alone
    c[200:210] = 0.0
    a[210:220] = torch.ldexp(torch.ones(10), torch.full((10,), -140))  # subnormal results
    got = reference.fma32(a, b, c)
    assert torch.equal(got.view(torch.int32), fmaf(a, b, c).view(torch.int32))
    q, s, acc = _halfway_cases(3000, seed=1)
    got = reference.fma32(q, s, acc)
    want = fmaf(q, s, acc)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    # These are the cases where rounding the float64 sum to float32 is wrong: the test can fail.
    naive = (q.double() * s.double() + acc.double()).float()
    assert int((naive != want).sum()) > 1000
    # Broadcasting, and a float64 product's exactness for any two float32 values.
    x = torch.tensor([[3.0], [0.1]])
    assert torch.equal(reference.fma32(x, torch.tensor([1.0 + 2 ** -23]), torch.tensor(-1.0)),
                       fmaf(x.reshape(-1), torch.full((2,), 1.0 + 2 ** -23), torch.full((2,), -1.0)).reshape(2, 1))


def _halfway_table(dim, seed):
    """Rows 2 j and 2 j + 1: all values 1 with scale acc_j, all values q_j with scale s_j (a
    few random values), zero points 0; the bag [2 j, 2 j + 1] sums fma(q_j, s_j, acc_j)."""
    q, s, acc = _halfway_cases(40, seed)
    g = torch.Generator().manual_seed(seed)
    vals = torch.ones(80, dim, dtype=torch.uint8)
    vals[1::2] = q.to(torch.uint8)[:, None]
    vals[1::2, ::5] = torch.randint(0, 256, (40, (dim + 4) // 5), generator=g, dtype=torch.uint8)
    scales = torch.stack([acc, s], 1).reshape(-1)
    return pack_rowwise(vals, scales, torch.zeros(80), 8, dim), q, s, acc


@pytest.mark.parametrize("dim", [5, 16, 37, 64, 80])
def test_kernel_halfway_fma_cases_bit_exact(isa, dim):
    fmaf = _libm_fmaf()
    packed, q, s, acc = _halfway_table(dim, seed=dim)
    idx = torch.arange(80)
    off = torch.arange(0, 80, 2)
    got = ops.embedding_bag_rowwise(packed, 8, dim, idx, off, 0)
    assert torch.equal(got, reference.embedding_bag_rowwise(packed, 8, dim, idx, off, 0))
    want = fmaf(q, s, acc)
    assert torch.equal(got[:, 1], want)  # column 1: q_j in every bag
    naive = (q.double() * s.double() + acc.double()).float()
    assert bool((naive != want).any())
    # Weights of 1 keep the scales; mean halves exactly; 2-D indices are the same bags.
    ones = torch.ones(80)
    assert torch.equal(ops.embedding_bag_rowwise(packed, 8, dim, idx, off, 0, ones), got)
    assert torch.equal(ops.embedding_bag_rowwise(packed, 8, dim, idx, off, 1), got / 2)
    assert torch.equal(ops.embedding_bag_rowwise(packed, 8, dim, idx.reshape(40, 2), None, 0), got)
    w = torch.randn(80)
    for mode, psw in ((0, w), (2, None)):
        assert torch.equal(ops.embedding_bag_rowwise(packed, 8, dim, idx, off, mode, psw),
                           reference.embedding_bag_rowwise(packed, 8, dim, idx, off, mode, psw))


@pytest.mark.parametrize("bits", [8, 4])
def test_embedding_lookup_is_row_value_within_bound_of_dequantized(isa, bits):
    dim = 37
    packed = _random_table(300, dim, bits, seed=11)
    qe = nnq.Embedding(300, dim, dtype=torch.quint8 if bits == 8 else torch.quint4x2)
    qe.packed_weight = packed
    idx = torch.randint(0, 300, (7, 9))
    values = reference.embedding_row_values(packed, bits, dim)
    assert torch.equal(qe(idx), values[idx])
    assert torch.equal(qe.dequantized_weight(), values)
    q, s, z = unpack_rowwise(packed, bits, dim)
    exact = (q.double() - z.double()[:, None]) * s.double()[:, None]
    if bits == 4:
        assert torch.equal(values, (q.float() - z[:, None]) * s[:, None])
        return
    # 8-bit: fma(q, s, b), b = -(z * s) rounded: half an ulp of |z s| plus half an ulp of the value.
    ulp = lambda t: torch.ldexp(torch.ones_like(t), torch.frexp(t.float()).exponent.double() - 24)  # noqa: E731
    bound = 0.5 * ulp((z * s).abs().double())[:, None] + 0.5 * ulp(values.double().abs())
    assert bool(((values.double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("weighted", [False, True])
def test_same_table_as_torch_ao_within_bound(isa, weighted):
    """torch.ao's 8-bit op on the same rows (its packed format holds a float32 scale and bias:
    ours, b = -(z * s)). fbgemm adds each row's bias to its accumulators (q * s + b per row),
    torchquant sums the biases apart: two orders of the same 2n terms, each rounded, so they
    differ by at most 2 (2n + 1) 2^-24 times the sum of the terms' magnitudes."""
    dim, n_rows = 64, 500
    packed = _random_table(n_rows, dim, 8, seed=21)
    q, s, z = unpack_rowwise(packed, 8, dim)
    b = -(z * s)
    ao_packed = torch.cat([q.to(torch.uint8), torch.stack([s, b], 1).contiguous().view(torch.uint8)], 1)
    g = torch.Generator().manual_seed(3)
    per = 40
    idx = torch.randint(0, n_rows, (per * 20,), generator=g)
    off = torch.arange(0, per * 20, per)
    psw = torch.rand(per * 20, generator=g) * 2 - 0.5 if weighted else None
    ours = ops.embedding_bag_rowwise(packed, 8, dim, idx, off, 0, psw)
    theirs = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(ao_packed, idx, off, False, 0, False, psw,
                                                                    None, False)
    w = psw.abs().double() if weighted else torch.ones(idx.numel(), dtype=torch.float64)
    mag = (q[idx].double() * s[idx].double()[:, None] + b[idx].double().abs()[:, None]) * w[:, None]
    bound = 2 * (2 * per + 1) * 2.0 ** -24 * mag.reshape(20, per, dim).sum(1)
    assert bool(((ours.double() - theirs.double()).abs() <= bound).all())
    assert not torch.equal(ours, theirs) or weighted  # a bound that is used, not a copy


def test_modules_take_the_typed_path_same_results_and_errors(monkeypatch):
    from torchquant import _fastcall

    calls = []
    typed = _fastcall.embedding_bag_rowwise
    monkeypatch.setattr(_fastcall, "embedding_bag_rowwise", lambda *a: calls.append(1) or typed(*a))
    bag = nnq.EmbeddingBag.from_float(_table(40, 24, 8, seed=4))
    bag.padding_idx = 3
    emb = nnq.Embedding.from_float(_table(40, 24, 4, seed=5))
    idx, off, psw = torch.randint(0, 40, (30,)), torch.tensor([0, 4, 4, 20]), torch.randn(30)
    outs = [bag(idx, off), bag(idx, off, per_sample_weights=psw), emb(idx.reshape(5, 6))]
    assert len(calls) == 3
    with pytest.raises(RuntimeError, match="argument 'indices' holds 40 at position 1") as typed_err:
        bag(torch.tensor([1, 40]), torch.tensor([0]))
    monkeypatch.setattr(_fastcall, "enabled", False)
    again = [bag(idx, off), bag(idx, off, per_sample_weights=psw), emb(idx.reshape(5, 6))]
    assert len(calls) == 4 and all(torch.equal(a, b) for a, b in zip(outs, again))
    with pytest.raises(RuntimeError) as ops_err:
        bag(torch.tensor([1, 40]), torch.tensor([0]))
    assert str(ops_err.value) == str(typed_err.value)
    # A tensor subclass goes through torch.ops (its __torch_function__ sees the call).
    monkeypatch.setattr(_fastcall, "enabled", True)

    class Sub(torch.Tensor):
        pass

    assert torch.equal(bag(idx.as_subclass(Sub), off), outs[0]) and len(calls) == 4


def test_bad_index_in_runs_of_small_bags(isa):
    # Indices are checked in chunks spanning many small bags: a bad one anywhere in a chunk, at a
    # chunk's edge or in the last partial chunk is reported at its position, before any row is read.
    packed = _random_table(1000, 64, 8, seed=4)
    idx = torch.randint(0, 1000, (5000,))
    offsets = torch.arange(0, 5000)
    for p in (0, 2047, 2048, 2049, 4095, 4999):
        bad = idx.clone()
        bad[p] = 1000 + p
        for threads in (1, 2):
            with pytest.raises(RuntimeError, match=f"argument 'indices' holds {1000 + p} at position {p}, outside"):
                _on_threads(threads, packed, 8, 64, bad, offsets, 0)
    got = _on_threads(2, packed, 8, 64, idx, offsets, 0)
    assert torch.equal(got, _reference(packed, 8, 64, idx, offsets, 0, None, False, None))


def test_streamed_copy():
    # A contiguous copy with the same values, whatever the input's layout; the input is untouched.
    ops_ = torch.ops.torchquant
    for x in (torch.arange(60, dtype=torch.uint8).reshape(6, 10)[:, ::3], torch.randn(3, 0), torch.randn(5, 7).t(),
              torch.randint(0, 255, (3 * 2 ** 20 + 17,), dtype=torch.uint8)):
        before = x.clone()
        y = ops_.streamed_copy(x)
        assert y.is_contiguous() and y.dtype == x.dtype and y.shape == x.shape and torch.equal(y, x)
        assert torch.equal(x, before) and (x.numel() == 0 or y.data_ptr() != x.data_ptr())
    m = ops_.streamed_copy(torch.empty(4, 3, device="meta"))
    assert m.device.type == "meta" and m.shape == (4, 3)


@pytest.mark.parametrize("hugepages", ["1", "0"])
def test_table_on_huge_pages(hugepages):
    """A table of 2 MiB and more sits at a 2 MiB-aligned address advised onto huge pages, after
    from_float and after load_state_dict (TORCHQUANT_HUGEPAGES=0: ordinary memory; read once per
    process, so each runs in a fresh one); lookups are the same either way."""
    code = """
import torch, torchquant as tq
from torch import nn
torch.manual_seed(0)
emb = nn.EmbeddingBag(40000, 64, mode="sum")
emb.qconfig = tq.float_qparams_weight_only_qconfig
q = tq.nn.quantized.EmbeddingBag.from_float(emb)
q2 = tq.nn.quantized.EmbeddingBag(40000, 64)
q2.load_state_dict(q.state_dict())
idx, off = torch.randint(0, 40000, (800,)), torch.arange(0, 800, 10)
assert torch.equal(q(idx, off), q2(idx, off))
assert torch.equal(q(idx, off), tq.reference.embedding_bag_rowwise(q.packed_weight, 8, 64, idx, off))
print(int(q.packed_weight.data_ptr() % (2 << 20) == 0), int(q2.packed_weight.data_ptr() % (2 << 20) == 0))
"""
    import os
    import subprocess
    import sys
    env = dict(os.environ, TORCHQUANT_HUGEPAGES=hugepages)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    aligned = r.stdout.split()
    if hugepages == "1" and sys.platform.startswith("linux"):
        assert aligned == ["1", "1"], r.stdout


@pytest.mark.parametrize("dim", [16, 64, 72])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_bags_of_one_row_bit_exact(isa, dim, mode):
    # Bags of one row (one-hot features) take a path of their own for 8-bit rows (unweighted, no
    # padding_idx, dim a multiple of the vector width); with weights, padding_idx, 4-bit rows or
    # other widths the general one. Same bits as the reference either way, mixed with longer bags,
    # with offsets and as 2-d [bags, 1] indices; split over two threads, the same bits as on one.
    for bits in (8, 4):
        emb = _table(300, dim, bits, seed=dim + bits)
        q = nnq.EmbeddingBag.from_float(emb)
        g = torch.Generator().manual_seed(dim * 3 + mode)
        idx = torch.randint(0, 300, (400,), generator=g)
        idx[10] = idx[11] = 0  # the constant row
        ones = torch.arange(0, 400)
        mixed = torch.cat([torch.arange(0, 300), torch.tensor([300, 303, 310, 350])])
        cases = [(idx, ones, None, None), (idx, mixed, None, None), (idx, ones, None, int(idx[5])),
                 (idx[:200].reshape(-1, 1), None, None, None)]
        if mode == 0:
            cases.append((idx, ones, torch.randn(400, generator=g), None))
        for ix, off, psw, pad in cases:
            got = _on_threads(1, q.packed_weight, bits, dim, ix, off, mode, psw, False, pad)
            want = _reference(q.packed_weight, bits, dim, ix, off, mode, psw, False, pad)
            assert torch.equal(got, want), (bits, off is None, psw is not None, pad)
        big = torch.randint(0, 300, (4000,), generator=g)  # enough work for two threads
        one = _on_threads(1, q.packed_weight, bits, dim, big, torch.arange(0, 4000), mode)
        two = _on_threads(2, q.packed_weight, bits, dim, big, torch.arange(0, 4000), mode)
        assert torch.equal(one, two), bits


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_kernel_random_bags_bit_exact(isa, seed):
    """Property test over random tables (any dim, arbitrary float qparams), bag sizes (empty
    bags, one-row bags, long ones, none at all), modes, per-sample weights, padding_idx and
    include_last_offset, on 1 or 2 threads: bit-identical to the reference on each ISA. The
    choices come from the drawn seed (uniformly: hypothesis's own draws of many booleans and
    small lists lean to the first choice and to empty lists, and missed mean bags with
    padding_idx entirely)."""
    r = random.Random(seed)
    bits = r.choice([8, 4])
    dim = r.choice([16, 32, 48, 64, 72, 128]) if r.random() < 0.5 else r.randint(1, 150)
    rows = r.randint(1, 400)
    sizes = [r.choice([0, 1, 1, 2, 3, 4, 7, 16, 40, 80]) for _ in range(r.randint(0, 60))]
    mode, weighted, pad, last = r.choice([0, 1, 2]), r.random() < 0.5, r.random() < 0.5, r.random() < 0.5
    threads = r.choice([1, 2])
    packed = _random_table(rows, dim, bits, seed=seed % 2**31)
    g = torch.Generator().manual_seed(seed % 2**31 + 1)
    n = sum(sizes)
    idx = torch.randint(0, rows, (n,), generator=g)
    offsets = torch.tensor([0] + sizes, dtype=torch.long).cumsum(0)
    offsets = offsets if last else offsets[:-1]
    psw = torch.randn(n, generator=g) if weighted and mode == 0 else None
    pad_idx = int(idx[0]) if pad and n > 0 else None
    got = _on_threads(threads, packed, bits, dim, idx, offsets, mode, psw, last, pad_idx)
    with _threads(1):
        want = _reference(packed, bits, dim, idx, offsets, mode, psw, last, pad_idx)
    assert torch.equal(got, want), (bits, dim, rows, sizes, mode, weighted, pad, last, threads)


class _EmbModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 16, padding_idx=3)
        self.bag = nn.EmbeddingBag(50, 16, mode="sum")
        self.quant = tq.QuantStub()
        self.fc = nn.Linear(32, 4)
        self.dequant = tq.DeQuantStub()

    def forward(self, i, j, o, w=None):
        x = torch.cat([self.emb(i).mean(1), self.bag(j, o, per_sample_weights=w)], 1)
        return self.dequant(self.fc(self.quant(x)))


@pytest.mark.parametrize("bits", [8, 4])
def test_embedding_qat_flow_matches_torch_ao(bits):
    # default_embedding_qat_qconfig + get_embedding_qat_module_mappings(): the tables train with
    # per-row fake-quantized rows (torch.ao's nnqat.Embedding / EmbeddingBag, the same forward bit
    # for bit), and convert gives the weight-only quantized modules with torch.ao's rows.
    torch.manual_seed(bits)
    ours_qc = tq.default_embedding_qat_qconfig if bits == 8 else tq.default_embedding_qat_qconfig_4bit
    ao_qc = torch.ao.quantization.default_embedding_qat_qconfig if bits == 8 else \
        torch.ao.quantization.default_embedding_qat_qconfig_4bit
    model = _EmbModel().train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    model.emb.qconfig = model.bag.qconfig = ours_qc
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = tq.prepare_qat(model, mapping=tq.get_embedding_qat_module_mappings())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert isinstance(prepared.emb, tq.nn.qat.Embedding) and isinstance(prepared.bag, tq.nn.qat.EmbeddingBag)
    assert not hasattr(prepared.emb, "activation_post_process")  # the float lookups are not observed
    ao_emb = torch.ao.nn.qat.Embedding(100, 16, padding_idx=3, qconfig=ao_qc)
    ao_bag = torch.ao.nn.qat.EmbeddingBag(50, 16, mode="sum", qconfig=ao_qc)
    i = torch.randint(0, 100, (8, 5))
    i[0, 0] = 3
    j = torch.randint(0, 50, (20,))
    o = torch.tensor([0, 5, 9, 12, 15, 16, 18, 19])
    psw = torch.rand(20)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.5)
    for _ in range(3):
        with torch.no_grad():
            ao_emb.weight.copy_(prepared.emb.weight)
            ao_bag.weight.copy_(prepared.bag.weight)
        assert torch.equal(prepared.emb(i), ao_emb(i))
        assert torch.equal(prepared.bag(j, o, per_sample_weights=psw), ao_bag(j, o, per_sample_weights=psw))
        loss = prepared(i, j, o, psw).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        assert prepared.emb.weight.grad.abs().sum() > 0 and prepared.bag.weight.grad.abs().sum() > 0
        opt.step()
    prepared.eval()
    fq_emb, fq_bag = prepared.emb(i), prepared.bag(j, o, per_sample_weights=psw)
    with torch.no_grad():
        ao_emb.weight.copy_(prepared.emb.weight)
        ao_bag.weight.copy_(prepared.bag.weight)
    ao_emb(i), ao_bag(j, o)  # the fake-quants observe the final tables, as ours did
    converted = tq.convert(prepared)
    assert isinstance(converted.emb, nnq.Embedding) and isinstance(converted.bag, nnq.EmbeddingBag)
    assert converted.emb.bits == bits and converted.bag.bits == bits
    ao_q_emb = torch.ao.nn.quantized.Embedding.from_float(ao_emb)
    ao_q_bag = torch.ao.nn.quantized.EmbeddingBag.from_float(ao_bag)
    for q, aoq in ((converted.emb, ao_q_emb), (converted.bag, ao_q_bag)):
        aw = aoq.weight()
        qv, sc, zp = unpack_rowwise(q.packed_weight, bits, 16)
        assert torch.equal(sc, aw.q_per_channel_scales().float())
        assert torch.equal(zp, aw.q_per_channel_zero_points().float())
        raw = aw.int_repr().to(torch.int64)
        if bits == 4:  # torch.ao's quint4x2 rows: two values per byte, the first in the low nibble
            raw = torch.stack([raw & 15, raw >> 4], 1).reshape(qv.shape[0], -1)[:, :16]
        assert torch.equal(qv, raw)
        torch.testing.assert_close(q.dequantized_weight(), aw.dequantize(), rtol=0, atol=1e-6)
    # the int8 / int4 lookups are what training saw (within the 8-bit rows' fma rounding)
    torch.testing.assert_close(converted.emb(i), fq_emb, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(converted.bag(j, o, per_sample_weights=psw), fq_bag, rtol=1e-5, atol=1e-5)
    out = converted(i, j, o, psw)
    assert out.shape == (8, 4) and torch.isfinite(out).all()


def test_embedding_qat_default_mapping_and_bad_qconfig():
    # Without the embedding mapping the tables train in float and quantize at convert (torch.ao's
    # default QAT mapping has no embeddings either); a QAT embedding with an integer-qparams
    # weight fake-quant is refused, naming the qscheme.
    model = _EmbModel().train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    model.emb.qconfig = model.bag.qconfig = tq.default_embedding_qat_qconfig
    prepared = tq.prepare_qat(model)
    assert type(prepared.emb) is nn.Embedding and type(prepared.bag) is nn.EmbeddingBag
    prepared(torch.randint(0, 100, (4, 3)), torch.randint(0, 50, (6,)), torch.tensor([0, 2, 3, 5]))
    converted = tq.convert(prepared.eval())
    assert isinstance(converted.emb, nnq.Embedding) and converted.emb.bits == 8
    with pytest.raises(ValueError, match="per_channel_affine_float_qparams"):
        tq.nn.qat.Embedding(10, 4, qconfig=tq.get_default_qat_qconfig("x86"))
    bad = nn.EmbeddingBag(10, 4)
    bad.qconfig = tq.get_default_qat_qconfig("x86")
    with pytest.raises(ValueError, match="per_channel_affine_float_qparams"):
        tq.nn.qat.EmbeddingBag.from_float(bad)
    with pytest.raises(TypeError, match="takes an nn.Embedding"):
        tq.nn.qat.Embedding.from_float(bad)
    back = tq.nn.qat.Embedding.from_float(model.emb).to_float()
    assert type(back) is nn.Embedding and back.weight is model.emb.weight and back.padding_idx == 3


def test_embedding_qat_review_cases():
    # convert with torch.ao-style get_embedding_static_quant_module_mappings() takes the QAT tables
    # too; an observer (not a fake-quant) and max_norm are refused at prepare_qat, naming the module.
    model = _EmbModel().train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    model.emb.qconfig = model.bag.qconfig = tq.default_embedding_qat_qconfig
    prepared = tq.prepare_qat(model, mapping=tq.get_embedding_qat_module_mappings())
    prepared(torch.randint(0, 100, (4, 3)), torch.randint(0, 50, (6,)), torch.tensor([0, 2, 3, 5]))
    converted = tq.convert(prepared.eval(), mapping=tq.get_embedding_static_quant_module_mappings())
    assert isinstance(converted.emb, nnq.Embedding) and isinstance(converted.bag, nnq.EmbeddingBag)
    assert isinstance(converted.fc, nnq.Linear)
    observer_only = _EmbModel().train()
    observer_only.emb.qconfig = tq.float_qparams_weight_only_qconfig
    with pytest.raises(ValueError, match=r"emb: QAT needs a weight FakeQuantize .*PerChannelMinMaxObserver"):
        tq.prepare_qat(observer_only, mapping=tq.get_embedding_qat_module_mappings())
    normed = nn.Sequential(nn.Embedding(10, 4, max_norm=1.0)).train()
    normed[0].qconfig = tq.default_embedding_qat_qconfig
    with pytest.raises(ValueError, match="0: max_norm"):
        tq.prepare_qat(normed, mapping=tq.get_embedding_qat_module_mappings())
    # torch.ao's argument order: qconfig before device and dtype
    bag = tq.nn.qat.EmbeddingBag(10, 4, None, 2.0, False, "sum", False, None, False, None,
                                 tq.default_embedding_qat_qconfig)
    assert bag.qconfig is tq.default_embedding_qat_qconfig


@pytest.mark.parametrize("bits_from,dim_from,bits_to,dim_to", [(8, 8, 8, 6), (8, 6, 8, 8), (4, 8, 4, 7), (8, 8, 4, 16)])
def test_state_dict_of_another_width_or_bits_with_the_same_row_stride_is_refused(bits_from, dim_from, bits_to, dim_to):
    # Widths that pack to the same row stride would load silently (columns dropped or read from
    # padding): the state dict's metadata names its rows' width and bits, through torch.save too.
    dtypes = {8: torch.quint8, 4: torch.quint4x2}
    src = nnq.EmbeddingBag(10, dim_from, dtype=dtypes[bits_from])
    dst = nnq.EmbeddingBag(10, dim_to, dtype=dtypes[bits_to])
    assert src.packed_weight.shape == dst.packed_weight.shape
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    for sd in (src.state_dict(), torch.load(buf, weights_only=True)):
        before = dst.packed_weight.clone()
        with pytest.raises(RuntimeError, match="size mismatch for packed_weight: its rows hold"):
            dst.load_state_dict(sd)
        assert torch.equal(dst.packed_weight, before)
    same = nnq.EmbeddingBag(10, dim_from, dtype=dtypes[bits_from])
    same.load_state_dict(src.state_dict())
    same.load_state_dict(dict(src.state_dict()))  # no metadata (built by hand): taken by its shape
    emb = nnq.Embedding(10, dim_from, dtype=dtypes[bits_from])
    emb.load_state_dict(src.state_dict())


def test_nan_and_inf_in_a_float_table_and_huge_embedding_dim():
    import torchquant as tq
    ops = torch.ops.torchquant
    for dtype, bits in ((torch.quint8, 8), (torch.quint4x2, 4)):
        m = torch.nn.EmbeddingBag(3, 4, mode="sum")
        with torch.no_grad():
            m.weight.copy_(torch.tensor([[-1.0, 0.5, float("nan"), 1.0], [-1.0, 0.5, float("inf"), 1.0],
                                         [0.1, 0.2, 0.3, 0.4]]))
        with pytest.warns(RuntimeWarning):
            q = tq.quantize_dynamic(torch.nn.Sequential(m), {torch.nn.EmbeddingBag}, dtype=dtype)[0]
        w = q.dequantized_weight()
        step = 2.0 / ((1 << bits) - 1)
        assert abs(float(w[0, 2])) <= step / 2 + 1e-6  # NaN: the code of 0.0 (it was the row's minimum)
        assert torch.allclose(w[1, 2], w[1].max())  # +inf saturates at the row's maximum
    packed = torch.zeros(4, 16, dtype=torch.uint8)
    for fake in (False, True):
        args = (packed, 8, 2 ** 61, torch.tensor([0, 1]), torch.tensor([0]))
        with pytest.raises(RuntimeError, match=r"'embedding_dim' must lie in \[0, 2\^40\], got 2305843009213693952"):
            if fake:
                with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
                    ops.embedding_bag_rowwise(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
            else:
                ops.embedding_bag_rowwise(*args)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:  # the fake kernel's checks are the kernel's
        with pytest.raises(RuntimeError, match="rows of 16 bytes, but 8-bit rows of embedding_dim=9 take 20"):
            ops.embedding_bag_rowwise(mode.from_tensor(packed), 8, 9, mode.from_tensor(torch.tensor([0])),
                                      mode.from_tensor(torch.tensor([0])))


@pytest.mark.parametrize("bits", [8, 4])
def test_constructor_weight_and_padding_idx_are_taken_or_refused(bits):
    from torchquant.nn import quantized as nnq_
    dtype = torch.quint8 if bits == 8 else torch.quint4x2
    qc = tq.float_qparams_weight_only_qconfig if bits == 8 else tq.float_qparams_weight_only_qconfig_4bit
    torch.manual_seed(0)
    w = torch.randn(10, 8)
    idx = torch.tensor([1, 7, 3])
    for cls, float_cls in ((nnq_.Embedding, nn.Embedding), (nnq_.EmbeddingBag, nn.EmbeddingBag)):
        float_mod = float_cls(10, 8, _weight=w.clone())
        float_mod.qconfig = qc
        q = cls(10, 8, _weight=w, dtype=dtype)  # quantized per row, as from_float quantizes the float module
        assert torch.equal(q.packed_weight, cls.from_float(float_mod).packed_weight)
        args = (idx,) if cls is nnq_.Embedding else (idx, torch.tensor([0]))
        assert q(*args).abs().sum() > 0
        # torch.ao's form: a torch quantized table (its rows' own qparams), requantized per row
        lo, hi = w.min(1).values.clamp(max=0), w.max(1).values.clamp(min=0)
        scale = (hi - lo) / 255
        torch_q = torch.quantize_per_channel(w, scale, (-lo / scale).round().long(), 0, torch.quint8)
        rows = cls(10, 8, _weight=torch_q, dtype=dtype).dequantized_weight()
        step = (torch_q.dequantize().amax(1) - torch_q.dequantize().amin(1)) / ((1 << bits) - 1)
        assert bool(((rows - torch_q.dequantize()).abs() <= step[:, None] / 2 + 1e-6).all())
        with pytest.raises(ValueError, match=r"'_weight': shape \[5, 3\] does not match .* \[10, 8\]"):
            cls(10, 8, _weight=torch.randn(5, 3), dtype=dtype)
        with pytest.raises(TypeError, match="'_weight' must be a floating-point"):
            cls(10, 8, _weight=torch.zeros(10, 8, dtype=torch.long), dtype=dtype)
        for bad in (10, -11):
            with pytest.raises(ValueError, match=f"padding_idx must be within num_embeddings .*got {bad}"):
                cls(10, 8, padding_idx=bad, dtype=dtype)
        with pytest.raises(TypeError, match="'padding_idx' must be an int"):
            cls(10, 8, padding_idx=2.0, dtype=dtype)
        assert cls(10, 8, padding_idx=-1, dtype=dtype).padding_idx == 9
        assert cls(10, 8, padding_idx=__import__("numpy").int64(3), dtype=dtype).padding_idx == 3


def test_load_refuses_rows_whose_scale_or_zero_point_is_not_finite():
    e = tq.quantize_dynamic(nn.Sequential(nn.EmbeddingBag(10, 8)), dtype=torch.quint8)
    before = e.state_dict()["0.packed_weight"].clone()
    sd = e.state_dict()
    bad = sd["0.packed_weight"].clone()
    bad[3, -8:] = 255  # NaN scale and zero point bytes: every lookup of row 3 was NaN
    bad[7, -4:] = torch.tensor([float("inf")]).view(torch.uint8)
    with pytest.raises(RuntimeError, match=r"0.packed_weight: the scale / zero point of row\(s\) \[3, 7\] .* not finite"):
        e.load_state_dict({"0.packed_weight": bad})
    assert torch.equal(e[0].packed_weight, before)


@pytest.mark.parametrize("row,match", [
    ([-3e38, 0.0, 1.0, 3e38], r"row\(s\) 0 of the embedding weight \(1 of 3\) span a range float32 cannot hold"),
    ([float("nan"), float("inf"), float("-inf"), float("nan")],
     r"row\(s\) 0 of the embedding weight \(1 of 3\) have no finite value"),
])
def test_convert_refuses_rows_without_finite_qparams(row, match):
    # The finite row that overflows converted to a scale of inf (NaN lookups, and a state dict its
    # own load refused); the non-finite one was refused with advice to run calibration data.
    e = nn.Embedding(3, 4)
    with torch.no_grad():
        e.weight[0] = torch.tensor(row)
    e.qconfig = tq.float_qparams_weight_only_qconfig
    with pytest.raises(ValueError, match=match):
        tq.convert(tq.prepare(nn.Sequential(e)))


@pytest.mark.parametrize("cls", [nn.Embedding, nn.EmbeddingBag])
def test_a_table_converted_alone_is_quantized(cls):
    # convert swapped only children (torch.ao's rule): a bare table came back in float.
    torch.manual_seed(0)
    e = cls(20, 8)
    e.qconfig = tq.float_qparams_weight_only_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = tq.convert(tq.prepare(e))
    inside = tq.convert(tq.prepare(nn.Sequential(e)))[0]
    assert type(q) is type(inside) and torch.equal(q.packed_weight, inside.packed_weight)
    assert type(e) is cls  # the given table is left as it was


@pytest.mark.parametrize("bits,dim", [(8, 5), (4, 6), (4, 5)])
@pytest.mark.parametrize("cls", ["Embedding", "EmbeddingBag"])
def test_weight_and_set_weight_as_torch_ao(cls, bits, dim):
    import torch.ao.nn.quantized as aonnq
    import torch.ao.quantization as aoq

    torch.manual_seed(0)
    qc, aqc = ((tq.float_qparams_weight_only_qconfig, aoq.float_qparams_weight_only_qconfig) if bits == 8 else
               (tq.float_qparams_weight_only_qconfig_4bit, aoq.float_qparams_weight_only_qconfig_4bit))
    e = getattr(nn, cls)(7, dim)
    e.qconfig = qc
    q = tq.convert(tq.prepare(e))
    e.qconfig = aqc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation of its quantized tensors
        ao = getattr(aonnq, cls).from_float(e)  # (kept alive: its 4-bit weight() reads the module's memory)
        aw, w = ao.weight(), q.weight()
    assert w.dtype == aw.dtype and w.qscheme() == torch.per_channel_affine_float_qparams and list(w.shape) == [7, dim]
    assert torch.allclose(w.dequantize(), q.dequantized_weight(), rtol=1e-6, atol=1e-6)
    if dim % 2 == 0 or bits == 8:  # torch.ao pads odd 4-bit rows with a column of its own
        assert torch.equal(w.dequantize(), aw.dequantize())
    other = getattr(nn, cls)(7, dim)
    other.qconfig = qc
    other = tq.convert(tq.prepare(other))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other.set_weight(aw)
    assert torch.allclose(other.dequantized_weight(), aw.dequantize()[:, :dim], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"argument 'w' must be a torch.quint"):
        other.set_weight(torch.randn(7, dim))


class _PositionTable(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos, self.fc = nn.Embedding(16, 32), nn.Linear(32, 32)

    def forward(self, x):
        return self.fc(x + self.pos(torch.arange(x.shape[1])))


def test_a_table_under_a_static_qconfig_stays_float_from_prepare():
    # A model-wide static qconfig reached the position table: prepare and calibration passed,
    # convert raised that embedding quantization needs float_qparams_weight_only_qconfig.
    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), _PositionTable(), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    with pytest.warns(UserWarning, match=r"these embedding tables stay in float: .* 1\.pos \(Embedding\)"):
        p = tq.prepare(m)
    for _ in range(4):
        p(torch.randn(2, 10, 32))
    q = tq.convert(p)
    assert type(q[1].pos) is nn.Embedding and type(q[1].fc) is nnq.Linear
    x = torch.randn(2, 10, 32)
    want = m(x)
    assert float(10 * torch.log10(want.pow(2).sum() / (want - q(x)).pow(2).sum())) > 25


# ---- output dtype: the quantized tables return the float table's dtype ----
class _TableHead(nn.Module):
    def __init__(self, bag):
        super().__init__()
        self.table = nn.EmbeddingBag(100, 16, mode="sum") if bag else nn.Embedding(100, 16)
        self.head = nn.Linear(16, 8)

    def forward(self, ids):
        return self.head(self.table(ids))


def _static_table(m):
    m = copy.deepcopy(m)
    m.table.qconfig = tq.float_qparams_weight_only_qconfig
    return tq.convert(tq.prepare(m))


def _dynamic_table(m):
    return tq.quantize_dynamic(copy.deepcopy(m), {nn.Embedding: tq.float_qparams_weight_only_qconfig,
                                                  nn.EmbeddingBag: tq.float_qparams_weight_only_qconfig,
                                                  nn.Linear: tq.default_dynamic_qconfig})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bag", [False, True])
def test_quantized_tables_return_the_float_tables_dtype(bag, dtype):
    # They returned float32: the float16 head after a static table raised "mat1 and mat2 must have
    # the same dtype, but got Float and Half", and quantize_dynamic's model returned float32.
    torch.manual_seed(0)
    model = _TableHead(bag).eval().to(dtype)
    model32 = copy.deepcopy(model).float()  # the same values in float32
    ids = torch.randint(0, 100, (4, 5))
    for flow in (_static_table, _dynamic_table):
        q, q32 = flow(model), flow(model32)
        assert q.table.output_dtype == dtype and q32.table.output_dtype is None
        assert torch.equal(q.table.packed_weight, q32.table.packed_weight)
        rows = q.table(ids)
        # the float32 flow's rows, cast once
        assert rows.dtype == dtype and torch.equal(rows, q32.table(ids).to(dtype))
        y = q(ids)
        assert y.dtype == dtype
        # the head (float in the model's dtype, or dynamic int8) on those rows
        assert torch.equal(y, (model.head if flow is _static_table else q32.head)(rows))
        want = q32(ids).double()
        assert (y.double() - want).abs().max() <= 0.05 * want.abs().max()
        if bag:  # per_sample_weights in the model's dtype: taken as float32
            psw = torch.rand(4, 5).to(dtype)
            out = q.table(ids, per_sample_weights=psw)
            assert out.dtype == dtype and torch.equal(out, q32.table(ids, per_sample_weights=psw.float()).to(dtype))


@pytest.mark.parametrize("bag", [False, True])
def test_quantized_table_dtype_follows_casts_and_is_kept_by_copies(bag):
    torch.manual_seed(0)
    q = _static_table(_TableHead(bag).eval())
    ids = torch.randint(0, 100, (4, 5))
    want = q.table(ids)
    assert want.dtype == torch.float32 and q.table.output_dtype is None
    packed, sd = q.table.packed_weight.clone(), q.state_dict()
    assert list(sd) == ["table.packed_weight", "head.weight", "head.bias"]
    for cast, dtype in ((lambda m: m.half(), torch.float16), (lambda m: m.to(torch.bfloat16), torch.bfloat16),
                        (lambda m: m.double(), torch.float64), (lambda m: m.float(), torch.float32)):
        cast(q)
        # the table (its rows' float32 scales and zero points in it) is not cast, nor the state dict
        assert torch.equal(q.table.packed_weight, packed) and list(q.state_dict()) == list(sd)
        assert torch.equal(q.table(ids), want.to(dtype)) and q(ids).dtype == dtype
    q.half()
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    for c in (copy.deepcopy(q), pickle.loads(pickle.dumps(q)), torch.load(buf, weights_only=False)):
        assert c.table.output_dtype == torch.float16 and torch.equal(c(ids), q(ids)) and c(ids).dtype == torch.float16
    # the float32 model's state dict loads strictly into the float16 one, and with weights_only
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    q.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    assert torch.equal(q.table(ids), want.half())
    # a module pickled before the dtype was a buffer returns float32, as it did
    old = copy.deepcopy(q.table)
    del old._buffers["_output_dtype"]
    back = pickle.loads(pickle.dumps(old))
    assert back.output_dtype is None and torch.equal(back(ids), want)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("n,d", [(0, 6), (5, 0), (0, 0), (0, 5)])
@pytest.mark.parametrize("cls,kw", [(nn.Embedding, {}), (nn.EmbeddingBag, {"mode": "sum"}),
                                    (nn.EmbeddingBag, {"mode": "mean"}), (nn.EmbeddingBag, {"mode": "max"})])
def test_empty_tables_convert_and_run_as_the_float_ones(bits, n, d, cls, kw):
    # A table of 0 rows or of rows of 0 values was refused by from_float / convert /
    # quantize_dynamic ("observed no finite data"); the float module and the constructor take it.
    qc = tq.float_qparams_weight_only_qconfig if bits == 8 else tq.float_qparams_weight_only_qconfig_4bit
    f = cls(n, d, **kw)
    f.qconfig = qc
    if cls is nn.Embedding:
        args = (torch.tensor([], dtype=torch.long) if n == 0 else torch.tensor([[1, 2], [4, 0]]),)
    else:
        args = (torch.tensor([], dtype=torch.long), torch.tensor([0, 0])) if n == 0 else \
            (torch.tensor([1, 2, 0]), torch.tensor([0, 1]))
    qcls = getattr(nnq, cls.__name__)
    made = [qcls.from_float(f), tq.convert(tq.prepare(nn.Sequential(f)))[0],
            tq.quantize_dynamic(nn.Sequential(f), {cls: qc})[0]]
    built = qcls(n, d, dtype=made[0].dtype, **kw)
    try:
        want = f(*args)
    except RuntimeError:  # (torch's sum / mean bags of rows of 0 values fail: "Expected i < index_size")
        want = built(*args)
        assert (cls, kw.get("mode"), d) in ((nn.EmbeddingBag, "sum", 0), (nn.EmbeddingBag, "mean", 0))
    for q in made:
        assert type(q) is qcls and q.bits == bits
        assert q.packed_weight.shape == built.packed_weight.shape
        out = q(*args)
        assert out.shape == want.shape and out.dtype == want.dtype and torch.equal(out, want)
        assert q.dequantized_weight().shape == (n, d) and list(q.weight().shape) == [n, d]
        assert q.qweight.shape == (n, d) and q.weight_scale.shape == (n,)
        built.load_state_dict(q.state_dict())  # (its own load takes it)
        assert torch.equal(built(*args), out)


@pytest.mark.parametrize("cls", [nnq.Embedding, nnq.EmbeddingBag])
def test_negative_sizes_are_refused_at_construction(cls):
    # A negative embedding_dim was accepted (the error came at the first lookup); nn.Embedding
    # refuses it at construction with a RuntimeError.
    with pytest.raises(RuntimeError, match="argument 'embedding_dim' must be non-negative, got -4"):
        cls(3, -4)
    with pytest.raises(RuntimeError, match="argument 'num_embeddings' must be non-negative, got -3"):
        cls(-3, 4)
    for bad in ((3, -4), (-3, 4)):
        with pytest.raises(RuntimeError):
            getattr(nn, cls.__name__)(*bad)


@pytest.mark.parametrize("bits", [8, 4])
def test_bag_argument_errors_have_torchs_exception_types(bits):
    # They were RuntimeErrors from the kernel; nn.EmbeddingBag raises these types.
    cases = [
        ("max", (torch.tensor([1, 2]), torch.tensor([0, 1]), torch.rand(2)), NotImplementedError,
         "per_sample_weights is only supported for mode='sum'"),
        ("mean", (torch.tensor([[1, 2]]), None, torch.rand(1, 2)), NotImplementedError,
         "per_sample_weights is only supported for mode='sum'"),
        ("sum", (torch.tensor([1, 2]), torch.tensor([[0, 1]])), ValueError, "offsets has to be a 1D Tensor"),
        ("sum", (torch.tensor([1, 2]), torch.tensor([0, 1]), torch.rand(3)), ValueError,
         r"per_sample_weights \(torch.Size\(\[3\]\)\) is not None, then it must have the same shape"),
        ("sum", (torch.tensor([[1, 2]]), None, torch.rand(2)), ValueError,
         "per_sample_weights .* must have the same shape as the input"),
    ]
    for mode, args, exc, match in cases:
        f = nn.EmbeddingBag(10, 4, mode=mode)
        f.qconfig = tq.float_qparams_weight_only_qconfig if bits == 8 else tq.float_qparams_weight_only_qconfig_4bit
        q = nnq.EmbeddingBag.from_float(f)
        with pytest.raises(exc) as theirs:
            f(*args)
        with pytest.raises(exc, match=match) as ours:
            q(*args)
        assert type(ours.value) is type(theirs.value), (mode, ours.value, theirs.value)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("case", ["offsets", "empty_bags", "last_offset", "2d", "padding", "int32", "bf16", "empty"])
def test_per_sample_weights_get_the_float_bags_gradient(bits, case):
    # The quantized table is a read-only buffer, but per_sample_weights (attention-weighted
    # pooling learnt upstream) get nn.EmbeddingBag's gradient on the dequantized table; they got
    # none before (torch.ao's quantized EmbeddingBag gives none either).
    torch.manual_seed(0)
    padding_idx = 3 if case == "padding" else None
    fb = nn.EmbeddingBag(20, 6, mode="sum", include_last_offset=case == "last_offset", padding_idx=padding_idx)
    fb.qconfig = tq.float_qparams_weight_only_qconfig if bits == 8 else tq.float_qparams_weight_only_qconfig_4bit
    q = nnq.EmbeddingBag.from_float(fb)
    ref = nn.EmbeddingBag.from_pretrained(q.dequantized_weight(), mode="sum", freeze=True, padding_idx=padding_idx,
                                          include_last_offset=case == "last_offset")
    idx = torch.tensor([1, 3, 5, 3, 7, 19, 0, 3, 2])
    off = {"empty_bags": torch.tensor([0, 0, 4, 4, 9]), "last_offset": torch.tensor([0, 2, 5, 9])}.get(
        case, torch.tensor([0, 2, 5]))
    if case == "2d":
        idx, off = idx.reshape(3, 3), None
    if case == "int32":
        idx, off = idx.int(), off.int()
    if case == "empty":
        idx, off = idx[:0], torch.tensor([0, 0])
    dtype = torch.bfloat16 if case == "bf16" else torch.float32
    w0 = torch.randn(idx.shape, dtype=dtype)
    gy = torch.randn(8, 6)
    grads = []
    for m in (q, ref):
        w = w0.clone().requires_grad_()
        out = m(idx, off, w) if m is q else m(idx.long(), None if off is None else off.long(), w.float())
        (out.float() * gy[: out.shape[0]]).sum().backward()
        grads.append(w.grad)
    assert grads[0].dtype == dtype and grads[0].shape == w0.shape
    torch.testing.assert_close(grads[0].float(), grads[1].float(), rtol=1e-5, atol=1e-5)
    if case == "padding":
        assert (grads[0][idx == 3] == 0).all()
    before = w0.clone()
    with torch.no_grad():  # no gradient asked: the plain lookup, same values
        torch.testing.assert_close(q(idx, off, w0), q(idx, off, w0.clone().requires_grad_()).detach())
    assert torch.equal(w0, before)


def test_per_sample_weights_past_the_last_offset_get_no_gradient():
    fb = nn.EmbeddingBag(10, 4, mode="sum", include_last_offset=True)
    fb.qconfig = tq.float_qparams_weight_only_qconfig
    q = nnq.EmbeddingBag.from_float(fb)
    w = torch.ones(5, requires_grad=True)
    q(torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 1, 3]), w).sum().backward()  # 4, 5 lie past offset 3
    assert (w.grad[3:] == 0).all() and (w.grad[:3] != 0).all()


@pytest.mark.parametrize("flow", ["convert", "quantize_dynamic"])
def test_a_table_with_max_norm_stays_float_and_the_others_convert(flow):
    # A max_norm table made the whole convert / quantize_dynamic fail (torch.ao converts it,
    # ignoring max_norm): it stays float, named in a warning, and the other tables convert.
    torch.manual_seed(0)
    model = nn.ModuleDict({"normed": nn.Embedding(10, 4, max_norm=1.0), "bag": nn.EmbeddingBag(10, 4, mode="sum"),
                           "normed_bag": nn.EmbeddingBag(10, 4, max_norm=2.0, mode="max")})
    calls = []
    model["normed"].register_forward_hook(lambda mod, args, out: calls.append(out.shape))
    float_model = copy.deepcopy(model)
    if flow == "convert":
        for m in model.values():
            m.qconfig = tq.float_qparams_weight_only_qconfig
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = (tq.convert(tq.prepare(model)) if flow == "convert" else tq.quantize_dynamic(model, dtype=torch.quint8))
    said = [str(w.message) for w in caught if "max_norm" in str(w.message)]
    assert len(said) == 2, said
    assert said[0].startswith("normed (Embedding) stays in float: it has max_norm=1.0")
    assert said[1].startswith("normed_bag (EmbeddingBag) stays in float: it has max_norm=2.0")
    assert type(q["normed"]) is nn.Embedding and type(q["normed_bag"]) is nn.EmbeddingBag
    assert type(q["bag"]) is nnq.EmbeddingBag
    idx, off = torch.tensor([1, 2, 3]), torch.tensor([0, 2])
    assert torch.equal(q["normed"](idx), float_model["normed"](idx))
    assert len(calls) == 2  # the user's hook kept once (it ran once for each of the two calls)
    assert torch.equal(q["normed_bag"](idx, off), float_model["normed_bag"](idx, off))
    assert q["bag"](idx, off).shape == (2, 4)
    # from_float itself: the float table (a copy, the same weight), with the warning
    alone = nn.Embedding(10, 4, max_norm=1.0)
    alone.qconfig = tq.float_qparams_weight_only_qconfig
    with pytest.warns(UserWarning, match=r"^emb \(Embedding\) stays in float: it has max_norm=1.0"):
        kept = nnq.Embedding.from_float(alone, name="emb")
    assert type(kept) is nn.Embedding and kept is not alone and kept.weight is alone.weight


@pytest.mark.parametrize("cls", [nn.Embedding, nn.EmbeddingBag])
def test_a_weight_observer_per_column_is_refused(cls):
    # ch_axis=1 gave one scale and zero point per column, applied to the rows without a word
    # (a square table converted; another shape failed on a broadcast).
    from torchquant.observer import PerChannelMinMaxObserver
    e = cls(8, 8)
    e.qconfig = tq.QConfig(activation=tq.float_qparams_weight_only_qconfig.activation,
                           weight=PerChannelMinMaxObserver.with_args(
                               dtype=torch.quint8, qscheme=torch.per_channel_affine_float_qparams, ch_axis=1))
    target = nnq.Embedding if cls is nn.Embedding else nnq.EmbeddingBag
    with pytest.raises(ValueError, match=r"^table: embedding quantization needs a weight observer with ch_axis=0 "
                                         r".*got ch_axis=1"):
        target.from_float(e, name="table")
    with pytest.raises(ValueError, match=r"table.*got ch_axis=1"):
        tq.convert(tq.prepare(nn.ModuleDict({"table": e})))


@pytest.mark.parametrize("bag", [False, True])
def test_repr_shows_padding_idx(bag):
    # padding_idx was left out of the repr (the float modules show it).
    cls, float_cls = (nnq.EmbeddingBag, nn.EmbeddingBag) if bag else (nnq.Embedding, nn.Embedding)
    assert "padding_idx=3" in repr(float_cls(10, 4, padding_idx=3))
    assert ", padding_idx=3," in repr(cls(10, 4, padding_idx=3))
    assert "padding_idx" not in repr(cls(10, 4))


@pytest.mark.parametrize("bag", [False, True])
def test_constructor_weight_keeps_its_dtype(bag):
    # A float16 _weight gave float32 lookups, where from_float of a float16 table gives float16 ones.
    cls, float_cls = (nnq.EmbeddingBag, nn.EmbeddingBag) if bag else (nnq.Embedding, nn.Embedding)
    w = torch.randn(10, 4, generator=torch.Generator().manual_seed(0)).half()
    q = cls(10, 4, _weight=w)
    f = float_cls(10, 4, _weight=w.clone(), **({"mode": "sum"} if bag else {}))
    f.qconfig = tq.float_qparams_weight_only_qconfig
    converted = cls.from_float(f)
    assert q.output_dtype == converted.output_dtype == torch.float16
    args = (torch.tensor([1, 2]),) if not bag else (torch.tensor([1, 2]), torch.tensor([0]))
    assert q(*args).dtype == torch.float16 and torch.equal(q(*args), converted(*args))
    assert cls(10, 4, _weight=w.float()).output_dtype is None


@pytest.mark.parametrize("case", ["negative index", "index past the table", "offsets[0] != 0",
                                  "decreasing offsets", "offset past the indices", "2-D index past the table"])
def test_reference_refuses_what_the_op_refuses(case):
    # The oracle returned numbers for input the op refuses (a negative index wrapped around), or
    # failed with a bare IndexError: it raises the op's error, with the op's message.
    f = nn.EmbeddingBag(10, 4)
    f.qconfig = tq.float_qparams_weight_only_qconfig
    packed = nnq.EmbeddingBag.from_float(f).packed_weight
    idx, off = {"negative index": (torch.tensor([1, -1]), torch.tensor([0])),
                "index past the table": (torch.tensor([1, 2, 10]), torch.tensor([0, 1])),
                "offsets[0] != 0": (torch.tensor([1, 2, 3]), torch.tensor([1])),
                "decreasing offsets": (torch.tensor([1, 2, 3]), torch.tensor([0, 2, 1])),
                "offset past the indices": (torch.tensor([1, 2, 3]), torch.tensor([0, 5])),
                "2-D index past the table": (torch.tensor([[1, 2], [3, 12]]), None)}[case]
    with pytest.raises(RuntimeError) as theirs:
        ops.embedding_bag_rowwise(packed, 8, 4, idx, off, 0)
    with pytest.raises(RuntimeError) as ours:
        reference.embedding_bag_rowwise(packed, 8, 4, idx, off, 0)
    assert type(ours.value) is RuntimeError
    assert str(ours.value) == str(theirs.value).splitlines()[0]


def test_8bit_row_values_are_within_the_bound_of_the_exact_value_not_of_the_rounded_one():
    # The documented bound, half an ulp of |z s| plus half an ulp of the value, holds against the
    # exact real value (q - z) * s; against that value rounded to float32 it does not always
    # (a value near a halfway point, moved across it by the rounded bias): half an ulp more.
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(500, 64, generator=g) * 10.0 ** torch.randint(-3, 4, (500, 1), generator=g).float()
         + torch.randn(500, 1, generator=g) * 5)
    e = nn.Embedding(500, 64)
    e.weight.data.copy_(w)
    e.qconfig = tq.float_qparams_weight_only_qconfig
    got = nnq.Embedding.from_float(e).dequantized_weight().double()
    q, s, z = unpack_rowwise(nnq.Embedding.from_float(e).packed_weight, 8, 64)
    exact = (q.double() - z.double()[:, None]) * s.double()[:, None]
    ulp = lambda t: torch.ldexp(torch.ones_like(t), torch.frexp(t.float()).exponent.double() - 24)  # noqa: E731
    half_zs = 0.5 * ulp((z.double() * s.double()).abs())[:, None]
    assert bool(((got - exact).abs() <= half_zs + 0.5 * ulp(got.abs())).all())
    rounded = exact.float().double()
    assert bool(((got - rounded).abs() > half_zs + 0.5 * ulp(rounded.abs())).any())
    assert bool(((got - rounded).abs() <= half_zs + ulp(rounded.abs())).all())


@pytest.mark.parametrize("bits", [8, 4])
def test_bags_follow_the_float_bag_where_torch_ao_departs_from_it(bits):
    # docs/sequence.md's list: mode honoured, 2-D indices with include_last_offset give B bags,
    # 4-bit include_last_offset runs, offsets[0] != 0 refused, non-contiguous indices taken.
    torch.manual_seed(0)
    qc = tq.float_qparams_weight_only_qconfig if bits == 8 else tq.float_qparams_weight_only_qconfig_4bit
    idx = torch.randint(0, 20, (12,))
    for mode in ("sum", "mean", "max"):
        for ilo in (False, True):
            f = nn.EmbeddingBag(20, 8, mode=mode, include_last_offset=ilo)
            f.qconfig = qc
            q = nnq.EmbeddingBag.from_float(f)
            deq = nn.EmbeddingBag(20, 8, mode=mode, include_last_offset=ilo,
                                  _weight=q.dequantized_weight())  # the float bag on the quantized rows
            # (offsets ending at the number of indices: nn.EmbeddingBag's mean and max put the
            # indices past the last offset with include_last_offset in its last bag, its sum not)
            for args in ((idx, torch.tensor([0, 3, 3, 7, 12])), (idx.reshape(3, 4),),
                         (torch.randint(0, 20, (24,))[::2], torch.tensor([0, 5, 12]))):
                want = deq(*args)
                got = q(*args)
                assert got.shape == want.shape, (mode, ilo, got.shape, want.shape)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            with pytest.raises(RuntimeError, match="offsets\\[0\\] has to be 0"):
                q(idx, torch.tensor([1, 4]))
