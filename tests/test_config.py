"""Settings: one read of the environment and `.env`, the documented names, isolation.

`Settings` is the only class that reads the environment; its groups are plain models
filled from `CHATMEM_<GROUP>_<FIELD>`. Each documented variable name is set here, alone,
in a real environment (and in a real `.env` file) and must land on its field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from chatmem.config import LLMSettings, RedisSettings, Settings

ROOT = Path(__file__).resolve().parent.parent
# Variables of the CLI or the test suite, not settings.
NOT_SETTINGS = {"CHATMEM_URL", "CHATMEM_API_KEY", "CHATMEM_SCREENSHOTS", "CHATMEM_EXTENSION"}

# Every name the README, docs/ and SPEC §6 give: (value, where it lands, what it becomes).
DOCUMENTED: dict[str, tuple[str, str, Any]] = {
    "CHATMEM_REDIS_URL": ("redis://db:6380/1", "redis.url", "redis://db:6380/1"),
    "CHATMEM_REDIS_CLUSTER": ("true", "redis.cluster", True),
    "CHATMEM_REDIS_SENTINEL_MASTER": ("main", "redis.sentinel_master", "main"),
    "CHATMEM_REDIS_SENTINEL_PASSWORD": ("pw", "redis.sentinel_password", "pw"),
    "CHATMEM_REDIS_SOCKET_TIMEOUT_S": ("3.5", "redis.socket_timeout_s", 3.5),
    "CHATMEM_REDIS_MAX_CONNECTIONS": ("64", "redis.max_connections", 64),
    "CHATMEM_REDIS_WAIT_REPLICAS": ("1", "redis.wait_replicas", 1),
    "CHATMEM_REDIS_WAIT_TIMEOUT_MS": ("300", "redis.wait_timeout_ms", 300),
    "CHATMEM_REDIS_WAIT_STRICT": ("true", "redis.wait_strict", True),
    "CHATMEM_DATA_DIR": ("/srv/chatmem", "data_dir", Path("/srv/chatmem")),
    "CHATMEM_CHARACTERS_DIR": ("/srv/chars", "characters_dir", Path("/srv/chars")),
    "CHATMEM_DEFAULT_CHARACTER": ("teacher", "default_character", "teacher"),
    "CHATMEM_LLM_BASE_URL": ("http://llm:8080/v1", "llm.base_url", "http://llm:8080/v1"),
    "CHATMEM_LLM_API_KEY": ("sk-test", "llm.api_key", "sk-test"),
    "CHATMEM_LLM_MODEL": ("deepseek-chat", "llm.model", "deepseek-chat"),
    "CHATMEM_LLM_CONNECT_TIMEOUT_S": ("9", "llm.connect_timeout_s", 9.0),
    "CHATMEM_LLM_MAX_RETRIES": ("5", "llm.max_retries", 5),
    "CHATMEM_LLM_TEMPERATURE": ("0.2", "llm.temperature", 0.2),
    "CHATMEM_LLM_CONTEXT_WINDOW": ("4096", "llm.context_window", 4096),
    "CHATMEM_LLM_LOCAL_THREADS": ("3", "llm.local_threads", 3),
    "CHATMEM_LLM_MAX_CONNECTIONS": ("32", "llm.max_connections", 32),
    "CHATMEM_LLM_LOCAL_STATE_CACHE_MB": ("64", "llm.local_state_cache_mb", 64),
    "CHATMEM_LLM_WHOLE_JSON_REPLIES": ("true", "llm.whole_json_replies", True),
    "CHATMEM_LOCAL_MODEL_PATH": ("/m/x.gguf", "llm.local_model_path", Path("/m/x.gguf")),
    "CHATMEM_AUTH_KEYS": ("k=alice", "auth.keys", "k=alice"),
    "CHATMEM_AUTH_JWT_SECRET": ("s3cret", "auth.jwt_secret", "s3cret"),
    "CHATMEM_AUTH_JWT_ADMIN_CLAIM": ("is_staff", "auth.jwt_admin_claim", "is_staff"),
    "CHATMEM_AUTH_JWT_LEEWAY_S": ("30", "auth.jwt_leeway_s", 30),
    "CHATMEM_AUTH_MAX_FAILURES": ("3", "auth.max_failures", 3),
    "CHATMEM_AUTH_FAILURE_WINDOW_S": ("120", "auth.failure_window_s", 120),
    "CHATMEM_MEMORY_MAX_MESSAGES": ("40", "memory.max_messages", 40),
    "CHATMEM_MEMORY_DEFAULT_TTL_S": ("600", "memory.default_ttl_s", 600),
    "CHATMEM_MEMORY_WINDOW_SIZE": ("3", "memory.window_size", 3),
    "CHATMEM_MEMORY_MAX_CONTEXT_MESSAGES": ("9", "memory.max_context_messages", 9),
    "CHATMEM_MEMORY_MAX_CONTEXT_TOKENS": ("999", "memory.max_context_tokens", 999),
    "CHATMEM_MEMORY_MAX_MESSAGE_CHARS": ("77", "memory.max_message_chars", 77),
    "CHATMEM_MEMORY_SUMMARY_MAX_TOKENS": ("200", "memory.summary_max_tokens", 200),
    "CHATMEM_MEMORY_MEMORIES_MAX_TOKENS": ("100", "memory.memories_max_tokens", 100),
    "CHATMEM_MEMORY_BACKGROUND_MODEL": ("small", "memory.background_model", "small"),
    "CHATMEM_JOBS_ENABLED": ("false", "jobs.enabled", False),
    "CHATMEM_JOBS_CLAIM_IDLE_MS": ("5000", "jobs.claim_idle_ms", 5000),
    "CHATMEM_LIMITS_REQUESTS_PER_MINUTE": ("5", "limits.turns_per_minute", 5),
    "CHATMEM_LIMITS_TURNS_PER_MINUTE": ("6", "limits.turns_per_minute", 6),
    "CHATMEM_LIMITS_STREAMS_PER_USER": ("2", "limits.streams_per_user", 2),
    "CHATMEM_LIMITS_SESSION_LOCK_WAIT_MS": ("250", "limits.session_lock_wait_ms", 250),
    "CHATMEM_LIMITS_SESSION_LOCK_TTL_MS": ("9000", "limits.session_lock_ttl_ms", 9000),
    "CHATMEM_LIMITS_STARTS_IN_FLIGHT": ("4", "limits.starts_in_flight", 4),
    "CHATMEM_LIMITS_MAX_BODY_BYTES": ("20000", "limits.max_body_bytes", 20000),
    "CHATMEM_LIMITS_MAX_METADATA_BYTES": ("100", "limits.max_metadata_bytes", 100),
    "CHATMEM_LIMITS_MAX_SESSIONS_PER_USER": ("7", "limits.max_sessions_per_user", 7),
    "CHATMEM_SERVER_HOST": ("0.0.0.0", "server.host", "0.0.0.0"),
    "CHATMEM_SERVER_PORT": ("9000", "server.port", 9000),
    "CHATMEM_SERVER_WORKERS": ("4", "server.workers", 4),
    "CHATMEM_SERVER_SHUTDOWN_GRACE_S": ("3", "server.shutdown_grace_s", 3.0),
    "CHATMEM_SERVER_TRUSTED_PROXIES": ("10.0.0.0/8", "server.trusted_proxies", "10.0.0.0/8"),
}


def _get(settings: Settings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CHATMEM_ variable, and a working directory without `.env`."""
    for name in list(os.environ):
        if name.startswith("CHATMEM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_documented_variable_sets_its_field(
    name: str, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value, path, expected = DOCUMENTED[name]
    assert _get(Settings(), path) != expected  # not the default already
    monkeypatch.setenv(name, value)
    assert _get(Settings(), path) == expected


@pytest.mark.parametrize("name", ["CHATMEM_REDIS_URL", "CHATMEM_MEMORY_WINDOW_SIZE"])
def test_dotenv_sets_nested_fields_too(name: str, clean_env: Path) -> None:
    value, path, expected = DOCUMENTED[name]
    (clean_env / ".env").write_text(f"{name}={value}\nUNRELATED=1\n")
    assert _get(Settings(), path) == expected


def test_environment_wins_over_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("CHATMEM_MEMORY_WINDOW_SIZE=3\n")
    monkeypatch.setenv("CHATMEM_MEMORY_WINDOW_SIZE", "4")
    assert Settings().memory.window_size == 4


def test_env_file_none_reads_neither_environment_nor_dotenv(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each settings group read the environment and .env on its own: Settings(_env_file=None)
    still took CHATMEM_REDIS_URL, CHATMEM_MEMORY_* … from the shell or a .env file."""
    (clean_env / ".env").write_text("CHATMEM_MEMORY_WINDOW_SIZE=3\nCHATMEM_LLM_MODEL=from-file\n")
    monkeypatch.setenv("CHATMEM_REDIS_URL", "redis://from-env:1/0")
    monkeypatch.setenv("CHATMEM_AUTH_KEYS", "k=alice")
    isolated = Settings(_env_file=None)  # type: ignore[call-arg]
    assert isolated.redis.url is None
    assert isolated.memory.window_size == 10
    assert isolated.llm.model is None
    assert isolated.auth.keys == ""
    # What the caller passes is all there is.
    given = Settings(_env_file=None, redis=RedisSettings(url="redis://given:1/0"))  # type: ignore[call-arg]
    assert given.redis.url == "redis://given:1/0"
    # Without it, both are read.
    read = Settings()
    assert read.redis.url == "redis://from-env:1/0"
    assert read.memory.window_size == 3


def test_groups_read_no_environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATMEM_LLM_MODEL", "from-env")
    monkeypatch.setenv("CHATMEM_REDIS_URL", "redis://from-env:1/0")
    (clean_env / ".env").write_text("CHATMEM_LLM_API_KEY=from-file\n")
    assert LLMSettings().model is None
    assert LLMSettings().api_key is None
    assert RedisSettings().url is None


def test_every_variable_the_docs_name_is_a_setting() -> None:
    """A documented name that no setting reads would be a setting with no effect."""
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = set()
    for path in texts:
        named |= set(re.findall(r"CHATMEM_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    prefixes = {n for n in named if n in {"CHATMEM_LIMITS", "CHATMEM_REDIS"}}
    unknown = named - DOCUMENTED.keys() - NOT_SETTINGS - prefixes
    assert not unknown, f"documented but not covered here: {sorted(unknown)}"
