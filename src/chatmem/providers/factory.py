"""Pick the provider that the settings ask for (SPEC §5: no key and no base URL ⇒ local),
and the character that suits its model."""

from __future__ import annotations

from chatmem.config import LLMSettings
from chatmem.providers.base import ChatProvider


def make_provider(settings: LLMSettings) -> ChatProvider:
    """Build, without connecting or loading anything yet, the configured provider."""
    if settings.resolved_provider == "openai":
        from chatmem.providers.openai_whole import OpenAIWholeReplies

        # OpenAICompatProvider, and JSON turns in one request if so configured.
        return OpenAIWholeReplies(settings)
    from chatmem.providers.local import LocalLlamaProvider

    return LocalLlamaProvider(settings)


# The bundled SmolLM2-135M speaks English only: it answers a Chinese role with
# punctuation. Luna is the built-in English companion.
BUNDLED_MODEL_CHARACTER = "luna"


def suggested_character(settings: LLMSettings) -> str | None:
    """The character that suits the configured model, when chatmem knows one: Luna for
    the bundled local model; None (the general default) for any other model."""
    if settings.resolved_provider == "local" and settings.local_model_path is None:
        return BUNDLED_MODEL_CHARACTER
    return None
