"""The base of the fused float modules (LinearReLU, ConvBnReLU2d, BNReLU2d, ...)."""
import torch
from torch import nn


class FusedSequential(nn.Sequential):
    """Fused float modules run their parts in order, as nn.Sequential, and nothing else:
    ``prepare`` adds an ``activation_post_process`` child that its forward hook runs once on the
    output, which nn.Sequential's forward would run as one more part (observing twice, and in
    QAT fake-quantizing twice and updating the moving averages twice per step). TorchScript
    (a fused float model, before ``prepare``) compiles nn.Sequential's loop instead."""

    def forward(self, input):
        if torch.jit.is_scripting():
            for module in self:
                input = module(input)
            return input
        return self._run_parts(input)

    @torch.jit.unused
    def _run_parts(self, input):
        for name, module in self._modules.items():
            if name != "activation_post_process":
                input = module(input)
        return input
