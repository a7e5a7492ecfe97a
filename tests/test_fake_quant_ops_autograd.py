"""The fake-quantize ops under autograd and torch.compile: the learnable ops traced with dynamic
shapes (their fake kernels), and the non-learnable functions refusing qparams that require grad."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

import torchquant as tq

ops = torch.ops.torchquant


def _qparams(c, gen, requires_grad=True):
    s = torch.rand(c, generator=gen) * 0.1 + 0.02
    z = torch.randint(100, 150, (c,), generator=gen).float()
    return s.requires_grad_(requires_grad), z.requires_grad_(requires_grad)


def _layouts(gen):
    """(name, x, axis): per-channel inputs in several memory layouts."""
    x4 = torch.randn(2, 6, 3, 5, generator=gen) * 4
    yield "2d", torch.randn(4, 6, generator=gen) * 4, 1
    yield "channels_last", x4.contiguous(memory_format=torch.channels_last), 1
    yield "transposed", x4.transpose(1, 3), 3
    yield "strided", (torch.randn(4, 12, generator=gen) * 4)[:, ::2], -1


# ---------------------------------------------------------------- learnable ops, dynamic shapes
@pytest.mark.parametrize("layout", ["2d", "channels_last", "transposed", "strided"])
def test_opcheck_learnable_per_channel(layout):
    gen = torch.Generator().manual_seed(0)
    name, x, axis = next(item for item in _layouts(gen) if item[0] == layout)
    s, z = _qparams(x.shape[axis], gen)
    # every check, test_aot_dispatch_dynamic (symbolic sizes) among them
    torch.library.opcheck(ops.fake_quantize_learnable.default,
                          (x.clone().requires_grad_(), s, z, axis, 0, 255, 1.0))
    g = torch.randn(x.shape, generator=gen)
    torch.library.opcheck(ops.fake_quantize_learnable_backward.default,
                          (g, x, s.detach(), z.detach(), axis, 0, 255, 0.5))


def test_fake_kernels_have_the_kernels_strides():
    """Shapes, dtypes and strides of the fake kernels' outputs equal the real ones, also with
    symbolic sizes and for gradients in another layout than x."""
    gen = torch.Generator().manual_seed(1)
    for name, x, axis in _layouts(gen):
        for per_channel in (True, False):
            c = x.shape[axis] if per_channel else 1
            s, z = _qparams(c, gen, requires_grad=False)
            if not per_channel:
                s, z = s.reshape(()), z.to(torch.int32)
            a = axis if per_channel else None
            for g in (torch.randn(x.shape, generator=gen), torch.randn(x.shape[::-1], generator=gen).permute(
                    *range(x.dim() - 1, -1, -1))):
                for op, args in ((ops.fake_quantize_learnable.default, (x, s, z, a, 0, 255, 1.0)),
                                 (ops.fake_quantize_learnable_backward.default, (g, x, s, z, a, 0, 255, 1.0))):
                    real = op(*args)
                    real = real if isinstance(real, tuple) else (real,)
                    for dynamic in (False, True):
                        mode = FakeTensorMode(shape_env=ShapeEnv() if dynamic else None, static_shapes=not dynamic)
                        fargs = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in args]
                        with mode:
                            fake = op(*fargs)
                        fake = fake if isinstance(fake, tuple) else (fake,)

                        def hint(v):
                            return int(v.node.hint) if isinstance(v, torch.SymInt) else v

                        for r, f in zip(real, fake):
                            got = (tuple(map(hint, f.shape)), tuple(map(hint, f.stride())), f.dtype)
                            assert got == (tuple(r.shape), r.stride(), r.dtype), (name, per_channel, op, dynamic)


def test_fake_kernel_checks_the_channel_count():
    x, s, z = torch.randn(4, 6), torch.full((5,), 0.1), torch.zeros(5)
    with pytest.raises(RuntimeError, match="argument 'scale' must have 6 element"):
        ops.fake_quantize_learnable(x, s, z, 1, 0, 255, 1.0)
    mode = FakeTensorMode(shape_env=ShapeEnv(), static_shapes=False)
    with mode, pytest.raises(RuntimeError, match="argument 'scale' must have"):
        ops.fake_quantize_learnable(*(mode.from_tensor(t) for t in (x, s, z)), 1, 0, 255, 1.0)


def _grads(fn, x, s, z):
    x, s, z = (t.detach().clone().requires_grad_() for t in (x, s, z))
    y = fn(x, s, z)
    y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
    return y.detach(), x.grad, s.grad, z.grad


@pytest.mark.parametrize("dynamic", [True, None])
def test_compile_learnable_per_channel_matches_eager(dynamic):
    """torch.compile (dynamic=True, or automatic dynamic shapes: the second channel count
    recompiles with symbolic sizes) gives eager's values and gradients bit for bit."""
    def fn(x, s, z):
        return tq.fake_quantize_learnable_per_channel_affine(x, s, z, 1, 0, 255, 0.5)

    compiled = torch.compile(fn, dynamic=dynamic, backend="aot_eager", fullgraph=True)
    gen = torch.Generator().manual_seed(2)
    for c in (6, 8, 5):
        x = torch.randn(3, c, 4, generator=gen) * 4
        s, z = _qparams(c, gen)
        want = _grads(fn, x, s, z)
        got = _grads(compiled, x, s, z)
        for w, g in zip(want, got):
            assert g.shape == w.shape and g.dtype == w.dtype and torch.equal(g, w), c


# ---------------------------------------------------------------- non-learnable: no qparam gradients
def _per_tensor(x, s, z):
    return tq.fake_quantize_per_tensor_affine(x, s, z, -128, 127)


def _per_channel(x, s, z):
    return tq.fake_quantize_per_channel_affine(x, s, z, 1, -128, 127)


_TORCH_FNS = {_per_tensor: torch.fake_quantize_per_tensor_affine,
              _per_channel: lambda x, s, z: torch.fake_quantize_per_channel_affine(x, s, z, 1, -128, 127)}


@pytest.mark.parametrize("fn,c,learnable", [(_per_tensor, 1, "fake_quantize_learnable_per_tensor_affine"),
                                             (_per_channel, 6, "fake_quantize_learnable_per_channel_affine")])
@pytest.mark.parametrize("x_requires_grad", [True, False])
def test_fake_quantize_refuses_a_scale_that_requires_grad(fn, c, learnable, x_requires_grad):
    x = torch.randn(4, 6).requires_grad_(x_requires_grad)
    s, z = torch.full((c,), 0.05, requires_grad=True), torch.zeros(c, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'scale'") as info:
        fn(x, s, z)
    assert f"torchquant.{learnable}" in str(info.value)
    # torch's function of the same name refuses it too
    torch_fn = _TORCH_FNS[fn]
    args = (s, z, -128, 127) if fn is _per_tensor else (s, z)
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'scale'"):
        torch_fn(x, *args)
    # not recorded by autograd: nothing to refuse
    with torch.no_grad():
        y = fn(x, s, z)
    assert torch.equal(y, fn(x.detach(), s.detach(), z))
    assert torch.equal(y, torch_fn(x.detach(), *((s.detach(),) + args[1:])))


@pytest.mark.parametrize("fn,c", [(_per_tensor, 1), (_per_channel, 6)])
def test_fake_quantize_refuses_a_zero_point_that_requires_grad(fn, c):
    # Only a floating-point (or complex) tensor can require grad, and the zero point is an integer
    # code: such a zero point is refused, with or without autograd.
    x = torch.randn(4, 6, requires_grad=True)
    s = torch.full((c,), 0.05)
    for z in (torch.zeros(c, requires_grad=True), torch.zeros(c, dtype=torch.complex64, requires_grad=True)):
        with pytest.raises(RuntimeError, match="argument 'zero_point'"):
            fn(x, s, z)
        with torch.no_grad(), pytest.raises(RuntimeError, match="argument 'zero_point'"):
            fn(x, s, z)


def test_fake_quantize_x_gradient_unchanged():
    x = torch.randn(4, 6, requires_grad=True)
    s, z = torch.full((6,), 0.05), torch.zeros(6, dtype=torch.int32)
    _per_channel(x, s, z).sum().backward()
    want = torch.ones_like(x)  # every element inside the range
    assert torch.equal(x.grad, want)
