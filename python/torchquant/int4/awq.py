"""AWQ (Lin et al. 2023) for the int4 group format: scale each input channel k of a Linear's
weight up by ``s_k`` before rounding (and the input down by ``1 / s_k``), so that the channels
whose activations are large, and whose weights therefore matter most, lose less to rounding.

``s = mean|x|^alpha`` (normalized by ``sqrt(max(s) * min(s))``), with alpha chosen on a grid of
``grid`` points in [0, 1) to minimize the output error ``||X W^T - (X / s) Q(W * s)^T||^2`` on
the calibration rows, for all the Linears that read the same input together (they must share
one ``s`` when it is folded into the op that produces that input). alpha = 0 is plain
round-to-nearest, so the chosen scale never does worse than RTN on the calibration rows. An
input channel that is 0 on every calibration row keeps s = 1 (:func:`awq_candidate_scales`).
``symmetric`` rounds with the symmetric group qparams (zero point 8) throughout.
"""
from typing import List, Sequence, Tuple

import torch

from .format import check_symmetric, choose_group_qparams, dequantize_groups, quantize_groups

__all__ = ["awq_candidate_scales", "awq_search", "rtn_fake"]


def rtn_fake(w: torch.Tensor, group_size: int, symmetric: bool = False) -> torch.Tensor:
    """Round-to-nearest int4 of w [N, K], dequantized (float32)."""
    s, z = choose_group_qparams(w, group_size, symmetric)
    return dequantize_groups(quantize_groups(w, s, z, group_size), s, z, group_size)


def awq_candidate_scales(x_abs_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """The per-input-channel scale of one grid point. A channel that is 0 on every calibration
    row gets s = 1, the middle of the others' range (they are normalized by sqrt(max * min)),
    and takes no part in that normalization."""
    # The reference implementations (llm-awq, AutoAWQ) clamp mean|x| at 1e-4, which gives such a
    # channel the smallest scale of all: its weights, divided by the group scale of much larger
    # ones, round to 0, and its input scale 1 / s multiplies it by up to 1e4 ** alpha. The loss
    # cannot see the channel (it is 0 in every row), so nothing supports shrinking it; at s = 1
    # it is rounded as a typical channel, and inputs it gets on other data pass unamplified.
    m = x_abs_mean.float()
    live = m > 0
    s = torch.ones_like(m)
    if bool(live.any()):
        sl = m[live].clamp(min=1e-4).pow(alpha)
        s[live] = sl / (sl.max() * sl.min()).sqrt()
    return s


def awq_search(x: torch.Tensor, weights: Sequence[torch.Tensor], group_size: int, grid: int = 20,
               symmetric: bool = False) -> Tuple[torch.Tensor, float, List[float]]:
    """Best per-input-channel scale s [K] for the Linears ``weights`` (each [N_i, K]) reading
    the rows x [n, K], rounded with the asymmetric or (``symmetric``) symmetric group qparams.
    Returns (s, alpha, loss per grid point)."""
    check_symmetric(symmetric)
    x = x.detach().float().reshape(-1, x.shape[-1])
    n, K = x.shape
    x_abs_mean = x.abs().mean(0)
    # The loss in blocks of output rows (each row's group qparams are its own): the rounded
    # weights and the outputs of one block at a time, where the whole layer's took several
    # copies of X W^T (a 32000-row LM head on 4096 calibration rows: about 3 GB) and of W.
    rows = max(1, min((1 << 22) // max(n, 1), (1 << 20) // max(K, 1)))
    blocks = [wi.detach()[r:r + rows] for wi in weights for r in range(0, wi.shape[0], rows)]
    # A NaN / inf weight (no quantized value: rounded as RTN rounds it in the end) counts as 0
    # here: else every loss is NaN and the search falls back to alpha = 0 for all the Linears
    # reading this input. Only the blocks holding one are copied.
    blocks = [b if bool(torch.isfinite(b).all()) else torch.nan_to_num(b.float(), nan=0.0, posinf=0.0, neginf=0.0)
              for b in blocks]
    y_ref = [x @ b.float().t() for b in blocks]
    total = n * sum(b.shape[0] for b in blocks)
    losses = []
    best = (float("inf"), None, 0.0)
    for i in range(grid):
        alpha = i / grid
        s = awq_candidate_scales(x_abs_mean, alpha)
        acc = torch.zeros((), dtype=torch.float64, device=x.device)
        for b, y in zip(blocks, y_ref):
            wq = rtn_fake(b.float() * s, group_size, symmetric) / s
            # squared in float64: calibration rows of 1e20 overflow a float32 square
            acc += ((x @ wq.t() - y).double() ** 2).sum()
        loss = float(acc / total) if total else float("nan")
        losses.append(loss)
        if loss < best[0]:
            best = (loss, s, alpha)
    if best[1] is None:  # no finite loss (rows of 1e38 overflow the product itself): alpha = 0, plain RTN
        best = (best[0], awq_candidate_scales(x_abs_mean, 0.0), 0.0)
    return best[1], best[2], losses
