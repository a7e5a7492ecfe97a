"""State-dict loading checks shared by the quantized modules."""
import torch
from torch import nn


def integer_load_errors(module: nn.Module, state_dict, prefix: str, keys) -> list:
    """Errors for the integer buffers `keys` of module that state_dict would fill from a tensor of
    another dtype: copy_ would cast it without a word (a float 0.7 becomes 0)."""
    errors = []
    for key in keys:
        have, given = module._buffers.get(key), state_dict.get(prefix + key)
        if isinstance(have, torch.Tensor) and isinstance(given, torch.Tensor) and given.dtype != have.dtype:
            what = "weight" if key == "qweight" else key
            errors.append(f"{prefix}{key}: the quantized {type(module).__name__}'s {what} must be {have.dtype}, "
                          f"got dtype {given.dtype}")
    return errors


def positive_load_errors(module: nn.Module, state_dict, prefix: str, keys) -> list:
    """Errors for the scale buffers `keys` of module that state_dict would fill with a value that
    is not finite and > 0 (the kernels refuse one at the next call, after the load had kept it)."""
    errors = []
    for key in keys:
        given = state_dict.get(prefix + key)
        if key not in module._buffers or not isinstance(given, torch.Tensor) or not given.is_floating_point():
            continue
        bad = ~(torch.isfinite(given) & (given > 0))
        if bool(bad.any()):
            at = bad.reshape(-1).nonzero().flatten()
            first = given.reshape(-1)[at[0]].item()
            where = f" at flat position(s) {at[:10].tolist()}" if given.numel() > 1 else ""
            errors.append(f"{prefix}{key}: the quantized {type(module).__name__}'s {key} must be > 0 and finite, "
                          f"got {first}{where}")
    return errors
