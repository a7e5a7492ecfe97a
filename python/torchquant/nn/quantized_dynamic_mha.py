"""Dynamic int8 ``nn.MultiheadAttention``: its four projections (query, key, value, output) are
dynamic int8 Linear layers (activations quantized per row inside the kernel, weights int8 per
output channel); the attention itself (scores, softmax, the weighted sum) stays in the input's
float dtype, as in torch.ao's dynamic modules every nonlinear step does.

torch.ao has no dynamic MultiheadAttention: its ``quantize_dynamic`` skips the module (whose
forward reads ``in_proj_weight`` and ``out_proj.weight`` itself), so a model built on
``nn.TransformerEncoderLayer``, torchvision's ViT or ``nn.Transformer`` keeps the projections that
are most of its attention's work in float. ``torchquant.quantize_dynamic(model,
{nn.Linear, nn.MultiheadAttention})`` (and the default set) swaps it for this module.

The forward takes what ``nn.MultiheadAttention.forward`` takes and gives what it gives (masks,
``need_weights``, ``average_attn_weights``, ``is_causal``, ``batch_first``, unbatched inputs,
``kdim`` / ``vdim``, ``add_bias_kv``, ``add_zero_attn``, dropout in training mode), through the
same steps as ``torch.nn.functional.multi_head_attention_forward`` with each projection replaced
by its int8 layer. The query, key and value projections are three layers: a dynamic int8 layer
quantizes each input row on its own, so ``q_proj(x)`` is exactly the first third of a fused
3E-wide projection of ``x``.

    >>> qmodel = torchquant.quantize_dynamic(model, {nn.Linear, nn.MultiheadAttention})
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..qtensor import QTensor
from .quantized import DynamicLinear, _lazy, _LazyFloatDtypeWeight

__all__ = ["MultiheadAttention"]


def _float(x):
    return x.dequantize() if isinstance(x, QTensor) else x


class MultiheadAttention(nn.Module):
    """Dynamic int8 multi-head attention (see the module's docstring). Build it with
    :meth:`from_float` or ``torchquant.quantize_dynamic``; the constructor makes one with zero
    weights, for loading a state dict (``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` hold the
    int8 projections, ``bias_k`` / ``bias_v`` the float biases of ``add_bias_kv``).

    ``in_proj_weight`` (when ``kdim == vdim == embed_dim``), ``q_proj_weight`` / ``k_proj_weight``
    / ``v_proj_weight`` (otherwise) and ``in_proj_bias`` read as the float module's do: the int8
    weights as QTensors whose ``dtype`` is the float dtype (their codes are read when used), the
    bias as a float tensor. ``in_proj_weight`` and ``in_proj_bias`` stack the three projections'
    tensors into new ones: a write into them does not reach the module (write into
    ``q_proj.qweight`` / ``q_proj.bias`` and the others, or load a state dict)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, batch_first: bool = False, dtype=torch.float32):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"MultiheadAttention: embed_dim and num_heads must be greater than 0, got "
                             f"embed_dim={embed_dim} and num_heads={num_heads} instead")
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        if self.head_dim * num_heads != embed_dim:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by num_heads "
                             f"({num_heads})")
        self.q_proj = DynamicLinear(embed_dim, embed_dim, bias)
        self.k_proj = DynamicLinear(self.kdim, embed_dim, bias)
        self.v_proj = DynamicLinear(self.vdim, embed_dim, bias)
        self.out_proj = DynamicLinear(embed_dim, embed_dim, bias)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.zeros(1, 1, embed_dim, dtype=dtype), requires_grad=False)
            self.bias_v = nn.Parameter(torch.zeros(1, 1, embed_dim, dtype=dtype), requires_grad=False)
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn

    # ---- what the float module's attributes read as
    @property
    def in_proj_weight(self):
        if not self._qkv_same_embed_dim:
            return None
        return _lazy(_LazyFloatDtypeWeight, (self.q_proj, self.k_proj, self.v_proj))

    @property
    def in_proj_bias(self) -> Optional[torch.Tensor]:
        bs = [self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]
        return None if bs[0] is None else torch.cat(bs).to(self.q_proj._float_dtype)

    q_proj_weight = property(lambda self: None if self._qkv_same_embed_dim else self.q_proj.weight)
    k_proj_weight = property(lambda self: None if self._qkv_same_embed_dim else self.k_proj.weight)
    v_proj_weight = property(lambda self: None if self._qkv_same_embed_dim else self.v_proj.weight)

    # ---- conversion
    @classmethod
    def from_float(cls, mod: nn.Module, name: Optional[str] = None) -> "MultiheadAttention":
        name = name or type(mod).__name__
        if not isinstance(mod, nn.MultiheadAttention):
            raise TypeError(f"{name}: MultiheadAttention.from_float expects an nn.MultiheadAttention, got "
                            f"{type(mod).__name__}")
        qconfig = getattr(mod, "qconfig", None)
        E, bias = mod.embed_dim, mod.in_proj_bias is not None
        if mod._qkv_same_embed_dim:
            ws = mod.in_proj_weight.chunk(3)
        else:
            ws = (mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight)
        bs = mod.in_proj_bias.chunk(3) if bias else (None, None, None)
        out = mod.out_proj
        dtype = ws[0].dtype if ws[0].dtype.is_floating_point else torch.float32
        new = cls(E, mod.num_heads, mod.dropout, bias, mod.bias_k is not None, mod.add_zero_attn,
                  mod.kdim, mod.vdim, mod.batch_first, dtype=dtype)
        for attr, w, b in (("q_proj", ws[0], bs[0]), ("k_proj", ws[1], bs[1]), ("v_proj", ws[2], bs[2])):
            setattr(new, attr, DynamicLinear.from_float(_as_linear(w, b, qconfig), name=f"{name}.{attr}"))
        # out_proj: under its own qconfig (the module's, propagated); one set to None stays float
        out_qconfig = getattr(out, "qconfig", qconfig)
        if out_qconfig is None:
            new.out_proj = _as_linear(out.weight, out.bias, None, copy=True)
        else:
            new.out_proj = DynamicLinear.from_float(_as_linear(out.weight, out.bias, out_qconfig),
                                                    name=f"{name}.out_proj")
        if mod.bias_k is not None:
            new.bias_k = nn.Parameter(mod.bias_k.detach().clone(), requires_grad=False)
            new.bias_v = nn.Parameter(mod.bias_v.detach().clone(), requires_grad=False)
        device = ws[0].device
        return new.to(device) if device.type != "meta" else new

    # ---- forward
    def forward(self, query, key, value, key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        for name, t in (("query", query), ("key", key), ("value", value)):
            if isinstance(t, torch.Tensor) and t.is_nested:
                # (torch's float module takes them in its fused fast path only; its slow path
                # refuses them too)
                raise NotImplementedError(
                    f"{self._get_name()}: argument '{name}' is a NestedTensor, which the int8 attention does not "
                    f"take: pass the padded tensor ({name}.to_padded_tensor(0.0)) with a key_padding_mask that is "
                    "True at the padded positions")
        # (each projection is its own layer: nothing depends on query, key and value being one tensor)
        query, key, value = _float(query), _float(key), _float(value)
        if query.dim() == 3 and self.batch_first:
            query, key, value = (x.transpose(1, 0) for x in (query, key, value))
            out, weights = self._attend(query, key, value, key_padding_mask, need_weights, attn_mask,
                                        average_attn_weights, is_causal)
            return out.transpose(1, 0), weights
        return self._attend(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                            is_causal)

    def _attend(self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal):
        """F.multi_head_attention_forward's steps (sequence-first inputs), the projections int8."""
        H = self.num_heads
        is_batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, H)
        if not is_batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        tgt_len, bsz, embed_dim = query.shape
        # (AssertionError where torch's function raises one)
        if embed_dim != self.embed_dim:
            raise AssertionError(f"MultiheadAttention: expected the query's last dimension to be embed_dim="
                               f"{self.embed_dim}, got {embed_dim} (argument 'query', shape {tuple(query.shape)})")
        for arg, t, d in (("key", key, self.kdim), ("value", value, self.vdim)):
            if t.shape[-1] != d:
                raise RuntimeError(f"MultiheadAttention: expected the {arg}'s last dimension to be "
                                   f"{'kdim' if arg == 'key' else 'vdim'}={d}, got {t.shape[-1]} (argument "
                                   f"'{arg}', shape {tuple(t.shape)})")
        if key.shape[:2] != value.shape[:2]:
            raise AssertionError(f"MultiheadAttention: key's sequence and batch dims {tuple(key.shape[:2])} do not "
                               f"match value's {tuple(value.shape[:2])}")
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                               "method `generate_square_subsequent_mask` to create this mask.")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # (scaled_dot_product_attention builds the causal mask)
        else:
            attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                          target_type=query.dtype, check_other=False)
            if key_padding_mask is not None:
                is_causal = False

        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)

        src_len = key.shape[0]
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if attn_mask.shape != (tgt_len, src_len):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {attn_mask.shape}, but should be "
                                       f"{(tgt_len, src_len)}.")
                attn_mask = attn_mask.unsqueeze(0)
            elif attn_mask.dim() == 3:
                if attn_mask.shape != (bsz * H, tgt_len, src_len):
                    raise RuntimeError(f"The shape of the 3D attn_mask is {attn_mask.shape}, but should be "
                                       f"{(bsz * H, tgt_len, src_len)}.")
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.to(k.dtype).repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.to(v.dtype).repeat(1, bsz, 1)])
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))

        hd = self.head_dim
        q = q.reshape(tgt_len, bsz * H, hd).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * H, hd).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * H, hd).transpose(0, 1)
        if self.add_zero_attn:
            zeros = torch.zeros((bsz * H, 1, hd), dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        src_len = k.size(1)
        if key_padding_mask is not None:
            if key_padding_mask.shape != (bsz, src_len):
                raise AssertionError(f"expecting key_padding_mask shape of {(bsz, src_len)}, but got "
                                   f"{key_padding_mask.shape}")
            key_padding_mask = key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, H, -1, -1) \
                .reshape(bsz * H, 1, src_len)
            attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
        dropout_p = self.dropout if self.training else 0.0

        if need_weights:
            q_scaled = q * math.sqrt(1.0 / float(hd))
            if is_causal and attn_mask is None:
                raise RuntimeError("MultiheadAttention: is_causal needs attn_mask when need_weights=True")
            if attn_mask is not None:
                weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
            else:
                weights = torch.bmm(q_scaled, k.transpose(-2, -1))
            weights = F.softmax(weights, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
            out = self.out_proj(out).view(tgt_len, bsz, embed_dim)
            weights = weights.view(bsz, H, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not is_batched:
                out, weights = out.squeeze(1), weights.squeeze(0)
            return out, weights
        if attn_mask is not None:
            if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
                attn_mask = attn_mask.unsqueeze(0)
            else:
                attn_mask = attn_mask.view(bsz, H, -1, src_len)
        q, k, v = q.view(bsz, H, tgt_len, hd), k.view(bsz, H, src_len, hd), v.view(bsz, H, src_len, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
        out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)
        out = self.out_proj(out).view(tgt_len, bsz, embed_dim)
        return (out if is_batched else out.squeeze(1)), None

    def extra_repr(self) -> str:
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
        if not self._qkv_same_embed_dim:
            s += f", kdim={self.kdim}, vdim={self.vdim}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bias_k is not None:
            s += ", add_bias_kv=True"
        if self.add_zero_attn:
            s += ", add_zero_attn=True"
        return s + f", batch_first={self.batch_first}"


def _as_linear(w: torch.Tensor, b: Optional[torch.Tensor], qconfig, copy: bool = False) -> nn.Linear:
    """A float nn.Linear on (w, b) carrying qconfig, for DynamicLinear.from_float (``copy``: on
    copies of them, kept as the float layer)."""
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta", dtype=w.dtype)
    lin.weight = nn.Parameter(w.detach().clone() if copy else w.detach(), requires_grad=copy and w.requires_grad)
    if b is not None:
        lin.bias = nn.Parameter(b.detach().clone() if copy else b.detach(), requires_grad=copy and b.requires_grad)
    if qconfig is not None:
        lin.qconfig = qconfig
    return lin
