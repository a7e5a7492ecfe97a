"""GPTQ (Frantar et al. 2022) for the int4 group format: quantize a Linear's weight one input
column at a time and spread each column's rounding error over the columns not yet quantized,
weighted by the inverse Hessian ``H = 2/n * X^T X`` of the layer's calibration inputs.

:func:`gptq_quantize` works on one weight and its Hessian (memory: the K x K Hessian, its
Cholesky factor, and the weight); :class:`HessianAccumulator` builds the Hessian from the rows
a forward hook sees. Blocked ("lazy batch") updates: columns are processed in blocks of
``blocksize``; inside a block the error updates the block only, and the block's accumulated
error updates the rest of the weight in one matrix product. ``symmetric`` fixes every zero point
at 8 (GPTQ's ``sym=True``): only the groups' scales are chosen, from the same weights.
"""
import math
import warnings
from typing import Optional, Tuple

import torch

from .._stack import user_stacklevel
from .format import QMAX, check_symmetric, choose_group_qparams, num_groups

__all__ = ["HessianAccumulator", "gptq_quantize", "gptq_reference"]


class HessianAccumulator:
    """Running ``H = 2/n * sum_rows x x^T`` (float64) of the rows a Linear sees."""

    def __init__(self, in_features: int, device=None):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.rows = 0
        self.calls = 0  # (calls on empty inputs too: "saw no rows" is not "not called")

    def add(self, x: torch.Tensor):
        self.calls += 1
        # (the rows counted, not -1: reshape(-1, 0) of an input with K = 0 is ambiguous)
        x = x.detach().reshape(math.prod(x.shape[:-1]), x.shape[-1]).to(self.H.device, torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        total = self.rows + n
        self.H.mul_(self.rows / total)
        self.H.addmm_(x.t(), x, alpha=2.0 / total)
        self.rows = total


def _warn_few_rows(H: torch.Tensor, rows: int, percdamp: float, name: str) -> None:
    """Warns when H [K, K] was built from fewer calibration rows than K (a rank-deficient
    Hessian), with the condition number of its dampened form."""
    K = H.shape[0]
    if rows >= K:
        return
    # H has rank <= rows < K: its smallest eigenvalue is 0, so the dampened one's condition
    # number is (lambda_max + d) / d, lambda_max from a few power iterations (matrix-vector
    # products, where torch.linalg.cond's SVD cost more than the whole GPTQ solve).
    d = percdamp * float(torch.diag(H).mean())
    v = torch.full((K,), K ** -0.5, dtype=H.dtype, device=H.device)
    for _ in range(30):
        v = H @ v
        v = v / v.norm().clamp_min(1e-300)
    lam = float(v @ (H @ v))
    cond = (lam + d) / d if d > 0 else float("inf")
    warnings.warn(f"GPTQ: {name} saw {rows} calibration rows for K = {K} inputs: its Hessian has rank "
                  f"<= {rows} and condition number about {cond:.3g} after dampening {percdamp:g}; pass more "
                  "calibration data", RuntimeWarning, stacklevel=user_stacklevel())


def _inverse_cholesky(H: torch.Tensor, percdamp: float, name: str) -> Tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp I)^-1; damp starts at percdamp * mean(diag H) and grows
    tenfold until the factorization succeeds (a Hessian that is not positive definite after
    dampening: rank-deficient with rounding below zero, or indefinite). H (the caller's own copy)
    is dampened in place and holds H + damp I after the call: with it, at most three K x K
    matrices are alive at once (H, the factor, the inverse), where an identity matrix and the
    dampened sum beside them made five."""
    K = H.shape[0]
    if not bool(torch.isfinite(H).all()):
        raise ValueError(f"GPTQ: the inputs of {name} on the calibration data hold NaN or inf (its Hessian is not "
                         "finite): check 'calib_data' and the layers before it")
    diag = H.diagonal()
    mean_diag = float(diag.mean()) if K else 1.0
    if not math.isfinite(mean_diag) or mean_diag <= 0:
        mean_diag = 1.0
    damp = percdamp * mean_diag
    d0 = diag.clone()
    for attempt in range(12):
        torch.add(d0, damp, out=diag)
        L, info = torch.linalg.cholesky_ex(H)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            del Hinv
            if int(info) == 0 and bool(torch.isfinite(U).all()):
                if attempt:
                    warnings.warn(f"GPTQ: the Hessian of {name} is not positive definite with dampening "
                                  f"{percdamp:g} * mean(diag); used {damp / mean_diag:.3g} * mean(diag)",
                                  RuntimeWarning, stacklevel=user_stacklevel())
                return U, damp
            del U
        else:
            del L
        damp *= 10.0
    raise torch.linalg.LinAlgError(f"GPTQ: the Hessian of {name} could not be factorized even with dampening "
                                   f"{damp / mean_diag:.3g} * mean(diag)")


def check_percdamp(percdamp) -> None:
    """GPTQ's dampening fraction: a finite number > 0 (True was taken as 1.0, 0 ran undamped)."""
    if (isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not math.isfinite(percdamp)
            or percdamp <= 0):
        raise ValueError(f"argument 'percdamp' must be a finite number > 0 (a fraction of the Hessian's mean "
                         f"diagonal, e.g. 0.01), got {percdamp!r}")


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, group_size: int, percdamp: float = 0.01,
                  blocksize: int = 128, act_order: bool = False, rows: Optional[int] = None,
                  name: str = "the layer", symmetric: bool = False
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ of W [N, K] with Hessian H [K, K]: returns (q uint8 [N, K] in 0..15, scale float32
    [N, G], zero_point int64 [N, G]) of the int4 group format (``symmetric``: zero points 8,
    scales from :func:`.format.choose_group_qparams`'s symmetric mode).

    ``act_order`` visits columns by decreasing Hessian diagonal; the groups stay contiguous in
    the original K order (their qparams are then chosen up front from W: "static groups").
    Without it, a group's qparams are chosen from the error-updated weights when its first
    column is reached, as in the reference implementation. ``rows``: how many calibration rows
    built H; fewer than K (a rank-deficient Hessian) warns with H's condition number. A NaN or
    inf weight is quantized as 0 (the rest of its row and group as usual).
    """
    check_symmetric(symmetric)
    check_percdamp(percdamp)
    W = W.detach().to(torch.float64, copy=True)  # (one copy: .to() then .clone() made two)
    N, K = W.shape
    # a NaN / inf weight has no quantized value; taken as 0, its error (NaN or inf) does not
    # spread over the rest of its row, which is quantized as usual
    W.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    H = H.detach().to(torch.float64, copy=True)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    if rows is not None:
        _warn_few_rows(H, rows, percdamp, name)
    G = num_groups(K, group_size)
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        scale_all, zero_all = choose_group_qparams(W.float(), group_size, symmetric)
        W = W[:, perm]
        H = H[perm][:, perm]
    else:
        perm = torch.arange(K, device=W.device)
        scale_all = torch.empty(N, G, dtype=torch.float32, device=W.device)
        zero_all = torch.empty(N, G, dtype=torch.int64, device=W.device)
    Hinv, _ = _inverse_cholesky(H, percdamp, name)
    del H  # (dampened in place; only its inverse's factor is read from here)
    Q = torch.empty(N, K, dtype=torch.uint8, device=W.device)  # the codes 0..15, exact
    perm_list = perm.tolist()  # one host read, not one per column (a sync each on a GPU)
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = perm_list[i1 + i]
            g = col // group_size
            if not act_order and col % group_size == 0:
                # qparams from the error-updated weights of this group (columns col.. are in W1 / W);
                # only the group's own columns are gathered
                need = min(group_size, K - col)
                upd = W1[:, i:i + need]
                if upd.shape[1] < need:
                    # a group past the block's end: its columns in W lack this block's error so far
                    # (W gets it at the block's end; Err1's columns from i on are still 0)
                    j2 = i2 + need - upd.shape[1]
                    upd = torch.cat([upd, torch.addmm(W[:, i2:j2], Err1, Hinv[i1:i2, i2:j2], alpha=-1)], 1)
                s, z = choose_group_qparams(upd.float(), group_size, symmetric)
                scale_all[:, g], zero_all[:, g] = s[:, 0], z[:, 0]
            s = scale_all[:, g].double()
            z = zero_all[:, g].double()
            w = W1[:, i]
            q = torch.clamp(torch.round(w.float() * (1.0 / scale_all[:, g])).double() + z, 0, QMAX)
            dq = (q - z) * s
            Q[:, i1 + i] = q.to(torch.uint8)
            err = (w - dq) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:].addmm_(Err1, Hinv[i1:i2, i2:], alpha=-1)  # in place: no [N, K - i2] product
    q = torch.empty_like(Q)
    q[:, perm] = Q
    return q, scale_all, zero_all


def gptq_reference(W: torch.Tensor, H: torch.Tensor, group_size: int, percdamp: float = 0.01,
                   symmetric: bool = False):
    """Unblocked GPTQ in the textbook form (no lazy batches, no act-order): after quantizing
    column i, ``W[:, j] -= (w_i - dq_i) / [H^-1]_ii * [H^-1]_ij`` for j > i, then H^-1 loses row
    and column i (the Schur complement). The test compares :func:`gptq_quantize` with it."""
    check_symmetric(symmetric)
    W = W.detach().double().clone()
    N, K = W.shape
    H = H.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H = H + percdamp * torch.diag(H).mean() * torch.eye(K, dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    G = num_groups(K, group_size)
    scale = torch.empty(N, G)
    zero = torch.empty(N, G, dtype=torch.int64)
    q = torch.empty(N, K, dtype=torch.uint8)
    for i in range(K):
        g = i // group_size
        if i % group_size == 0:
            s, z = choose_group_qparams(W[:, i:i + group_size].float(), group_size, symmetric)
            scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
        qi = torch.clamp(torch.round(W[:, i].float() * (1.0 / scale[:, g])).double() + zero[:, g], 0, QMAX)
        q[:, i] = qi.to(torch.uint8)
        err = (W[:, i] - (qi - zero[:, g]) * scale[:, g].double()) / Hinv[i, i]
        W[:, i + 1:] -= err.unsqueeze(1) * Hinv[i, i + 1:].unsqueeze(0)
        Hinv[i + 1:, i + 1:] -= Hinv[i + 1:, i:i + 1] @ Hinv[i:i + 1, i + 1:] / Hinv[i, i]
    return q, scale, zero
