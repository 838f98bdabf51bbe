"""Pick the provider that the settings ask for (SPEC §5: no key and no base URL ⇒ local)."""

from __future__ import annotations

from chatmem.config import LLMSettings
from chatmem.providers.base import ChatProvider


def make_provider(settings: LLMSettings) -> ChatProvider:
    """Build, without connecting or loading anything yet, the configured provider."""
    if settings.resolved_provider == "openai":
        from chatmem.providers.openai_compat import OpenAICompatProvider

        return OpenAICompatProvider(settings)
    from chatmem.providers.local import LocalLlamaProvider

    return LocalLlamaProvider(settings)
