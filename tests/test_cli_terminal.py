"""`chatmem chat` in a real terminal (tmux): arrow keys, history, a 10 KB paste, a slash
command, keys typed during a reply, Ctrl+C; and `chatmem serve`'s start-up banner."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from chatmem.cli.serve import startup_banner
from chatmem.cli.terminal import clean_typeahead
from chatmem.config import Settings
from tests.api_support import make_test_settings
from tests.fake_openai import FakeOpenAI, Reply
from tests.live_server import LiveServer

REPLY = "Nice to meet you."
PROMPT = "you ›"


# The model's default answer here (the `fake` fixture of tests/conftest.py reads it).
pytestmark = pytest.mark.fake_model(default=Reply(text=REPLY))


@pytest.fixture
def live(redis_url: str, fake: FakeOpenAI, tmp_path: Path) -> Iterator[LiveServer]:
    settings = make_test_settings(
        redis_url, fake.base_url, tmp_path / "server", memory={"max_message_chars": 20_000}
    )
    with LiveServer(settings) as server:
        yield server


class Tmux:
    """A terminal of its own (its own tmux server), 100 × 30."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.socket = f"chatmem-test-{uuid.uuid4().hex[:8]}"
        env_args = [f"{k}={v}" for k, v in env.items()]
        self.tmux("new-session", "-d", "-x", "100", "-y", "30", "env", *env_args, *command)
        # The pane stays (with what it showed) after the chat exits.
        self.tmux("set-option", "-t", "0", "remain-on-exit", "on")

    def tmux(self, *args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-l", text)

    def paste(self, text: str) -> None:
        self.tmux("load-buffer", "-", stdin=text)
        self.tmux("paste-buffer", "-p", "-d")  # -p: bracketed, as a terminal pastes

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-")

    def wait_for(self, check: Callable[[str], bool], what: str, timeout_s: float = 20) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.screen()
            if check(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)


@pytest.fixture
def terminal(live: LiveServer, tmp_path: Path) -> Iterator[Callable[..., Tmux]]:
    if not shutil.which("tmux"):
        pytest.skip("no tmux (make test installs it)")
    opened: list[Tmux] = []

    def start(*args: str) -> Tmux:
        env = {
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "CHATMEM_DATA_DIR": str(tmp_path / "client"),
            "TERM": "xterm-256color",
            "COLUMNS": "100",
        }
        t = Tmux([sys.executable, "-m", "chatmem", "chat", "--url", live.url, *args], env)
        opened.append(t)
        return t

    yield start
    for t in opened:
        t.close()


def prompts(screen: str) -> int:
    return screen.count(PROMPT)


def at_prompt(screen: str) -> bool:
    lines = [ln for ln in screen.splitlines() if ln.strip()]
    return bool(lines) and lines[-1].strip() == PROMPT


def sent(fake: FakeOpenAI) -> list[str]:
    return [body["messages"][-1]["content"] for body in fake.chat_bodies]


def test_line_editing_history_paste_and_a_slash_command(
    terminal: Callable[..., Tmux], fake: FakeOpenAI, tmp_path: Path
) -> None:
    t = terminal("-c", "luna")
    t.wait_for(lambda s: prompts(s) == 1, "the first prompt")

    # Arrow keys edit the line: "helo", ←, "l" is "hello" (no ^[[D in it).
    t.type("helo")
    t.keys("Left")
    t.type("l")
    t.keys("Enter")
    t.wait_for(lambda s: prompts(s) == 2 and REPLY in s, "the first reply")
    assert sent(fake) == ["hello"]
    assert "^[[" not in t.screen()

    # ↑ recalls it from the history.
    t.keys("Up")
    t.wait_for(lambda s: s.rstrip().endswith(f"{PROMPT} hello"), "the recalled line")
    t.keys("Enter")
    t.wait_for(lambda s: prompts(s) == 3, "the second reply")
    assert sent(fake) == ["hello", "hello"]

    # A 10 KB paste arrives whole (a terminal's line discipline would cut it at 4095).
    big = "".join(f"{i:05d} " for i in range(1700))  # 10 200 characters
    t.paste(big)
    t.keys("Enter")
    t.wait_for(lambda s: len(sent(fake)) == 3 and at_prompt(s), "the reply", timeout_s=30)
    assert sent(fake)[-1] == big.strip()

    t.type("/usage")
    t.keys("Enter")
    t.wait_for(lambda s: "held in memory" in s and at_prompt(s), "/usage")

    t.keys("C-d")
    history = tmp_path / "client" / "chat_history"
    t.wait_for(lambda s: history.exists(), "the history file")
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    assert "hello" in history.read_text()


def test_keys_typed_during_a_reply_wait_for_the_next_prompt_and_ctrl_c_is_quiet(
    terminal: Callable[..., Tmux], fake: FakeOpenAI
) -> None:
    words = " ".join(f"word{i}" for i in range(30))
    fake.script(Reply(text=words, delay_s=0.08), Reply(text="slow " * 200, delay_s=0.05))
    t = terminal("-c", "luna")
    t.wait_for(lambda s: prompts(s) == 1, "the first prompt")
    t.type("tell me")
    t.keys("Enter")
    t.wait_for(lambda s: "word3" in s, "the reply streaming")
    t.type("typed ahead")
    screen = t.wait_for(lambda s: prompts(s) == 2, "the end of the reply")
    reply_lines = [ln for ln in screen.splitlines() if "word0" in ln or "word29" in ln]
    assert all("typed" not in ln for ln in reply_lines), screen
    assert screen.rstrip().endswith(f"{PROMPT} typed ahead")

    t.keys("C-u")
    t.type("go on")
    t.keys("Enter")
    t.wait_for(lambda s: "slow slow" in s, "the slow reply")
    t.keys("C-c")
    time.sleep(0.2)
    t.keys("C-c")
    t.keys("C-c")
    screen = t.wait_for(
        lambda s: "[stopped]" in s or s.count(PROMPT) >= 3 or "$" in s.splitlines()[-1:],
        "the stop",
    )
    time.sleep(1)
    assert "Traceback" not in t.screen()


def test_clean_typeahead() -> None:
    assert clean_typeahead("ab\x1b[Dc\x1b[200~x\x1b[201~\r\x03") == "abcx "


def test_serve_banner_says_url_model_data_dir_and_auth(tmp_path: Path) -> None:
    local = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    text = startup_banner(local)
    assert "http://127.0.0.1:8000/" in text and str(tmp_path) in text
    assert "(local, llama.cpp)" in text and "open (X-User-Id" in text
    remote = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        llm={"base_url": "https://api.example.com/v1", "model": "m1"},
        auth={"keys": "k" * 16 + "=ann"},
        server={"host": "0.0.0.0", "port": 9000},
    )
    text = startup_banner(remote, workers=4)
    assert "http://0.0.0.0:9000/  (4 workers)" in text
    assert "m1 at https://api.example.com/v1" in text and "auth     API keys" in text


def test_replies_are_rendered_as_markdown_on_a_terminal(
    terminal: Callable[..., Tmux], fake: FakeOpenAI
) -> None:
    reply = (
        "Here is **bold** text.\n\n| name | value |\n|------|-------|\n| alpha | 1 |\n\n"
        "```python\nprint('hi')\n```\n\n- one\n- two"
    )
    fake.script(Reply(text=reply, chunks=8, delay_s=0.05))
    t = terminal("-c", "luna")
    t.wait_for(lambda s: prompts(s) == 1, "the first prompt")
    t.type("markdown please")
    t.keys("Enter")
    screen = t.wait_for(lambda s: "out tokens" in s and at_prompt(s), "the reply")
    shown = screen[screen.index("markdown please") :]
    assert "Here is bold text." in shown and "**" not in shown
    assert "alpha" in shown and "|------|" not in shown  # a drawn table, not the source
    assert "print('hi')" in shown and "```" not in shown
    assert "• one" in shown


def test_sessions_table_keeps_every_field_at_80_columns(live: LiveServer) -> None:
    h = {"X-User-Id": "narrow"}
    body = {"character_id": "luna", "title": "Trip to Kyoto"}
    sid = httpx.post(f"{live.url}/v1/sessions", json=body, headers=h).json()["session"][
        "session_id"
    ]
    httpx.post(
        f"{live.url}/v1/sessions/{sid}/messages",
        json={"content": "temples?"},
        headers=h,
        timeout=30,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "80"}
    cmd = [sys.executable, "-m", "chatmem", "sessions", "--url", live.url, "--user", "narrow"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=True)
    lines = res.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 80, res.stdout
    for field in (sid, "Trip to Kyoto", "luna", "3 msgs", "tok", "$", REPLY[:12]):
        assert field in res.stdout, (field, res.stdout)


def test_slash_commands_regenerate_continue_edit_fork_context_memories(
    terminal: Callable[..., Tmux], fake: FakeOpenAI, live: LiveServer
) -> None:
    fake.script(
        Reply(text="Red is a colour."),
        Reply(text="Blue is a colour."),
        Reply(text=" So is green."),
    )
    t = terminal("-c", "luna", "-u", "slash-user")
    t.wait_for(lambda s: prompts(s) == 1, "the first prompt")
    t.type("name a colour")
    t.keys("Enter")
    t.wait_for(lambda s: prompts(s) == 2 and "Red is a colour." in s, "the reply")

    def run(command: str, done: Callable[[str], bool], what: str) -> str:
        n = prompts(t.screen())
        t.type(command)
        t.keys("Enter")
        return t.wait_for(lambda s: prompts(s) == n + 1 and done(s) and at_prompt(s), what)

    run("/regenerate", lambda s: "Blue is a colour." in s, "/regenerate")
    run("/continue", lambda s: "So is green." in s, "/continue")
    h = {"X-User-Id": "slash-user"}
    (meta,) = httpx.get(live.url + "/v1/sessions", headers=h).json()["sessions"]
    sid = meta["session_id"]
    msgs = httpx.get(live.url + f"/v1/sessions/{sid}/messages", headers=h).json()["messages"]
    last = msgs[-1]
    assert last["content"] == "Blue is a colour. So is green."
    assert last["alternatives"] == 2
    assert fake.chat_bodies[-1]["messages"][-1]["content"] == "Blue is a colour."

    # /edit alone puts the last message on the prompt to change.
    n = prompts(t.screen())
    t.type("/edit")
    t.keys("Enter")
    t.wait_for(lambda s: s.rstrip().endswith(f"{PROMPT} name a colour"), "the line to edit")
    t.keys("C-u")
    t.type("name a fruit")
    t.keys("Enter")
    t.wait_for(lambda s: "edited" in s and prompts(s) == n + 2 and at_prompt(s), "/edit")
    msgs = httpx.get(live.url + f"/v1/sessions/{sid}/messages", headers=h).json()["messages"]
    assert [m["content"] for m in msgs if m["role"] == "user"] == ["name a fruit"]

    screen = run("/context", lambda s: "tokens (system" in s, "/context")
    assert "name a fruit" in screen.split("/context")[-1]
    run("/memories", lambda s: "memor" in s.split("/memories")[-1], "/memories")
    run("/fork", lambda s: "Forked" in s, "/fork")
    sessions = httpx.get(live.url + "/v1/sessions", headers=h).json()["sessions"]
    assert len(sessions) == 2
    forked = next(s for s in sessions if s["session_id"] != sid)
    assert forked["forked_from"] == sid
    # The chat goes on in the fork.
    t.type("and now?")
    t.keys("Enter")
    t.wait_for(lambda s: at_prompt(s) and "and now?" in s, "a turn in the fork")
    assert fake.request_count == 4
    assert (
        httpx.get(live.url + f"/v1/sessions/{forked['session_id']}/messages", headers=h).json()[
            "messages"
        ][-2]["content"]
        == "and now?"
    )
    screen = run("/help", lambda s: "/regenerate" in s.split("/help")[-1], "/help")
    for name in ("/continue", "/edit", "/fork", "/context", "/memories", "/sessions"):
        assert name in screen.split("/help")[-1]
    assert "Traceback" not in t.screen()


def test_slash_name_sets_the_display_name_the_prompt_uses(
    terminal: Callable[..., Tmux], fake: FakeOpenAI, live: LiveServer
) -> None:
    h = {"X-User-Id": "name-user"}
    pip = {"id": "pip", "name": "Pip", "system_prompt": "You are {{char}}; you talk with {{user}}."}
    assert httpx.post(live.url + "/v1/characters", json=pip, headers=h).status_code == 201
    t = terminal("-c", "pip", "-u", "name-user")
    t.wait_for(lambda s: prompts(s) == 1, "the first prompt")

    def run(command: str, done: Callable[[str], bool], what: str) -> str:
        n = prompts(t.screen())
        t.type(command)
        t.keys("Enter")
        return t.wait_for(lambda s: prompts(s) == n + 1 and done(s) and at_prompt(s), what)

    run("/name", lambda s: "characters call you User" in s, "/name (unset)")
    run("/name Ada Lovelace", lambda s: "your name is now Ada Lovelace" in s, "/name Ada")
    assert httpx.get(live.url + "/v1/me", headers=h).json()["display_name"] == "Ada Lovelace"
    run("hello", lambda s: REPLY in s, "a turn")
    system = fake.chat_bodies[-1]["messages"][0]["content"]
    assert system == "You are Pip; you talk with Ada Lovelace."
    run("/name " + "x" * 70, lambda s: "must be 1-64 characters" in s, "a refused name")
    run("/name -", lambda s: "your name is now User" in s, "/name -")
    assert "Traceback" not in t.screen()
