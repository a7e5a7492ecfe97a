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
