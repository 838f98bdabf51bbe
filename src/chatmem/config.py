"""Settings: one object with nested groups, read once from `CHATMEM_*` variables and `.env`.

Only `Settings` reads the environment; the groups are plain models. A variable is
`CHATMEM_<GROUP>_<FIELD>`, split at the first `_` after the prefix: `CHATMEM_REDIS_URL`
is `redis.url`, `CHATMEM_LLM_BASE_URL` `llm.base_url`, `CHATMEM_MEMORY_WINDOW_SIZE`
`memory.window_size`; the top-level fields keep their own names (`CHATMEM_DATA_DIR`,
`CHATMEM_CHARACTERS_DIR`), and `CHATMEM_LOCAL_MODEL_PATH` (SPEC §6) is `llm.local_model_path`.

`Settings(_env_file=None)` reads neither the environment nor a `.env` file: it holds
exactly what its caller passes (tests). Settings are built by `create_app(settings)` and
the CLI, never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

_GROUP = ConfigDict(extra="ignore")


class RedisSettings(BaseModel):
    model_config = _GROUP

    # None ⇒ embedded redis-server on a unix socket in the data dir.
    url: str | None = None
    cluster: bool = False
    sentinel_master: str = "mymaster"
    sentinel_password: str | None = None
    socket_timeout_s: float = 2.0
    connect_timeout_s: float = 2.0
    pool_timeout_s: float = 2.0
    # Opened as needed. Under load a command holds its connection until the event loop
    # gets back to it: size it for the streams one process serves at once (see
    # docs/operations.md).
    max_connections: int = Field(1024, ge=1)
    # Write concern: after each write, WAIT for this many replicas (0: don't wait).
    wait_replicas: int = Field(0, ge=0)
    wait_timeout_ms: int = Field(500, ge=1)
    # A write that too few replicas confirmed: refused with 503 `store_not_replicated`
    # (True) instead of accepted, a turn's answer saying `memory: "unconfirmed"` (False).
    wait_strict: bool = False

    @model_validator(mode="after")
    def _wait_within_socket_timeout(self) -> RedisSettings:
        # Else a lagging replica would look like a dead Redis (the socket read times out).
        if self.wait_replicas and self.wait_timeout_ms >= self.socket_timeout_s * 1000:
            raise ValueError("wait_timeout_ms must be shorter than socket_timeout_s")
        return self


class MemorySettings(BaseModel):
    model_config = _GROUP

    max_messages: int = Field(100, ge=2, le=100_000)
    default_ttl_s: int = Field(24 * 3600, ge=60)
    window_size: int = Field(10, ge=1, le=20)
    max_context_messages: int = Field(50, ge=1)
    max_context_tokens: int = Field(20_000, ge=1)
    max_message_chars: int = Field(4000, ge=1)
    # Memory beyond the window (SPEC §2b); a character's `memory` policy switches them.
    summary_max_tokens: int = Field(400, ge=0)
    # Messages that left the window are summarized once this many rounds of them wait.
    summary_batch_rounds: int = Field(2, ge=1, le=20)
    memories_max_tokens: int = Field(300, ge=0)
    memory_ttl_s: int = Field(90 * 24 * 3600, ge=60)
    # Memories are extracted after every this many rounds.
    extract_every_rounds: int = Field(3, ge=1, le=50)
    # The model of summaries, extraction and titles (None: the chat model).
    background_model: str | None = None
    background_max_tokens: int = Field(300, ge=16, le=4096)
    # Generated session titles (after the first exchange).
    generate_titles: bool = True


class JobSettings(BaseModel):
    """Background jobs on Redis (store/jobs.py, chat/jobs.py)."""

    model_config = _GROUP

    # Memory beyond the window (summaries, memories, generated titles) and this
    # process's worker; off: sessions keep their pure window.
    enabled: bool = True
    # A job pending this long with a consumer that did not touch it is taken by another.
    claim_idle_ms: int = Field(60_000, ge=100)
    max_attempts: int = Field(5, ge=1, le=100)
    backoff_base_ms: int = Field(1_000, ge=1)
    backoff_max_ms: int = Field(300_000, ge=1)
    # How long one XREADGROUP waits (below the Redis socket timeout).
    poll_block_ms: int = Field(1_000, ge=1, le=1_500)
    # Retries due, dead consumers' jobs and the gauges are looked at this often.
    housekeeping_ms: int = Field(1_000, ge=10)


class ModelPrice(BaseModel):
    """US dollars per one million tokens."""

    input_per_1m: float = 0.0
    output_per_1m: float = 0.0


def _default_prices() -> dict[str, ModelPrice]:
    return {
        "gpt-3.5-turbo": ModelPrice(input_per_1m=0.5, output_per_1m=1.5),
        "gpt-4": ModelPrice(input_per_1m=30.0, output_per_1m=60.0),
        "gpt-4o": ModelPrice(input_per_1m=2.5, output_per_1m=10.0),
        "gpt-4o-mini": ModelPrice(input_per_1m=0.15, output_per_1m=0.6),
        "deepseek-chat": ModelPrice(input_per_1m=0.27, output_per_1m=1.1),
    }


class LLMSettings(BaseModel):
    model_config = _GROUP

    provider: Literal["auto", "openai", "local"] = "auto"
    base_url: str | None = None
    api_key: str | None = None
    model: str | None = None
    temperature: float = 0.7
    max_tokens: int = 512
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    max_retries: int = 2
    # Upstream connections per process: one per reply being streamed.
    max_connections: int = Field(1024, ge=1)
    retry_backoff_s: float = 0.25
    # JSON turns ask an OpenAI-compatible model for the whole reply in one request
    # instead of a stream: far less CPU per turn (one read, not one per token), but a
    # JSON turn stopped half-way (POST …/stop, a shutdown) then keeps no partial text.
    whole_json_replies: bool = False
    # Context window assumed for remote models whose window is not known.
    context_window: int = 128_000
    # Also CHATMEM_LOCAL_MODEL_PATH (see Settings).
    local_model_path: Path | None = None
    local_n_ctx: int = 2048
    local_threads: int | None = None
    local_queue_size: int = 16
    # Memory for the prompt states of recent conversations (the KV cache of each, ~23 KiB
    # a token with SmolLM2-135M): a returning user's history is not evaluated again.
    # 0: keep none.
    local_state_cache_mb: int = Field(256, ge=0)
    prices: dict[str, ModelPrice] = Field(default_factory=_default_prices)

    @property
    def resolved_provider(self) -> Literal["openai", "local"]:
        if self.provider != "auto":
            return self.provider
        return "openai" if (self.base_url or self.api_key) else "local"


class AuthSettings(BaseModel):
    model_config = _GROUP

    # Comma-separated `key=user_id` or `key=user_id:admin` entries; keys of 16+ characters.
    keys: str = ""
    # HS256, at least 32 bytes. Tokens must carry `sub` and `exp`.
    jwt_secret: str | None = None
    # The claim that makes a token's holder an admin when it is `true`; nothing else does.
    jwt_admin_claim: str = "admin"
    # Clock skew tolerated on `exp`, `nbf` and `iat`.
    jwt_leeway_s: int = Field(5, ge=0, le=300)
    # Failed authentication per client address: past `max_failures` within
    # `failure_window_s`, 429 until the window ends (0: no limit).
    max_failures: int = Field(10, ge=0)
    failure_window_s: int = Field(60, ge=1, le=24 * 3600)

    @property
    def enabled(self) -> bool:
        return bool(self.keys.strip() or self.jwt_secret)


class LimitSettings(BaseModel):
    model_config = _GROUP

    # Sliding one-minute windows per user (0: no limit): chat turns, and other writes
    # (creating a session, …). `requests_per_minute` is the turns budget's older name.
    turns_per_minute: int = Field(
        120,
        # CHATMEM_LIMITS_TURNS_PER_MINUTE or CHATMEM_LIMITS_REQUESTS_PER_MINUTE (Settings).
        validation_alias=AliasChoices("turns_per_minute", "requests_per_minute"),
    )
    writes_per_minute: int = 600
    # Generations running at once per user, across processes (0: no cap).
    streams_per_user: int = 4
    # A generation renews its session's lock every third of this; a process that dies
    # stops renewing, and its session is free (and its reply recovered) within this.
    session_lock_ttl_ms: int = Field(10_000, ge=300)
    session_lock_wait_ms: int = 1500
    # Turn starts in flight at once per process (a start: from its session reserved to
    # its generation running), and finishes (storing a reply whose deltas are out);
    # more wait in line, none is refused, so that a burst of starts or ends cannot
    # starve the streams still running (0: no bound).
    starts_in_flight: int = Field(16, ge=0)
    # Bounded input (SPEC §3.1, §8): past these a request is refused with a 4xx.
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    # Character imports and writes (a Card V2 with its lorebook can be large; admins only).
    max_import_body_bytes: int = Field(1024 * 1024, ge=1024)
    max_metadata_bytes: int = Field(4 * 1024, ge=2)
    # Per-user caps, so that one user cannot push others' data out of a capped Redis
    # (0: no cap). Bytes are the stored size of the user's messages.
    max_sessions_per_user: int = Field(1000, ge=0)
    max_stored_bytes_per_user: int = Field(64 * 1024 * 1024, ge=0)


class ServerSettings(BaseModel):
    model_config = _GROUP

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    shutdown_grace_s: float = 10.0
    # Comma-separated addresses or networks of reverse proxies whose X-Forwarded-For
    # (and X-Forwarded-Proto) `chatmem serve` trusts; empty: the peer address is the client.
    trusted_proxies: str = ""


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("chatmem"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHATMEM_",
        env_file=".env",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
    )

    data_dir: Path = Field(default_factory=_default_data_dir)
    characters_dir: Path | None = None
    # The character new chats start with when the client names none (the page preselects
    # it); unset: the one that suits the model (Luna for the bundled local model), else
    # `assistant`.
    default_character: str | None = None
    # CHATMEM_LOCAL_MODEL_PATH, the documented name of llm.local_model_path (which wins).
    local_model_path: Path | None = Field(None, exclude=True, repr=False)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)

    @model_validator(mode="after")
    def _local_model_path_into_llm(self) -> Settings:
        if self.local_model_path is not None and self.llm.local_model_path is None:
            self.llm = self.llm.model_copy(update={"local_model_path": self.local_model_path})
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `_env_file=None` asks for no .env: then no environment either (a test's settings
        # are what the test says, whatever the shell or CI exports).
        if getattr(dotenv_settings, "env_file", ".env") is None:
            return (init_settings,)
        return init_settings, env_settings, dotenv_settings, file_secret_settings
