"""int4 group-wise weight-only quantization: the format (:mod:`.format`), its plain-torch
oracles (:mod:`.reference`) and the algorithms that choose the 4-bit values: round-to-nearest
(:func:`.format.quantize_groups`), GPTQ (:mod:`.gptq`) and AWQ (:mod:`.awq`). The whole-model
entry point is :func:`torchquant.quantize_weight_only`; the module is
:class:`torchquant.nn.quantized.LinearWeightOnlyInt4`."""
from . import awq, format, gptq, reference  # noqa: F401
from .format import choose_group_qparams, dequantize_groups, pack_int4, quantize_groups, unpack_int4  # noqa: F401
