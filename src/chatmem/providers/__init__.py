"""Chat model providers: the seam (`base`), its implementations, and the factory.

Implementations are imported lazily by `make_provider`, so that importing this
package costs neither the HTTP client nor llama.cpp.
"""

from chatmem.providers.base import (
    ChatProvider,
    GenerationParams,
    ModelInfo,
    StreamChunk,
    TokenUsage,
)
from chatmem.providers.factory import make_provider

__all__ = [
    "ChatProvider",
    "GenerationParams",
    "ModelInfo",
    "StreamChunk",
    "TokenUsage",
    "make_provider",
]
