"""Who sees a character's prompts: admins only, on every route (SPEC §8).

A character's system prompt and post-history instructions can be an operator's work
product. With auth on, a caller who is not an admin sees, wherever a prompt would show
(`GET /roles`, `GET /v1/sessions/{sid}/context`), a placeholder and the prompt's token
count instead. In open mode every caller is the admin.
"""

from __future__ import annotations

from typing import Any

from chatmem.context import AssembledContext
from chatmem.models import Character
from chatmem.tokens import count_tokens


def placeholder(what: str, tokens: int) -> str:
    return f"[{what} hidden: {tokens} tokens; only admins see it]"


def role_view(ch: Character, *, show_prompts: bool) -> dict[str, Any]:
    """A character as the seed's `/roles` lists it: name, prompt, description."""
    view: dict[str, Any] = {"name": ch.name, "description": ch.description}
    if show_prompts:
        view["prompt"] = ch.system_prompt
    else:
        tokens = count_tokens(ch.system_prompt)
        view["prompt"] = placeholder("system prompt", tokens)
        view["prompt_hidden"] = True
        view["prompt_tokens"] = tokens
    return view


def context_messages(
    ctx: AssembledContext,
    character: Character,
    *,
    system_tokens: int,
    post_history_tokens: int,
    show_prompts: bool,
) -> list[dict[str, Any]]:
    """The context's messages, its prompts replaced unless `show_prompts`.

    The system prompt is the first message and the post-history instructions the last,
    when the character has them (see `context.assemble_context`).
    """
    out: list[dict[str, Any]] = [dict(m) for m in ctx.messages]
    if show_prompts or not out:
        return out
    if character.system_prompt and out[0]["role"] == "system":
        out[0] = _hidden("system prompt", system_tokens)
    if character.post_history_instructions and out[-1]["role"] == "system":
        out[-1] = _hidden("post-history instructions", post_history_tokens)
    return out


def _hidden(what: str, tokens: int) -> dict[str, Any]:
    return {
        "role": "system",
        "content": placeholder(what, tokens),
        "hidden": True,
        "token_count": tokens,
    }
