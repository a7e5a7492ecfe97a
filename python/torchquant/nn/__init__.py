"""torchquant's modules: ``intrinsic`` (fused float modules), ``qat`` (fake-quantized training
modules) and ``quantized`` (int8 modules that ``convert`` swaps in)."""
import sys as _sys

from . import intrinsic, qat, quantized  # noqa: F401

# ---- sequence models: torch.ao's nn.quantized.dynamic namespace, quantized embeddings ----
from . import quantized_dynamic as _quantized_dynamic  # noqa: E402
from . import quantized_embedding as _quantized_embedding  # noqa: E402

quantized.dynamic = _quantized_dynamic
_sys.modules[__name__ + ".quantized.dynamic"] = _quantized_dynamic
quantized.Embedding = _quantized_embedding.Embedding
quantized.EmbeddingBag = _quantized_embedding.EmbeddingBag

# ---- torch.ao's fused namespaces: torch.ao.nn.intrinsic.qat / .quantized / .quantized.dynamic ----
# torchquant keeps the fused QAT and int8 classes beside the plain ones (nn.qat, nn.quantized);
# the torch.ao paths name the same modules, so that code written against torch.ao's paths
# (``model.apply(torch.nn.intrinsic.qat.freeze_bn_stats)``) ports by a name swap.
intrinsic.qat = qat
intrinsic.quantized = quantized
_sys.modules[__name__ + ".intrinsic.qat"] = qat
_sys.modules[__name__ + ".intrinsic.quantized"] = quantized
_sys.modules[__name__ + ".intrinsic.quantized.dynamic"] = _quantized_dynamic


# ---- TorchScript: torch.jit.script asks each module for __prepare_scriptable__ before compiling ----
def _refuse_script(self):
    raise RuntimeError(
        f"torch.jit.script: torchquant's quantized {type(self).__name__} cannot be scripted (torchquant's "
        "modules pass QTensors, a Python class TorchScript does not know, and call their ops from Python); "
        "use torch.jit.trace (then torch.jit.save / load), torch.export.export or torch.compile instead")


def _quantized_module_classes():
    import inspect

    from torch import nn as _nn

    for mod in list(_sys.modules.values()):
        if getattr(mod, "__name__", "").startswith(__name__ + ".quantized"):
            for _, cls in inspect.getmembers(mod, inspect.isclass):
                # The modules convert / quantize_dynamic / quantize_weight_only make (they have
                # from_float); not FloatFunctional, which float models hold and which scripts.
                if (issubclass(cls, _nn.Module) and cls.__module__.startswith(__name__ + ".quantized")
                        and hasattr(cls, "from_float")):
                    yield cls


for _cls in set(_quantized_module_classes()):
    _cls.__prepare_scriptable__ = _refuse_script
