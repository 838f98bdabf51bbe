"""The embedded model's recent prompt states, so that a returning session is not
evaluated again from its first token.

llama.cpp keeps one KV cache: the tokens it last evaluated. `Llama.generate` reuses
the longest prefix of the new prompt that the cache still holds, so a session that
takes two turns in a row pays only for its new message; but when another session ran
in between, the cache holds that one's prompt and the whole history (~1 300 tokens:
~7 s on one thread) is evaluated again.

`PromptStates` keeps, after each generation, a copy of the KV cache's sequence 0
(llama.cpp's `llama_state_seq_get_data`: the keys and values of the evaluated tokens,
no logits) with the tokens it holds, least recently used first, within
`budget_bytes` (`CHATMEM_LLM_LOCAL_STATE_CACHE_MB`). Before a generation, the state
sharing the longest prefix with the new prompt is put back when it beats what the
cache already holds, and `generate` evaluates only the rest. Not thread-safe: the
provider's one worker thread is the only caller.

A state costs about 23 KiB per token with SmolLM2-135M (30 layers × 3 KV heads × 64
× 2 (K and V) × 2 bytes): ~30 MiB for a 1 300-token conversation.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

# numpy and llama_cpp come with chatmem[local]; they are imported where used, so that
# importing the provider module costs nothing without them.

SEQ = 0  # the one sequence chatmem's generations use
# A state whose tokens the new one repeats this much of is superseded by it (the same
# conversation one turn on, or the same prompt regenerated).
SUPERSEDED_SHARE = 0.9
# Shorter prefixes than this are not worth a restore (a shared system prompt, say).
MIN_GAIN_TOKENS = 16


@dataclass(eq=False, slots=True)
class PromptState:
    tokens: Any  # numpy array of token ids
    data: ctypes.Array[ctypes.c_uint8]
    size: int


def common_prefix(a: Any, b: Any) -> int:
    """How many tokens `a` and `b` (numpy arrays) share from the start."""
    import numpy as np

    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class PromptStates:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._states: OrderedDict[int, PromptState] = OrderedDict()
        self._next = 0
        self.bytes = 0
        self.restores = 0

    def __len__(self) -> int:
        return len(self._states)

    def clear(self) -> None:
        self._states.clear()
        self.bytes = 0

    def save(self, llama: Any) -> None:
        """Keep the KV cache's current state (after a generation)."""
        import llama_cpp
        import numpy as np

        n = int(llama.n_tokens)
        if self.budget_bytes <= 0 or n == 0:
            return
        tokens = np.array(llama.input_ids[:n], dtype=np.intc)
        ctx = llama.ctx
        size = int(llama_cpp.llama_state_seq_get_size(ctx, SEQ))
        if size <= 0 or size > self.budget_bytes:
            return
        for key, old in list(self._states.items()):
            if common_prefix(old.tokens, tokens) >= SUPERSEDED_SHARE * len(old.tokens):
                self._drop(key)
        data = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(ctx, data, size, SEQ))
        if written <= 0:
            return
        self._states[self._next] = PromptState(tokens, data, written)
        self._next += 1
        self.bytes += size
        while self.bytes > self.budget_bytes and self._states:
            self._drop(next(iter(self._states)))

    def restore(self, llama: Any, prompt: list[int]) -> int:
        """Put back the state that shares the longest prefix with `prompt`, when it beats
        what the KV cache holds now; how many of the prompt's tokens are then cached."""
        import llama_cpp
        import numpy as np

        wanted = np.array(prompt, dtype=np.intc)
        held = common_prefix(np.array(llama.input_ids[: llama.n_tokens]), wanted)
        best_key, best = None, held + MIN_GAIN_TOKENS - 1
        for key, state in self._states.items():
            shared = common_prefix(state.tokens, wanted)
            if shared > best:
                best_key, best = key, shared
        if best_key is None:
            return held
        state = self._states[best_key]
        self._states.move_to_end(best_key)
        ctx = llama.ctx
        llama._ctx.kv_cache_seq_rm(SEQ, 0, -1)
        if int(llama_cpp.llama_state_seq_set_data(ctx, state.data, state.size, SEQ)) == 0:
            self._drop(best_key)
            llama.n_tokens = 0  # the cache is in an unknown state: evaluate from scratch
            return 0
        n = len(state.tokens)
        llama.input_ids[:n] = state.tokens
        llama.n_tokens = n
        # The logits are not part of the state: `generate` must evaluate before sampling.
        llama._requires_eval = True
        self.restores += 1
        return best

    def _drop(self, key: int) -> None:
        state = self._states.pop(key)
        self.bytes -= len(state.data)
