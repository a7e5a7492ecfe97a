"""The fake kernels of conv_int8 and conv_transpose_int8 (what torch.compile and torch.export
trace with) refuse the geometries that the kernels refuse, with the kernels' messages; the public
output-size helpers take ints and raise ValueError for those geometries; calibrate and report
pass a PackedSequence batch to the model as one input."""
import copy

import pytest
import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import torchquant
from torchquant.conv import conv_output_size
from torchquant.conv_transpose import conv_transpose_output_size

ops = torch.ops.torchquant
BIG = 1 << 62


def _conv_args(x, k, stride, padding, dilation, output_padding=None):
    """The op's arguments after x for a weight of 3 input and 4 output channels."""
    shape = (3, 4, *k) if output_padding is not None else (4, 3, *k)
    w = torch.randint(-5, 5, shape, generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    if output_padding is None:
        wp, cs = ops.pack_conv_weight(w, 1)
        geometry = [list(k), stride, padding, dilation]
    else:
        wp, cs = ops.pack_conv_transpose_weight(w, 1)
        geometry = [list(k), stride, padding, output_padding, dilation]
    return [torch.tensor([0.1]), torch.tensor([3], dtype=torch.int32), wp, cs, torch.ones(4), None, *geometry, 1,
            None, None, False, None]


def _message(fn):
    with pytest.raises(RuntimeError) as info:
        fn()
    return str(info.value).split("\n")[0]


def _eager_and_fake(op, x, args):
    """The eager kernel's and the fake kernel's errors for the same call."""
    eager = _message(lambda: op(x, *args))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = _message(lambda: op(mode.from_tensor(x), *args))
    return eager, fake


# (x's spatial sizes, kernel, stride, padding, output_padding, dilation)
CONV_TRANSPOSE_REFUSED = [
    ((1,), (1,), [3], [1], [1], [1]),        # an output of size 0: padding is too large
    ((1,), (3,), [1], [2], [0], [1]),        # an output of size -1
    ((4, 4), (3, 3), [2], [-1], [0], [1]),   # a negative padding
    ((4,), (3,), [0], [0], [0], [1]),        # a stride of 0
    ((4,), (3,), [1], [0], [0], [0]),        # a dilation of 0
    ((4,), (3,), [2], [0], [-1], [1]),       # a negative output_padding
    ((4,), (3,), [2], [0], [2], [1]),        # output_padding not below stride or dilation
    ((0, 3), (3, 3), [1], [0], [0], [1]),    # an input of no rows
    ((4,), (1,), [BIG], [0], [0], [1]),      # an output size past int64
    ((4,), (3,), [1, 1], [0], [0], [1]),     # a stride of two values for a 1-d kernel
]


@pytest.mark.parametrize("sizes,k,stride,padding,output_padding,dilation", CONV_TRANSPOSE_REFUSED)
def test_conv_transpose_fake_refuses_what_the_kernel_refuses(sizes, k, stride, padding, output_padding, dilation):
    x = torch.randint(0, 255, (2, 3, *sizes), dtype=torch.uint8)
    args = _conv_args(x, k, stride, padding, dilation, output_padding)
    eager, fake = _eager_and_fake(ops.conv_transpose_int8, x, args)
    assert fake == eager


CONV_REFUSED = [
    ((4,), (5,), [2], [0], [1]),             # the padded input (4) below the kernel (5): no output
    ((2,), (5,), [1], [0], [1]),             # a negative output size
    ((4, 4), (3, 3), [0], [0], [1]),         # a stride of 0
    ((4,), (3,), [1], [-1], [1]),            # a negative padding
    ((4,), (1,), [1], [0], [0]),             # a dilation of 0
    ((4,), (3,), [1], [BIG], [1]),           # a padded input past int64
    ((4,), (3,), [1], [0], [BIG]),           # a dilated kernel past int64
    ((4,), (3,), [1], [0, 0], [1]),          # a padding of two values for a 1-d kernel
]


@pytest.mark.parametrize("sizes,k,stride,padding,dilation", CONV_REFUSED)
def test_conv_fake_refuses_what_the_kernel_refuses(sizes, k, stride, padding, dilation):
    x = torch.randint(0, 255, (2, 3, *sizes), dtype=torch.uint8)
    eager, fake = _eager_and_fake(ops.conv_int8, x, _conv_args(x, k, stride, padding, dilation))
    assert fake == eager


@pytest.mark.parametrize("transposed", [False, True])
def test_fake_kernels_keep_the_shapes_of_accepted_geometries(transposed):
    op = ops.conv_transpose_int8 if transposed else ops.conv_int8
    for sizes, k, stride, padding, dilation in [((1, 5), (1, 3), [2, 1], [0], [1]), ((3,), (3,), [1], [1], [2]),
                                                ((2, 2, 2), (2, 1, 1), [1], [0, 0, 0], [1])]:
        x = torch.randint(0, 255, (2, 3, *sizes), dtype=torch.uint8)
        args = _conv_args(x, k, stride, padding, dilation, [0] if transposed else None)
        real = op(x, *args)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = op(mode.from_tensor(x), *args)
        assert fake.shape == real.shape and fake.stride() == real.stride()


def test_output_size_helpers_take_ints():
    assert conv_transpose_output_size([5, 5], [3, 3], 2, 1, 1, 1) == [10, 10]
    assert conv_transpose_output_size([5, 5], 3, 2, 1, 1, 1) == [10, 10]
    assert conv_transpose_output_size([5, 5], [3, 3], [2], [1], [1], [1]) == [10, 10]
    assert conv_output_size([5, 5], [3, 3], 2, 1, 1) == [3, 3]
    assert conv_output_size([5, 7], 3, 1, 0, [1, 2]) == [3, 3]


@pytest.mark.parametrize("args,message", [
    (([1], [3], [1], [2], [0], [1]), r"would have size -1 in spatial dimension 0 .*: padding is too large"),
    (([1], [1], 3, 1, 1, 1), r"would have size 0 in spatial dimension 0"),
    (([5], [3], [2], [0], [5], [1]),
     r"argument 'output_padding' must be smaller than either stride or dilation, got output_padding=\[5\], "
     r"stride=\[2\], dilation=\[1\]"),
    (([5], [3], 0, 0, 0, 1), r"argument 'stride' must hold values >= 1, got \[0\]"),
    (([5], [3], 1, -1, 0, 1), r"argument 'padding' must hold values >= 0, got \[-1\]"),
    (([5], [3], 1, 0, 0, 0), r"argument 'dilation' must hold values >= 1, got \[0\]"),
    (([0], [3], 1, 0, 0, 1), r"argument 'in_sizes' must have non-zero spatial sizes"),
    (([5], [3, 3], 1, 0, 0, 1), r"argument 'kernel_size' must have one value per input size \(1\)"),
])
def test_conv_transpose_output_size_refuses_what_the_op_refuses(args, message):
    with pytest.raises(ValueError, match=message):
        conv_transpose_output_size(*args)


@pytest.mark.parametrize("args,message", [
    (([4], [5], 1, 0, 1), r"the padded input of 'in_sizes' \(size 4 in spatial dimension 0\) is smaller than the "
                          r"dilated kernel \(size 5\)"),
    (([5], [3], 0, 0, 1), r"argument 'stride' must hold values >= 1, got \[0\]"),
    (([5], [3], 1, -1, 1), r"argument 'padding' must hold values >= 0, got \[-1\]"),
    (([5], [3], 1, 0, 0), r"argument 'dilation' must hold values >= 1, got \[0\]"),
])
def test_conv_output_size_refuses_what_the_op_refuses(args, message):
    with pytest.raises(ValueError, match=message):
        conv_output_size(*args)


# ---------------------------------------------------------------- PackedSequence batches
def _lstms():
    torch.manual_seed(0)
    f = nn.LSTM(4, 5).eval()
    return f, torchquant.quantize_dynamic(copy.deepcopy(f), {nn.LSTM}, dtype=torch.qint8)


def _inputs_seen(*models):
    seen = []
    for m in models:
        m.register_forward_pre_hook(lambda m, args: seen.append(type(args[0])))
    return seen


def test_calibrate_passes_a_packed_sequence_batch_whole():
    _, q = _lstms()
    ps = pack_sequence([torch.randn(3, 4), torch.randn(2, 4)])
    seen = _inputs_seen(q)
    torchquant.calibrate(q, [ps, (ps, torch.zeros(2))], progress=False)
    assert seen == [PackedSequence, PackedSequence]
    with pytest.raises(TypeError, match=r"got PackedSequence \(wrap a single batch in a list: \[x\]\)"):
        torchquant.calibrate(q, ps, progress=False)


def test_report_passes_a_packed_sequence_batch_whole():
    f, q = _lstms()
    ps = pack_sequence([torch.randn(3, 4), torch.randn(2, 4)], enforce_sorted=False)
    seen = _inputs_seen(f, q)
    r = torchquant.report(f, q, [ps])
    assert seen == [PackedSequence, PackedSequence]
    with torch.no_grad():
        want = f(ps)[0].data
        err = float((want - q(ps)[0].data).abs().max())
    assert r[""].numel == want.numel() and r[""].max_abs_error == pytest.approx(err, rel=1e-5)
    seen.clear()
    torchquant.report(f, q, ps)  # a PackedSequence as data: one batch
    assert seen == [PackedSequence, PackedSequence]
