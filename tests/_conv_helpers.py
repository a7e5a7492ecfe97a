"""Test data, comparisons and checks shared by the convolution and transposed-convolution op
tests (tests/test_conv.py, tests/test_conv_transpose.py).

The checks take the test file's `make(case, batch, xdtype, seed, device=..., saturate=...)` and
`run(case, x, xs, xz, w, ws, bias, out_dtype, relu, out_scale=None, out_zp=None)`, which know the
op and the layout of its case tuples and weights."""
import pytest
import torch


def make_data(spatial, cin, cout, w_shape, batch, xdtype, seed, device="cpu", saturate=False):
    """Random quantized input (batch, cin, *spatial) of xdtype, int8 weight of w_shape, input
    scale / zero point, per-channel weight scales and a float bias of cout elements; with
    saturate, the extreme values everywhere. Returns (x, x_scale, x_zp, w, w_scale, bias) on
    device."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = (0, 256) if xdtype == torch.uint8 else (-128, 128)
    x = torch.randint(lo, hi, (batch, cin, *spatial), generator=gen).to(xdtype)
    w = torch.randint(-128, 128, w_shape, generator=gen).to(torch.int8)
    if saturate:
        # Extreme values everywhere: |x - zp| = 255 against w = -128 is the largest product.
        x = torch.full_like(x, hi - 1 if xdtype == torch.uint8 else -128)
        w = torch.full_like(w, -128)
    zp = int(torch.randint(lo, hi, (1,), generator=gen))
    x_scale = torch.tensor([0.02 + 0.01 * torch.rand(1, generator=gen).item()])
    w_scale = (torch.rand(cout, generator=gen) * 0.01 + 0.001).float()
    bias = torch.randn(cout, generator=gen)
    to = lambda t: t.to(device)  # noqa: E731
    return to(x), to(x_scale), to(torch.tensor([zp], dtype=torch.int32)), to(w), to(w_scale), to(bias)


def assert_same(got, want):
    """Same shape, dtype and bits (float outputs compared bit for bit)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype
    got = got.cpu()
    if got.dtype == torch.float32:
        assert torch.equal(got.contiguous().view(torch.int32), want.contiguous().view(torch.int32)), \
            (got - want).abs().max()
    else:
        assert torch.equal(got, want), (got.int() - want.int()).abs().max()


def out_qparams(out_dtype, device, scale=0.05):
    """(out_scale, out_zero_point) for a quantized out_dtype, (None, None) for a float one."""
    if out_dtype in (torch.int8, torch.uint8):
        zp = 3 if out_dtype == torch.int8 else 100
        return torch.tensor([scale], device=device), torch.tensor([zp], dtype=torch.int32, device=device)
    return None, None


def check_matches_reference(make, run, case, xdtype, out_dtype, relu, case_index):
    """Batch 1 and 2 on the CPU against the oracle."""
    for batch in (1, 2):
        x, xs, xz, w, ws, bias = make(case, batch, xdtype, seed=batch + 7 * case_index)
        os_, oz = out_qparams(out_dtype, "cpu")
        got, want = run(case, x, xs, xz, w, ws, bias, out_dtype, relu, os_, oz)
        assert_same(got, want)


def check_7bit_activations(make, run, case, out_dtype, relu, case_index):
    """uint8 activations in [0, 127] (reduce_range=True: the CPUs without VNNI multiply such
    tiles with vpmaddubsw), with both ends present, against the oracle; then the same with the
    last position of every channel at 255 against weights of -128 for the first output channel:
    a tile holding them must take the 8-bit loop (a pair of 255 x -128 products saturates
    vpmaddubsw's int16 sum) while the others stay on the 7-bit one."""
    for batch in (1, 2):
        x, xs, xz, w, ws, bias = make(case, batch, torch.uint8, seed=3 + batch + 7 * case_index)
        x = x // 2
        flat = x.view(-1)
        if flat.numel() >= 2:
            flat[0], flat[1] = 0, 127
        xz = xz // 2
        w[0] = -128
        mixed = x.clone()
        mixed[(slice(None), slice(None)) + (-1,) * (x.dim() - 2)] = 255
        os_, oz = out_qparams(out_dtype, "cpu")
        for x_case in (x, mixed):
            got, want = run(case, x_case, xs, xz, w, ws, bias, out_dtype, relu, os_, oz)
            assert_same(got, want)


def check_device_matches_reference(make, run, case, device):
    """Every input dtype and a float / uint8 / int8 output on device, against the oracle."""
    for xdtype in (torch.uint8, torch.int8):
        for out_dtype, relu in ((torch.float32, True), (torch.uint8, False), (torch.int8, True)):
            x, xs, xz, w, ws, bias = make(case, 2, xdtype, seed=3, device=device)
            os_, oz = out_qparams(out_dtype, device)
            got, want = run(case, x, xs, xz, w, ws, bias, out_dtype, relu, os_, oz)
            assert got.device.type == device
            assert_same(got, want)


def check_saturation_and_ties(make, run, corr, case, device):
    """Largest products (no int32 wrap), saturating requantization, and exact .5 ties (integer
    results halved by out_scale = 2: round half to even). corr(x, xs, xz, w, ws) is the oracle's
    float output for those tensors (on the CPU), which must hold odd integers for the ties."""
    for xdtype in (torch.uint8, torch.int8):
        x, xs, xz, w, ws, bias = make(case, 2, xdtype, seed=5, device=device, saturate=True)
        xz.fill_(0 if xdtype == torch.uint8 else 127)
        for out_dtype in (torch.int8, torch.uint8, torch.float32):
            os_, oz = out_qparams(out_dtype, device, scale=1e-3)
            got, want = run(case, x, xs, xz, w, ws, None, out_dtype, False, os_, oz)
            assert_same(got, want)
        # Ties: scales of 1 make y the integer corr; out_scale 2 puts half of them on .5.
        x, xs, xz, w, ws, bias = make(case, 2, xdtype, seed=6, device=device)
        xs.fill_(1.0)
        ws = torch.ones_like(ws)
        w = torch.randint(-2, 3, w.shape, generator=torch.Generator().manual_seed(1)).to(torch.int8).to(device)
        x = (x.int().clamp(-3, 3) if xdtype == torch.int8 else x.int().clamp(0, 6)).to(xdtype)
        xz.fill_(0 if xdtype == torch.int8 else 3)
        os_ = torch.tensor([2.0], device=device)
        for out_dtype in (torch.int8, torch.uint8):
            oz = torch.tensor([0 if out_dtype == torch.int8 else 128], dtype=torch.int32, device=device)
            got, want = run(case, x, xs, xz, w, ws, None, out_dtype, False, os_, oz)
            assert_same(got, want)
            c = corr(x.cpu(), xs.cpu(), xz.cpu(), w.cpu(), ws.cpu())
            assert ((c.abs() % 2) == 1).any(), "the test data must hold ties"


def check_noncontiguous_and_layouts(make, run, case, big_shape, case3, device):
    """Any input layout (a strided view of a big_shape tensor, channels-last, H and W swapped in
    memory) gives the same bits; the output is channels-last (channels_last_3d for the 3-d
    case3); the input is not modified."""
    x, xs, xz, w, ws, bias = make(case, 2, torch.int8, seed=2, device=device)
    big = torch.randint(-128, 128, big_shape, dtype=torch.int8, device=device)
    views = [big[:, :, ::2, ::2], x.contiguous(memory_format=torch.channels_last),
             x.transpose(2, 3).contiguous().transpose(2, 3)]
    for v in views:
        before = v.clone()
        got, want = run(case, v, xs, xz, w, ws, bias, torch.uint8, True, *out_qparams(torch.uint8, device))
        assert_same(got, want)
        assert torch.equal(v, before)
        assert got.is_contiguous(memory_format=torch.channels_last)
    x, xs, xz, w, ws, bias = make(case3, 2, torch.uint8, seed=2, device=device)
    got, want = run(case3, x, xs, xz, w, ws, bias, torch.float32, False)
    assert_same(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last_3d)


def check_low_float_out(make, run, case):
    """bfloat16 / float16 outputs equal the oracle's."""
    x, xs, xz, w, ws, bias = make(case, 2, torch.uint8, seed=4)
    for dt in (torch.bfloat16, torch.float16):
        got, want = run(case, x, xs, xz, w, ws, bias, dt, True)
        assert got.dtype == dt
        assert torch.equal(got, want)


def check_shared_bad_input(pack, call, args, fn):
    """The argument errors that conv_int8 and conv_transpose_int8 (and their packing ops) word
    alike. args(**kw) gives the arguments of a valid call (x [1, 4, 6, 6], a 3x3 kernel, 6
    output channels) with kw replaced, call(a) runs the op, fn names torch's function ("conv")."""
    with pytest.raises(RuntimeError, match="argument 'w' must be a 3-D, 4-D or 5-D"):
        pack(torch.zeros(4, 2, dtype=torch.int8), 1)
    with pytest.raises(RuntimeError, match="argument 'w' must be an int8"):
        pack(torch.zeros(4, 2, 3, 3), 1)
    for shape in ((8, 2, 3, 0), (8, 2, 0), (8, 1, 0, 3, 3)):
        w = torch.zeros(shape, dtype=torch.int8)
        with pytest.raises(RuntimeError, match="argument 'w' must have kernel sizes >= 1"):
            pack(w, 2)
        # The fake kernel (torch.compile, export) words it alike.
        with pytest.raises(RuntimeError, match="argument 'w' must have kernel sizes >= 1"):
            pack(w.to("meta"), 2)
    with pytest.raises(RuntimeError, match=f"Expected 3D \\(batched\\) input to {fn}1d"):
        call(args(k=(3,)))  # a 4-D x with a 1-d kernel
    with pytest.raises(RuntimeError, match="argument 'groups' \\(3\\) must divide the input channels of 'x' \\(4\\)"):
        a = args()
        a["groups"] = 3
        call(a)
    with pytest.raises(RuntimeError, match="argument 'stride' must hold values >= 1"):
        call(args(stride=[0]))
    with pytest.raises(RuntimeError, match="argument 'padding' must have 1 or 2 elements"):
        call(args(padding=[1, 1, 1]))
    with pytest.raises(RuntimeError, match="argument 'x_zero_point' must lie in \\[0, 255\\], got 300"):
        call(args(x_zero_point=torch.tensor([300])))
    with pytest.raises(RuntimeError, match="argument 'x_scale' must be > 0 and finite"):
        call(args(x_scale=torch.tensor([0.0])))
    with pytest.raises(RuntimeError, match="argument 'w_scale' must have 6 elements"):
        call(args(w_scale=torch.ones(5)))
    with pytest.raises(RuntimeError, match="argument 'out_scale' is required"):
        call(args(out_dtype=torch.int8))
    with pytest.raises(RuntimeError, match="argument 'x' must be an int8 or uint8 tensor"):
        call(args(x=torch.zeros(1, 4, 6, 6)))
    with pytest.raises(RuntimeError, match="argument 'kernel_size' must have 1, 2 or 3 elements"):
        call(args(kernel_size=[3, 3, 3, 3]))
