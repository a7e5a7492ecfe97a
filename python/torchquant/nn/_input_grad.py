"""The gradient of a weight-quantized Linear with respect to its input.

The int8 dynamic and int4 weight-only ops have no autograd formula of their own: a float input
that requires grad (an adapter or an earlier float layer being trained through a frozen
quantized layer, QLoRA-style) would get an output that does not, or no gradient at all. Where
the input requires grad, the modules run the op inside :class:`InputGrad`, whose backward is
``dL/dx = dL/dy @ W`` with ``W`` the layer's effective float weight [N, K], made from its
portable buffers in backward only (the straight-through estimator for the dynamic input
quantization). The quantized weights themselves are integer buffers: they get no gradient.
Inference (no grad, or an input that does not require it) runs the op as before, and so does
a ``torch.jit.trace`` (its graph is for inference: no gradient reaches the input through it).
"""
from typing import Callable

import torch


class InputGrad(torch.autograd.Function):
    # forward / setup_context apart and a generated vmap rule: torch.func's transforms (grad,
    # vmap of grad, jacrev) run through it as plain autograd does
    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, run: Callable, weight: Callable, relu: bool):
        return run(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, weight, relu = inputs
        ctx.weight = weight
        ctx.relu = relu
        ctx.x_dtype = x.dtype
        if relu:  # a fused ReLU passes the gradient where its output is positive
            ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        if ctx.relu:
            (y,) = ctx.saved_tensors
            gy = gy * (y > 0)
        # (under torch.compile this runs inside the traced backward, where a write to any Python
        # object is refused: the weight callables read a compact layer's weight without recording
        # it, nn/_compact.py _traced_read)
        w = ctx.weight().to(gy.device)
        gx = gy.to(w.dtype) @ w
        return gx.to(ctx.x_dtype), None, None, None


def needs_input_grad(x: torch.Tensor) -> bool:
    # Not under torch.jit.trace, which cannot record a Function given Python callables (it failed
    # with "unordered_map::at" on a model whose float layers require grad, traced outside no_grad):
    # the traced graph runs the op for inference, as torch.ao's traced dynamic modules do.
    return torch.is_grad_enabled() and x.requires_grad and not torch.jit.is_tracing()
