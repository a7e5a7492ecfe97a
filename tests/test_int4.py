"""int4 weight-only: the format (pack / unpack, round-to-nearest), the CPU kernels of every ISA
bit-exact with the plain-torch oracle torchquant.int4.reference.linear_int4 and within the
documented bound of dequantize-then-matmul, the module (dtypes, state dict, AWQ input scale),
bad arguments."""
import io

import pytest
import torch
from torch import nn

import torchquant
from torchquant.int4 import format as fmt
from torchquant.int4 import reference as ref
from torchquant.nn.quantized import LinearWeightOnlyInt4

ops = torch.ops.torchquant


def _rand_weight(N, K, group_size, gen):
    q = torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8)
    # extremes in a fair share of places
    ext = torch.rand(N, K, generator=gen)
    q = torch.where(ext < 0.1, torch.zeros_like(q), torch.where(ext > 0.9, torch.full_like(q, 15), q))
    G = fmt.num_groups(K, group_size)
    scale = torch.rand(N, G, generator=gen) * 0.02 + 1e-3
    zp = torch.randint(0, 16, (N, G), generator=gen, dtype=torch.uint8)
    return fmt.pack_int4(q), scale, zp


def _rand_x(shape, gen):
    x = torch.randn(shape, generator=gen) * 3
    # exact ties of the activation grid and outliers
    if x.numel():
        x.view(-1)[:: 7] = torch.round(x.view(-1)[:: 7]) + 0.5
        x.view(-1)[:: 31] *= 40
    return x


SHAPES = [  # M, K, N, group_size
    (1, 128, 16, 128), (1, 4096, 64, 128), (3, 130, 17, 128), (5, 67, 33, 32), (1, 1, 1, 8),
    (7, 257, 50, 64), (0, 64, 16, 32), (4, 64, 0, 32), (9, 200, 31, 16), (33, 96, 48, 32), (2, 8, 5, 8),
    # odd numbers of 8-k blocks per group (the AVX-512 kernel pairs blocks): 3 and 5
    (1, 100, 20, 24), (6, 130, 33, 40),
    # tiles of several rows and two panels (AVX-512: 3 to 6 rows x 32 channels) with rows and a
    # panel left over, and a partial last panel inside a pair
    (14, 300, 80, 32), (6, 128, 32, 128), (13, 72, 40, 8), (20, 520, 100, 128),
    # rows cut into even tiles (4 + 4; one of 4)
    (8, 64, 64, 64), (4, 200, 40, 40),
]


@pytest.mark.parametrize("M,K,N,gs", SHAPES)
def test_linear_int4_exact(isa, M, K, N, gs):
    gen = torch.Generator().manual_seed(M * 7919 + K * 31 + N + gs)
    qw, scale, zp = _rand_weight(N, K, gs, gen)
    bias = torch.randn(N, generator=gen)
    x = _rand_x((M, K), gen)
    packed = ops.int4_pack_weight(qw, scale, zp, K, gs)
    for b in (bias, None):
        got = ops.linear_int4(x, *packed, b, K, N, gs)
        want = ref.linear_int4(x, qw, scale, zp, b, K, gs)
        assert got.dtype == torch.float32 and got.shape == (M, N)
        assert torch.equal(got, want), (got - want).abs().max()
        # and within the documented bound of dequantize-then-matmul
        exact = ref.linear_int4_dequant(x, qw, scale, zp, b, K, gs)
        bound = ref.error_bound(x, qw, scale, zp, K, gs)
        assert ((got.double() - exact).abs() <= bound).all()


def test_linear_int4_bound_is_tight_enough():
    # The bound is no blanket: the kernel's error uses a fair part of it, and a wrong
    # weight (one group's scale doubled) breaks it.
    gen = torch.Generator().manual_seed(1)
    K, N, gs = 512, 64, 128
    qw, scale, zp = _rand_weight(N, K, gs, gen)
    x = torch.randn(8, K, generator=gen)
    got = ops.linear_int4(x, *ops.int4_pack_weight(qw, scale, zp, K, gs), None, K, N, gs).double()
    exact = ref.linear_int4_dequant(x, qw, scale, zp, None, K, gs)
    bound = ref.error_bound(x, qw, scale, zp, K, gs)
    assert (got - exact).abs().max() > 1e-3 * bound.max()
    bad = scale.clone()
    bad[3, 1] *= 2
    got_bad = ops.linear_int4(x, *ops.int4_pack_weight(qw, bad, zp, K, gs), None, K, N, gs).double()
    assert ((got_bad - exact).abs() > bound).any()


@pytest.mark.parametrize("hugepages", ["1", "0"])
def test_linear_int4_large_weight_huge_page_path(hugepages):
    """A packed weight of 2 MiB and more is a fresh 2 MiB-aligned mapping advised onto huge pages
    (TORCHQUANT_HUGEPAGES=0: at::zeros; read once per process, so each runs in a fresh one):
    results must not depend on it, at a size whose end is not on a 2 MiB boundary, on every
    ISA; the mapping is released with the tensor (memory does not grow over many packs)."""
    code = """
import resource, torch, torchquant
from torchquant.int4 import format as fmt, reference as ref
ops = torch.ops.torchquant
g = torch.Generator().manual_seed(0)
N, K, gs = 2000, 2100, 128
q = torch.randint(0, 16, (N, K), generator=g, dtype=torch.uint8)
G = fmt.num_groups(K, gs)
scale = torch.rand(N, G, generator=g) * 0.02 + 1e-3
zp = torch.randint(0, 16, (N, G), generator=g, dtype=torch.uint8)
qw = fmt.pack_int4(q)
packed = ops.int4_pack_weight(qw, scale, zp, K, gs)
assert packed[0].numel() > 2 * 2 ** 20 and packed[0].numel() % (2 * 2 ** 20)
for isa in torchquant.isa.ISAS:
    try:
        torchquant.set_cpu_isa(isa)
    except RuntimeError:
        continue
    for M in (1, 3):
        x = torch.randn(M, K, generator=g)
        assert torch.equal(ops.linear_int4(x, *packed, None, K, N, gs), ref.linear_int4(x, qw, scale, zp, None, K, gs))
torchquant.set_cpu_isa("auto")
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(60):  # 60 x 2.5 MiB
    p = ops.int4_pack_weight(qw, scale, zp, K, gs)
    del p
assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 60 * 1024, "packed weights leak"
print("ok")
"""
    import os
    import subprocess
    import sys
    env = dict(os.environ, TORCHQUANT_HUGEPAGES=hugepages)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_linear_int4_isas_agree_on_large_m():
    gen = torch.Generator().manual_seed(2)
    M, K, N, gs = 37, 1000, 70, 64
    qw, scale, zp = _rand_weight(N, K, gs, gen)
    x = _rand_x((M, K), gen)
    packed = ops.int4_pack_weight(qw, scale, zp, K, gs)
    want = ref.linear_int4(x, qw, scale, zp, None, K, gs)
    from conftest import SUPPORTED_ISAS
    for isa in SUPPORTED_ISAS:
        with torchquant.force_cpu_isa(isa):
            assert torch.equal(ops.linear_int4(x, *packed, None, K, N, gs), want), isa


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_int4_low_precision(isa, dtype):
    gen = torch.Generator().manual_seed(3)
    M, K, N, gs = 4, 192, 24, 64
    qw, scale, zp = _rand_weight(N, K, gs, gen)
    x = torch.randn(M, K, generator=gen).to(dtype)
    got = ops.linear_int4(x, *ops.int4_pack_weight(qw, scale, zp, K, gs), None, K, N, gs)
    assert got.dtype == dtype
    # the float32 result rounded once to the output dtype
    assert torch.equal(got, ref.linear_int4(x.float(), qw, scale, zp, None, K, gs).to(dtype))


def test_linear_int4_noncontiguous_and_batched(isa):
    gen = torch.Generator().manual_seed(4)
    K, N, gs = 96, 20, 32
    qw, scale, zp = _rand_weight(N, K, gs, gen)
    packed = ops.int4_pack_weight(qw, scale, zp, K, gs)
    x = torch.randn(2, 3, 2 * K, generator=gen)[..., ::2]
    assert not x.is_contiguous()
    got = ops.linear_int4(x, *packed, None, K, N, gs)
    assert got.shape == (2, 3, N)
    assert torch.equal(got, ref.linear_int4(x.contiguous(), qw, scale, zp, None, K, gs))


def test_linear_int4_nonfinite_rows():
    # A NaN element counts as 0 and an inf row gives NaN outputs (the dynamic path's rules);
    # never a crash and other rows unaffected.
    gen = torch.Generator().manual_seed(5)
    K, N, gs = 64, 16, 32
    qw, scale, zp = _rand_weight(N, K, gs, gen)
    x = torch.randn(3, K, generator=gen)
    x[0, 5] = float("nan")
    x[1, 7] = float("inf")
    got = ops.linear_int4(x, *ops.int4_pack_weight(qw, scale, zp, K, gs), None, K, N, gs)
    assert torch.equal(got[0], ref.linear_int4(x[:1], qw, scale, zp, None, K, gs)[0])
    assert torch.equal(got[2], ref.linear_int4(x[2:], qw, scale, zp, None, K, gs)[0])


# ---------------------------------------------------------------- the format
def test_pack_unpack_roundtrip():
    gen = torch.Generator().manual_seed(6)
    for K in (1, 2, 7, 128, 131):
        q = torch.randint(0, 16, (5, K), generator=gen, dtype=torch.uint8)
        p = fmt.pack_int4(q)
        assert p.shape == (5, (K + 1) // 2) and p.dtype == torch.uint8
        assert torch.equal(fmt.unpack_int4(p, K), q)
        # k even in the low nibble
        assert int(p[0, 0]) & 0x0F == int(q[0, 0])


def test_rtn_matches_loop_reference():
    gen = torch.Generator().manual_seed(7)
    N, K, gs = 6, 77, 32
    w = torch.randn(N, K, generator=gen)
    w[0, :32] = 0.0  # an all-zero group
    w[1, 32:64] = torch.rand(32, generator=gen) + 0.1  # one-sided: range widened to 0
    s, z = fmt.choose_group_qparams(w, gs)
    q = fmt.quantize_groups(w, s, z, gs)
    eps = torch.finfo(torch.float32).eps
    for n in range(N):
        for g in range(fmt.num_groups(K, gs)):
            seg = w[n, g * gs:(g + 1) * gs]
            mn, mx = min(float(seg.min()), 0.0), max(float(seg.max()), 0.0)
            sc = torch.tensor((mx - mn) / 15, dtype=torch.float32)
            sc = torch.clamp(sc, min=eps)
            zz = int(min(max(-round(float(torch.tensor(mn, dtype=torch.float32) / sc)), 0), 15))
            assert float(s[n, g]) == pytest.approx(float(sc), rel=1e-6)
            assert int(z[n, g]) == zz
            qq = torch.clamp(torch.round(seg * (1.0 / s[n, g])) + zz, 0, 15)
            assert torch.equal(q[n, g * gs:(g + 1) * gs].float(), qq)
            # the round trip is within half a step inside the range
            dq = (qq - zz) * s[n, g]
            assert (dq - seg).abs().max() <= s[n, g] / 2 + 1e-6


def test_symmetric_qparams_match_loop_reference():
    gen = torch.Generator().manual_seed(17)
    N, K, gs = 6, 77, 32  # the last group is shorter
    w = torch.randn(N, K, generator=gen)
    w[0, :32] = 0.0  # an all-zero group
    w[1, 32:64] = torch.rand(32, generator=gen) + 0.1  # one-sided
    s, z = fmt.choose_group_qparams(w, gs, symmetric=True)
    assert s.dtype == torch.float32 and z.dtype == torch.int64 and s.shape == z.shape == (N, 3)
    assert bool((z == 8).all())
    q = fmt.quantize_groups(w, s, z, gs)
    eps = torch.finfo(torch.float32).eps
    for n in range(N):
        for g in range(fmt.num_groups(K, gs)):
            seg = w[n, g * gs:(g + 1) * gs]
            amax = seg.abs().max()
            sc = torch.clamp(2 * amax / 15, min=eps)
            assert float(s[n, g]) == float(sc)  # (one float32 rounding of 2 * amax / 15)
            qq = torch.clamp(torch.round(seg * (1.0 / s[n, g])) + 8, 0, 15)
            assert torch.equal(q[n, g * gs:(g + 1) * gs].float(), qq)
            # the grid s * [-8, 7]: every weight within half a step (+max|w| at 7.5 s clips to 7 s)
            dq = (qq - 8) * s[n, g]
            assert (dq - seg).abs().max() <= s[n, g] / 2 + 1e-6
    assert float(s[0, 0]) == eps and bool((q[0, :32] == 8).all())  # zeros stay exact
    # the one-sided group keeps the scale of its largest weight (GPTQ's reference would halve it)
    assert float(s[1, 1]) == pytest.approx(float(w[1, 32:64].max()) * 2 / 15, rel=1e-6)
    assert int(q[1, 32:64].min()) >= 8
    # asymmetric is unchanged by the argument's default
    s0, z0 = fmt.choose_group_qparams(w, gs)
    s1, z1 = fmt.choose_group_qparams(w, gs, symmetric=False)
    assert torch.equal(s0, s1) and torch.equal(z0, z1) and not bool((z0 == 8).all())


def test_symmetric_loses_no_more_than_asymmetric_on_a_weight_symmetric_around_0():
    gen = torch.Generator().manual_seed(18)
    N, K, gs = 16, 256, 32
    half = torch.randn(N, K // 2, generator=gen)
    # each group holds v and -v: min = -max, the case where the asymmetric range is the symmetric one
    w = torch.cat([half.reshape(N, -1, gs // 2), -half.reshape(N, -1, gs // 2)], 2).reshape(N, K)
    w = w.reshape(N, -1, gs)[:, :, torch.randperm(gs, generator=gen)].reshape(N, K)  # shuffled within groups
    errs = {}
    for sym in (False, True):
        s, z = fmt.choose_group_qparams(w, gs, symmetric=sym)
        dq = fmt.dequantize_groups(fmt.quantize_groups(w, s, z, gs), s, z, gs)
        assert bool(((dq - w).abs() <= s.repeat_interleave(gs, 1) / 2 + 1e-6).all()), sym
        errs[sym] = float(((dq - w) ** 2).sum())
    assert errs[True] <= errs[False] * (1 + 1e-6), errs
    # on a one-sided weight the symmetric grid spends half its codes on values no weight takes
    pos = torch.rand(N, K, generator=gen) + 0.1
    e = {}
    for sym in (False, True):
        s, z = fmt.choose_group_qparams(pos, gs, symmetric=sym)
        e[sym] = float(((fmt.dequantize_groups(fmt.quantize_groups(pos, s, z, gs), s, z, gs) - pos) ** 2).sum())
    assert e[True] > 2 * e[False], e


# ---------------------------------------------------------------- the module
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_module_from_float(dtype):
    torch.manual_seed(0)
    lin = nn.Linear(300, 40)  # K not a multiple of the group: the last group is shorter
    q = LinearWeightOnlyInt4.from_float(lin, group_size=128)
    assert q.weight_scale.shape == (40, 3)
    x = torch.randn(5, 300).to(dtype)
    y = q(x)
    assert y.dtype == dtype and y.shape == (5, 40)
    want = ref.linear_int4(x.float(), q.qweight, q.weight_scale, q.weight_zero_point, lin.bias, 300, 128)
    assert torch.equal(y, want.to(dtype))
    # close to the float layer (4-bit weights)
    yf = lin(x.float())
    assert (y.float() - yf).norm() / yf.norm() < 0.1


def test_module_state_dict_weights_only(tmp_path):
    torch.manual_seed(1)
    lin = nn.Linear(256, 64)
    q = LinearWeightOnlyInt4.from_float(lin, group_size=64)
    sd = q.state_dict()
    assert set(sd) == {"qweight", "weight_scale", "weight_zero_point", "bias", "weight_format"}
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    q2 = LinearWeightOnlyInt4(256, 64, True, group_size=64)
    q2.load_state_dict(loaded)
    x = torch.randn(3, 256)
    assert torch.equal(q2(x), q(x))
    # Integer buffers of another dtype are refused, naming the key, rather than cast.
    for key in ("qweight", "weight_zero_point"):
        bad = dict(sd, **{key: sd[key].float() + 0.7})
        with pytest.raises(RuntimeError, match=rf"{key}: the quantized LinearWeightOnlyInt4's .* must be "
                                               rf"torch.uint8, got dtype torch.float32"):
            q2.load_state_dict(bad)
    assert torch.equal(q2(x), q(x))
    # size: 4 bits per weight plus 5 bytes per group of 64, and the 8 bytes of (group_size, K)
    assert sum(t.numel() * t.element_size() for t in sd.values()) == 64 * 128 + 64 * 4 * 5 + 64 * 4 + 8
    # dtype casts keep the float32 qparams (part of the int4 computation)
    q3 = q2.half()
    assert q3.weight_scale.dtype == torch.float32
    assert torch.equal(q3(x.half()), q(x.half().float()).half())


def test_symmetric_module_round_trips_through_weights_only_load():
    torch.manual_seed(19)
    lin = nn.Linear(200, 24)
    q = LinearWeightOnlyInt4.from_float(lin, group_size=64, symmetric=True)
    assert bool((q.weight_zero_point == 8).all()) and q.weight_zero_point.dtype == torch.uint8
    s, z = fmt.choose_group_qparams(lin.weight, 64, symmetric=True)
    assert torch.equal(q.weight_scale, s) and torch.equal(q.qvalues(), fmt.quantize_groups(lin.weight, s, z, 64))
    x = torch.randn(5, 200)
    # the kernels run it unchanged: bit for bit the oracle
    want = ref.linear_int4(x, q.qweight, q.weight_scale, q.weight_zero_point, lin.bias, 200, 64)
    assert torch.equal(q(x), want)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    fresh = LinearWeightOnlyInt4(200, 24, True, group_size=64)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(fresh(x), q(x)) and bool((fresh.weight_zero_point == 8).all())
    for bad in ("yes", 1, None):
        with pytest.raises(TypeError, match=rf"argument 'symmetric' must be True or False, got {bad!r}"):
            LinearWeightOnlyInt4.from_float(lin, group_size=64, symmetric=bad)
        with pytest.raises(TypeError, match=rf"argument 'symmetric' must be True or False, got {bad!r}"):
            fmt.choose_group_qparams(lin.weight, 64, bad)


def test_module_input_scale():
    torch.manual_seed(2)
    qv = torch.randint(0, 16, (8, 64), dtype=torch.uint8)
    scale = torch.rand(8, 2) * 0.1 + 0.01
    zp = torch.randint(0, 16, (8, 2))
    inp = torch.rand(64) + 0.5
    m = LinearWeightOnlyInt4.from_qparams(qv, scale, zp, None, 32, input_scale=inp)
    x = torch.randn(4, 64)
    want = ref.linear_int4(x * inp, m.qweight, scale, zp, None, 64, 32)
    assert torch.equal(m(x), want)
    assert "input_scale" in m.state_dict()


# ---------------------------------------------------------------- bad input
def test_bad_arguments():
    gen = torch.Generator().manual_seed(8)
    qw, scale, zp = _rand_weight(16, 64, 32, gen)
    with pytest.raises(RuntimeError, match="group_size"):
        ops.int4_pack_weight(qw, scale, zp, 64, 12)
    with pytest.raises(RuntimeError, match="qweight"):
        ops.int4_pack_weight(qw, scale, zp, 70, 32)
    with pytest.raises(RuntimeError, match="zero_point.*16"):
        ops.int4_pack_weight(qw, scale, torch.full_like(zp, 16), 64, 32)
    with pytest.raises(RuntimeError, match="scale"):
        ops.int4_pack_weight(qw, torch.zeros_like(scale), zp, 64, 32)
    with pytest.raises(RuntimeError, match="scale"):
        ops.int4_pack_weight(qw, scale[:, :1], zp, 64, 32)
    packed = ops.int4_pack_weight(qw, scale, zp, 64, 32)
    with pytest.raises(RuntimeError, match="in_features = 64"):
        ops.linear_int4(torch.randn(2, 65), *packed, None, 64, 16, 32)
    with pytest.raises(RuntimeError, match="floating-point"):
        ops.linear_int4(torch.ones(2, 64, dtype=torch.int32), *packed, None, 64, 16, 32)
    with pytest.raises(RuntimeError, match="w_packed"):
        ops.linear_int4(torch.randn(2, 64), packed[0][:, :1], packed[1], packed[2], None, 64, 16, 32)
    with pytest.raises(RuntimeError, match="w_packed"):  # the layout of another group size
        ops.linear_int4(torch.randn(2, 64), *ops.int4_pack_weight(qw, scale[:, :1], zp[:, :1], 64, 64), None,
                        64, 16, 32)
    with pytest.raises(RuntimeError, match="w_qp"):
        ops.linear_int4(torch.randn(2, 64), packed[0], torch.zeros(2, dtype=torch.int16), packed[2], None,
                        64, 16, 32)
    with pytest.raises(RuntimeError, match="w_scale"):
        ops.linear_int4(torch.randn(2, 64), packed[0], packed[1], torch.ones(1), None, 64, 16, 32)
    # the float32 scales inside w_packed are read in place: a misaligned copy is refused
    odd = torch.empty(packed[0].numel() + 1, dtype=torch.uint8)[1:].view(packed[0].shape)
    odd.copy_(packed[0])
    with pytest.raises(RuntimeError, match="w_packed.*aligned"):
        ops.linear_int4(torch.randn(2, 64), odd, packed[1], packed[2], None, 64, 16, 32)
    with pytest.raises(RuntimeError, match="bias"):
        ops.linear_int4(torch.randn(2, 64), *packed, torch.zeros(3), 64, 16, 32)
    with pytest.raises(ValueError, match="group_size"):
        LinearWeightOnlyInt4(64, 16, group_size=100)
    with pytest.raises(ValueError, match="bits"):
        torchquant.quantize_weight_only(nn.Sequential(nn.Linear(64, 16)), bits=3)
    with pytest.raises(ValueError, match="method"):
        torchquant.quantize_weight_only(nn.Sequential(nn.Linear(64, 16)), method="smooth")
    with pytest.raises(ValueError, match="calib_data"):
        torchquant.quantize_weight_only(nn.Sequential(nn.Linear(64, 16)), method="gptq")


@pytest.mark.parametrize("N", [4, 16, 20])
def test_linear_int4_out_features_must_be_the_packed_n(N):
    # The CPU layout pads N to panels of 16 channels: out_features inside the last panel was taken,
    # giving zero columns (or dropping some) without a word.
    gen = torch.Generator().manual_seed(10)
    qw, scale, zp = _rand_weight(N, 32, 16, gen)
    packed = ops.int4_pack_weight(qw, scale, zp, 32, 16)
    x = torch.randn(2, 32)
    assert ops.linear_int4(x, *packed, None, 32, N, 16).shape == (2, N)
    for wrong in (N - 1, N + 1, (N + 15) // 16 * 16 + (N % 16 == 0)):
        if wrong == N or wrong > (N + 15) // 16 * 16:
            continue
        with pytest.raises(RuntimeError, match=rf"argument 'out_features' must be the number of output channels "
                                               rf"'w_packed' was packed for \(int4_pack_weight\), {N}, got {wrong}"):
            ops.linear_int4(x, *packed, None, 32, wrong, 16)


@pytest.mark.parametrize("kw,match", [
    (dict(method="gptq", blocksize=0), r"argument 'blocksize' must be an int >= 1, got 0"),
    (dict(method="gptq", blocksize=-1), r"argument 'blocksize' must be an int >= 1, got -1"),
    (dict(method="gptq", percdamp=-1.0), r"argument 'percdamp' must be a finite number > 0 .*got -1.0"),
    (dict(method="gptq", percdamp=float("nan")), r"argument 'percdamp' must be a finite number > 0 .*got nan"),
    (dict(method="awq", awq_grid=0), r"argument 'awq_grid' must be an int >= 1, got 0"),
    (dict(method="awq", awq_max_rows=0), r"argument 'awq_max_rows' must be an int >= 1, got 0"),
])
def test_quantize_weight_only_names_bad_tuning_arguments(kw, match):
    model = nn.Sequential(nn.Linear(64, 16))
    with pytest.raises(ValueError, match=match):
        torchquant.quantize_weight_only(model, group_size=32, calib_data=[torch.randn(8, 64)], **kw)


@pytest.mark.parametrize("kw,error,match", [
    (dict(method="gptq", act_order="no"), TypeError, r"argument 'act_order' must be True or False, got 'no'"),
    (dict(method="awq", awq_fold="no"), TypeError, r"argument 'awq_fold' must be True or False, got 'no'"),
    (dict(inplace=1), TypeError, r"argument 'inplace' must be True or False, got 1"),
    (dict(cache_block_inputs=None), TypeError, r"argument 'cache_block_inputs' must be True or False, got None"),
    (dict(symmetric="yes"), TypeError, r"argument 'symmetric' must be True or False, got 'yes'"),
    (dict(method="gptq", symmetric=1), TypeError, r"argument 'symmetric' must be True or False, got 1"),
    (dict(method="awq", symmetric=1), TypeError, r"argument 'symmetric' must be True or False, got 1"),
    (dict(bits=8, symmetric="yes"), TypeError, r"argument 'symmetric' must be True or False, got 'yes'"),
    (dict(bits=8, method="gptq", act_order=True), ValueError, r"act_order=True is implemented for bits=4 only"),
])
def test_quantize_weight_only_takes_only_bools_for_its_options_and_act_order_with_int4(kw, error, match):
    model = nn.Sequential(nn.Linear(64, 16))
    with pytest.raises(error, match=match):
        torchquant.quantize_weight_only(model, group_size=32, calib_data=[torch.randn(8, 64)], progress=False, **kw)


@pytest.mark.parametrize("key,value,match", [
    ("weight_scale", lambda s: -s, r"weight_scale: the quantized LinearWeightOnlyInt4's weight_scale must be > 0 "
                                   r"and finite, got -"),
    ("weight_scale", lambda s: s.clone().fill_(float("nan")), r"weight_scale: .* must be > 0 and finite, got nan"),
    ("weight_zero_point", lambda z: z + 16, r"weight_zero_point: 4-bit zero points lie in \[0, 15\], got"),
    # an integer scale (0.01 -> 0) loaded, failed to pack, and left the buffers and the packed weight apart
    ("weight_scale", lambda s: s.to(torch.int32), r"weight_scale: .* must be a floating-point tensor, got dtype "
                                                  r"torch.int32"),
])
def test_int4_load_state_dict_refuses_bad_qparams_and_loads_nothing(key, value, match):
    torch.manual_seed(0)
    q = LinearWeightOnlyInt4.from_float(nn.Linear(64, 8), group_size=32)
    x = torch.randn(2, 64)
    y = q(x)
    sd = {k: v.clone() for k, v in q.state_dict().items()}
    bad = dict(sd)
    bad[key] = value(sd[key])
    with pytest.raises(RuntimeError, match=match):
        q.load_state_dict(bad)
    for k, v in q.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert torch.equal(q(x), y)


def test_to_empty_then_load_state_dict():
    """The large-model pattern: a skeleton moved to meta and back with to_empty (uninitialized
    buffers, which cannot be packed) takes a state dict and gives the original's outputs."""
    torch.manual_seed(0)
    q = LinearWeightOnlyInt4.from_float(nn.Linear(64, 8), group_size=32)
    x = torch.randn(2, 64)
    skeleton = nn.Sequential(LinearWeightOnlyInt4(64, 8, group_size=32)).to("meta").to_empty(device="cpu")
    skeleton[0].weight_scale.fill_(-1.0)  # what uninitialized memory may hold
    skeleton[0].float()  # another _apply on values that cannot be packed
    with pytest.raises(RuntimeError, match="argument 'scale' must be > 0 and finite, got -1"):
        skeleton(x)  # the packing, deferred, raises at the call
    skeleton[0].load_state_dict(q.state_dict())
    assert torch.equal(skeleton(x), q(x))


def test_fake_kernels_match():
    from torch._subclasses.fake_tensor import FakeTensorMode
    gen = torch.Generator().manual_seed(9)
    K, N, gs = 100, 20, 32
    qw, scale, zp = _rand_weight(N, K, gs, gen)
    real = ops.int4_pack_weight(qw, scale, zp, K, gs)
    x = torch.randn(3, K)
    y = ops.linear_int4(x, *real, None, K, N, gs)
    with FakeTensorMode() as mode:
        fq, fs, fz = (mode.from_tensor(t) for t in (qw, scale, zp))
        fake = ops.int4_pack_weight(fq, fs, fz, K, gs)
        for a, b in zip(fake, real):
            assert a.shape == b.shape and a.dtype == b.dtype
        fy = ops.linear_int4(mode.from_tensor(x), *fake, None, K, N, gs)
        assert fy.shape == y.shape and fy.dtype == y.dtype


def test_torch_compile_module():
    torch.manual_seed(3)
    q = LinearWeightOnlyInt4.from_float(nn.Linear(64, 32), group_size=32)
    x = torch.randn(4, 64)
    compiled = torch.compile(q, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x), q(x))


def test_from_qparams_refuses_values_and_shapes_it_would_pack_wrongly():
    zp1, s1 = torch.zeros(1, 1, dtype=torch.uint8), torch.ones(1, 1)
    # signed int4 values would spill into the neighbouring nibble; 15.7 would be truncated
    with pytest.raises(ValueError, match=r"'qvalues' must hold unsigned 4-bit values in \[0, 15\], got values in "
                                         r"\[-8, 7\] \(signed int4"):
        LinearWeightOnlyInt4.from_qparams(torch.tensor([[-1, 3, -8, 7, 0, 1, 2, 3]]), s1, zp1, None, group_size=8)
    with pytest.raises(ValueError, match=r"got values in \[0, 15.7\]$"):
        LinearWeightOnlyInt4.from_qparams(torch.tensor([[15.7, 3, 2, 1, 0, 1, 2, 3]]), s1, zp1, None, group_size=8)
    with pytest.raises(ValueError, match="non-integer"):
        LinearWeightOnlyInt4.from_qparams(torch.tensor([[1.5, 3, 2, 1, 0, 1, 2, 3]]), s1, zp1, None, group_size=8)
    q = torch.zeros(4, 8, dtype=torch.uint8)
    s4, zp4 = torch.ones(4, 1), torch.zeros(4, 1, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"'scale' must have shape \(4, 1\) .* got \(1, 1\)"):
        LinearWeightOnlyInt4.from_qparams(q, s1, zp4, None, group_size=8)
    with pytest.raises(ValueError, match=r"'zero_point' must have shape \(4, 1\)"):
        LinearWeightOnlyInt4.from_qparams(q, s4, zp1, None, group_size=8)
    with pytest.raises(ValueError, match=r"'bias' must have shape \(4,\) .* got \(1,\)"):
        LinearWeightOnlyInt4.from_qparams(q, s4, zp4, torch.zeros(1), group_size=8)
    with pytest.raises(ValueError, match=r"'input_scale' must have shape \(8,\)"):
        LinearWeightOnlyInt4.from_qparams(q, s4, zp4, None, group_size=8, input_scale=torch.ones(4))
    with pytest.raises(ValueError, match="'qvalues' must be a 2-D tensor"):
        LinearWeightOnlyInt4.from_qparams(q.reshape(-1), s4, zp4, None, group_size=8)
    # integral values in any dtype are taken
    m = LinearWeightOnlyInt4.from_qparams(torch.tensor([[15.0, 3, 2, 1, 0, 1, 2, 3]]), s1, zp1, None, group_size=8)
    assert m.qvalues().tolist() == [[15, 3, 2, 1, 0, 1, 2, 3]]


def test_from_qparams_checks_zero_points_as_given_before_casting_them():
    q, s = torch.full((2, 8), 8, dtype=torch.uint8), torch.ones(2, 1)
    # 256 wrapped to 0 and -1 to 255 in the uint8 cast; 3.9 was truncated to 3
    for zp, got in ((256, "256"), (-1, "-1"), (3.9, r"3.9 \(not an integer\)"), (float("nan"), "nan")):
        z = torch.tensor([[7], [zp]])
        with pytest.raises(ValueError, match=rf"argument 'zero_point' must hold 4-bit zero points, integers in "
                                             rf"\[0, 15\], got {got} at channel 1, group 0$"):
            LinearWeightOnlyInt4.from_qparams(q, s, z, None, group_size=8)
    with pytest.raises(TypeError, match=r"argument 'zero_point' must hold integers in \[0, 15\], got dtype torch.bool"):
        LinearWeightOnlyInt4.from_qparams(q, s, torch.ones(2, 1, dtype=torch.bool), None, group_size=8)
    # integral values in any dtype are taken, as for qvalues
    for z in (torch.tensor([[3.0], [15.0]]), torch.tensor([[3], [15]], dtype=torch.int64)):
        m = LinearWeightOnlyInt4.from_qparams(q, s, z, None, group_size=8)
        assert m.weight_zero_point.tolist() == [[3], [15]]


def test_quantize_weight_only_says_when_nothing_was_quantized_and_refuses_meta_weights():
    q = torchquant.quantize_weight_only(nn.Sequential(nn.Linear(64, 8)), group_size=32, progress=False)
    with pytest.warns(UserWarning, match="quantize_weight_only: nothing was quantized"):
        again = torchquant.quantize_weight_only(q, group_size=32, progress=False)  # already int4
    assert type(again[0]) is LinearWeightOnlyInt4
    with pytest.warns(UserWarning, match="quantize_dynamic: nothing was quantized"):
        torchquant.quantize_dynamic(q)
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(64, 8))
    with pytest.raises(ValueError, match=r"the weights of \['0'\] are on the meta device"):
        torchquant.quantize_weight_only(meta, group_size=32, progress=False)


def test_calibration_error_names_the_batch():
    model = nn.Sequential(nn.Embedding(10, 64), nn.Linear(64, 8))
    with pytest.raises(IndexError) as info:
        torchquant.quantize_weight_only(model, group_size=32, method="gptq", calib_data=[torch.tensor([[3, 12]])],
                                        progress=False)
    assert any("calib_data batch 0: Tensor(shape=(1, 2), dtype=torch.int64, values in [3, 12])" in n
               for n in getattr(info.value, "__notes__", [])) or not hasattr(info.value, "add_note")


def test_awq_says_when_its_scales_stay_input_scales():
    torch.manual_seed(0)
    calib = [torch.randn(16, 64)]
    gelu = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32))
    with pytest.warns(UserWarning, match=r"AWQ: the scales of 2 of 2 layers could not be folded .*no LayerNorm"):
        torchquant.quantize_weight_only(gelu, group_size=32, method="awq", calib_data=calib, progress=False)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # folded into the LayerNorm: nothing to say
        q = torchquant.quantize_weight_only(nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 32)), group_size=32,
                                            method="awq", calib_data=calib, progress=False)
    assert q[1].input_scale is None


def test_calibration_note_survives_a_batch_it_cannot_describe():
    model = nn.Sequential(nn.Linear(16, 16))
    batch = torch.randn(4, 16).to(torch.float8_e4m3fn)  # aminmax has no float8 kernel
    with pytest.raises(RuntimeError, match="must have the same dtype") as info:
        torchquant.quantize_weight_only(model, group_size=16, method="gptq", calib_data=[batch], progress=False)
    assert not hasattr(info.value, "add_note") or any("calib_data batch 0" in n for n in info.value.__notes__)


def test_a_head_tied_to_the_embedding_stays_float_with_a_warning():
    # A quantized copy of a tied weight would sit beside the float embedding that shares it:
    # the model would grow. It is left in float, named in a warning; untied, it is quantized.
    import torch.nn as nn

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 64)
            self.fc = nn.Linear(64, 64)
            self.head = nn.Linear(64, 100, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(torch.relu(self.fc(self.emb(ids))))

    m = LM()
    with pytest.warns(UserWarning, match=r"head shares its weight with emb: left in float"):
        q = torchquant.quantize_weight_only(m, bits=4, group_size=32, progress=False)
    assert type(q.head) is nn.Linear and q.head.weight is q.emb.weight
    assert type(q.fc) is torchquant.nn.quantized.LinearWeightOnlyInt4
    m.head.weight = nn.Parameter(m.emb.weight.detach().clone())  # untied
    q = torchquant.quantize_weight_only(m, bits=4, group_size=32, progress=False)
    assert type(q.head) is torchquant.nn.quantized.LinearWeightOnlyInt4


def test_non_finite_weights_are_named():
    import torch.nn as nn

    m = nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 8))
    with torch.no_grad():
        m[0].weight[0, 3] = float("inf")
    with pytest.warns(UserWarning, match=r"the weights of \['0'\] hold NaN or inf"):
        torchquant.quantize_weight_only(m, bits=4, group_size=32, progress=False)


def test_int8_weight_only_past_the_exact_k_names_the_module():
    import torch.nn as nn

    with pytest.raises(RuntimeError, match=r"module '0' \(Linear 70000 -> 2\) cannot be quantized to int8"):
        torchquant.quantize_weight_only(nn.Sequential(nn.Linear(70000, 2)), bits=8, progress=False)


def test_weight_view_answers_like_a_linear_weight_and_t5_runs():
    import copy
    import pickle

    import torch.nn.functional as F

    from torchquant.nn.quantized import LinearWeightOnlyInt4
    torch.manual_seed(0)
    q = LinearWeightOnlyInt4.from_float(nn.Linear(40, 24), group_size=16)
    q.register_buffer("input_scale", torch.rand(40) + 0.5)  # as an AWQ layer keeps one
    w = q.weight
    assert not isinstance(w, torch.Tensor)
    assert w.shape == (24, 40) and w.size(1) == 40 and w.dim() == w.ndim == 2 and w.dtype == torch.float32
    want = q.dequantized_weight() * q.input_scale
    x = torch.randn(5, 40)
    assert torch.equal(w.dequantize(), want) and torch.equal(w.t(), want.t()) and torch.equal(w.float(), want)
    torch.testing.assert_close(F.linear(x, w, q.bias), q(x), rtol=0.05, atol=0.05)  # (q(x) rounds x to int8)
    assert torch.equal(w @ x.t(), want @ x.t()) and torch.equal(x @ w.t(), x @ want.t())
    assert (w @ x.t().bfloat16()).dtype == torch.bfloat16
    assert torch.equal(torch.matmul(x, w.T), x @ want.t())
    for got, exp in ((w * 2.0, want * 2.0), (2.0 * w, 2.0 * want), (w + 1, want + 1), (1 - w, 1 - want),
                     (w / 2, want / 2), (-w, -want), (abs(w), want.abs()), (w[0], want[0]), (w[:, :8], want[:, :8]),
                     (w.norm(), want.norm())):
        assert torch.equal(got, exp)
    assert len(w) == 24
    # copies of the module and of the view keep working
    assert torch.equal(copy.deepcopy(q).weight.dequantize(), want)
    assert torch.equal(pickle.loads(pickle.dumps(q)).weight.dequantize(), want)

    transformers = pytest.importorskip("transformers")
    cfg = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                decoder_start_token_id=0)
    t5 = transformers.T5ForConditionalGeneration(cfg).eval()
    ids = torch.randint(0, 64, (2, 8))
    # T5's feed-forward reads self.wo.weight (its dtype) every call
    q5 = torchquant.quantize_weight_only(t5, group_size=32, exclude=["lm_head"], progress=False)
    with torch.no_grad():
        a = t5(input_ids=ids, decoder_input_ids=ids).logits
        b = q5(input_ids=ids, decoder_input_ids=ids).logits
    assert float((a - b).norm() / a.norm()) < 0.3


def test_in_place_changes_reach_the_next_call_and_the_weight_view_is_read_only():
    # The kernel runs a packed copy: weight_scale.mul_(2) was not seen, and torch.nn.init.zeros_
    # on the .weight view zeroed a dequantized copy, both without a word.
    torch.manual_seed(0)
    q = LinearWeightOnlyInt4.from_float(nn.Linear(64, 8), group_size=32)
    x = torch.randn(3, 64)
    before = q(x)
    with torch.no_grad():
        q.weight_scale.mul_(2)
    assert torch.allclose(q(x) - q.bias, 2 * (before - q.bias), rtol=1e-4, atol=1e-4)
    for change in (lambda w: torch.nn.init.zeros_(w), lambda w: w.mul_(0), lambda w: w.copy_(torch.zeros(8, 64))):
        with pytest.raises(TypeError, match=r"Int4WeightView\.\w+_: the int4 layer's weight view is read-only"):
            with torch.no_grad():
                change(q.weight)
    q.weight.requires_grad_(False)  # (freezing code calls it; harmless)


def test_a_module_pickled_before_weight_format_loads_a_new_checkpoint():
    q = LinearWeightOnlyInt4.from_float(nn.Linear(64, 8), group_size=32)
    sd = q.state_dict()
    del q._buffers["weight_format"]  # as pickled before the buffer existed
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    old = torch.load(buf, weights_only=False)
    old.load_state_dict(sd)
    assert old.weight_format.tolist() == [32, 64]


def test_a_module_with_a_weight_on_the_meta_device_pickles():
    # The copy's layout is brought up to date first; one that cannot be built now is left to the
    # copy's first call (pickling raised that scale is on cpu but qweight on meta).
    import copy
    import pickle

    q = LinearWeightOnlyInt4.from_float(nn.Linear(64, 8), group_size=32)
    q.qweight = torch.empty_like(q.qweight, device="meta")
    pickle.loads(pickle.dumps(q))
    copy.deepcopy(q)


def test_int4_layer_made_under_inference_mode_moves_and_casts_outside_it():
    # .share_memory() / .cpu() / .half() rewrote the weight_format buffer in place: an inference
    # tensor, which refuses an in-place write outside inference mode ("Inplace update to
    # inference tensor outside InferenceMode is not allowed"); the int8 layers had no such write.
    torch.manual_seed(0)
    x = torch.randn(4, 256)
    with torch.inference_mode():
        q = torchquant.quantize_weight_only(nn.Sequential(nn.Linear(256, 64)), bits=4, group_size=128,
                                           progress=False)
    want = q(x)
    for op in ("share_memory", "cpu", "float"):
        getattr(q, op)()
        assert torch.equal(q(x), want), op
    assert q[0].weight_format.tolist() == [128, 256]
    q.half()
    assert q(x.half()).dtype == torch.float16


@pytest.mark.parametrize("N, K, group_size", [(0, 64, 32), (1, 7, 32), (600, 4096, 128), (513, 1000, 64),
                                              (5, 4097, 128), (300, 5000, 32)])
def test_quantize_groups_in_row_blocks_equals_the_whole_formula(N, K, group_size):
    # quantize_groups works in blocks of rows (its float32 temporaries took about three times
    # a layer's weight at once); the codes must be those of the one-shot formula, NaN / inf and
    # non-contiguous weights included.
    g = torch.Generator().manual_seed(N + K)
    w = torch.randn(N, K, generator=g) * 3
    if N:
        w[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    for symmetric in (False, True):
        s, z = fmt.choose_group_qparams(w, group_size, symmetric)
        inv = fmt._expand(torch.ones_like(s) / s, K, group_size)
        want = torch.clamp(torch.nan_to_num(torch.round(w * inv) + fmt._expand(z.float(), K, group_size), nan=0.0),
                           0, 15).to(torch.uint8)
        assert torch.equal(fmt.quantize_groups(w, s, z, group_size), want)
        assert torch.equal(fmt.quantize_groups(w.t().contiguous().t(), s, z, group_size), want)


def test_pack_takes_every_integer_zero_point_dtype_and_refuses_absurd_in_features():
    torch.manual_seed(0)
    qw = torch.randint(0, 256, (4, 16), dtype=torch.uint8)
    s, z = torch.rand(4, 1) + 0.1, torch.randint(0, 16, (4, 1))
    want = ops.int4_pack_weight(qw, s, z.to(torch.uint8), 32, 32)
    for dt in (torch.int8, torch.int16, torch.int32, torch.int64):
        got = ops.int4_pack_weight(qw, s, z.to(dt), 32, 32)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), dt
    with pytest.raises(RuntimeError, match=r"in_features' must lie in \[0, 2\^40\]"):
        ops.int4_pack_weight(qw, s, z, 2**63 - 1, 32)
