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
