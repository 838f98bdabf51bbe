"""The seed documents' own client code, run against a real chatmem (a real uvicorn, real
Redis, the fake model) with only the base URL changed.

The code is cut out of `../shared/seeds/` at run time (tests/seed_docs.py), never copied
here: seed 000's and seed 001's test scripts run as the documents wrote them (with
`requests`, in a process of their own), seed 003's API examples (`POST /chat/start?…`)
are sent as written, and every address the documents tell a reader to open is opened.
The assertions are what the documents say their code prints or answers.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chatmem.store.conversations import AnyRedis
from tests.api_support import make_test_settings, sse_events
from tests.fake_openai import FakeOpenAI, Reply
from tests.live_server import LiveServer
from tests.seed_docs import (
    DOCUMENT_BASE_URL,
    code_blocks,
    one_block,
    require_seed_document,
    with_base_url,
)

REPLY = "你好，我记住了。"
SCRIPT_TIMEOUT_S = 90

pytestmark = [pytest.mark.slow, pytest.mark.fake_model(default=Reply(text=REPLY))]


@pytest.fixture
def server(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_data_dir: Path
) -> Iterator[LiveServer]:
    """chatmem on a flushed Redis, in open mode (the documents send no credentials)."""
    with LiveServer(make_test_settings(redis_url, fake.base_url, tmp_data_dir)) as live:
        yield live


def run_document_script(number: str, base_url: str, tmp_path: Path) -> list[str]:
    """The document's test script (its block that imports requests), run as written but
    for its BASE_URL; the lines it printed."""
    code = one_block(require_seed_document(number), "python", "import requests", "BASE_URL")
    script = tmp_path / f"seed_{number}_client.py"
    script.write_text(with_base_url(code, base_url), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        cwd=tmp_path,
        env={"PYTHONIOENCODING": "utf-8", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout.splitlines()


def after(lines: list[str], header: str) -> list[str]:
    """The lines a section printed: from its `=== header ===` to the next one."""
    start = lines.index(f"=== {header} ===")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("===")), None)
    return [line for line in lines[start + 1 : end] if line]


def number(lines: list[str], pattern: str) -> int:
    found = [m for line in lines if (m := re.fullmatch(pattern, line))]
    assert len(found) == 1, (pattern, lines)
    return int(found[0].group(1))


def user_turns(fake: FakeOpenAI) -> list[list[str]]:
    """What the model was sent at each turn, without the system prompt."""
    return [
        [m["content"] for m in body["messages"] if m["role"] != "system"]
        for body in fake.chat_bodies
    ]


def test_seed000_test_script(server: LiveServer, fake: FakeOpenAI, tmp_path: Path) -> None:
    out = run_document_script("000", server.url, tmp_path)

    assert after(out, "测试对话") == [
        "用户1的对话:",
        f"1. {REPLY}",
        f"2. {REPLY}",
        "用户2的对话:",
        f"1. {REPLY}",
        f"2. {REPLY}",
    ]
    # Each user's memory is their own: "我叫什么名字？" reaches the model with that user's
    # name before it, and only that user's.
    turns = user_turns(fake)
    assert turns[1] == ["我叫张三", REPLY, "我叫什么名字？"]
    assert turns[3] == ["我叫李四", REPLY, "我叫什么名字？"]

    assert after(out, "测试历史记录") == [
        "用户: user_001",
        "总消息数: 4",
        "对话轮数: 2",
        "窗口大小: 3",  # the first request's window_size, kept by the second
        "消息列表:",
        "1. [user] 我叫张三",
        f"2. [assistant] {REPLY}",
        "3. [user] 我叫什么名字？",
        f"4. [assistant] {REPLY}",
    ]
    stats = after(out, "测试统计信息")
    assert stats[:4] == ["用户: user_001", "总消息数: 4", "对话轮数: 2", "窗口大小: 3"]
    tokens = number(stats, r"Token数: (\d+)")
    assert tokens > 0
    # Priced from chatmem's price table (the document hard-codes 2023's prices).
    cost35, cost4 = (
        float(m[1])
        for line in stats[5:7]
        if (m := re.fullmatch(r"成本\(GPT-(?:3\.5|4)\): \$(\d+\.\d{6})", line))
    )
    assert 0 < cost35 < cost4

    assert after(out, "测试清空历史") == ["清空前消息数: 4", "已清空历史", "清空后消息数: 0"]
    users = after(out, "测试列出用户")
    assert users[0] == "总用户数: 2"
    assert sorted(users[1].removeprefix("用户列表: ").split(", ")) == ["user_001", "user_002"]


def test_seed001_test_script(server: LiveServer, fake: FakeOpenAI, tmp_path: Path) -> None:
    out = run_document_script("001", server.url, tmp_path)

    chat = after(out, "测试带TTL的对话")
    assert chat[0] == f"1. {REPLY}"
    assert 55 <= number(chat[:2], r"   TTL剩余: (\d+)秒") <= 60  # "ttl": 60
    assert chat[2] == f"2. {REPLY}"
    assert 1 <= number(chat[2:], r"   TTL剩余: (\d+)秒") <= 60
    assert user_turns(fake)[1] == ["我叫张三", REPLY, "我叫什么名字？"]

    # The document's own expectations, in its own words: "ttl": 5 is taken, then expires.
    assert after(out, "测试TTL过期") == [
        "创建对话(TTL=5秒)",
        "立即查询: 200 (应该是200)",
        "等待6秒...",
        "6秒后查询: 404 (应该是404)",
    ]
    ttl = after(out, "测试更新TTL")
    assert 55 <= number(ttl, r"初始TTL: (\d+)秒") <= 60
    assert 295 <= number(ttl, r"更新后TTL: (\d+)秒") <= 300

    assert after(out, "测试持久化") == [
        "创建对话: 我叫李四",
        "历史记录: 2条消息",
        "  [user] 我叫李四",
        f"  [assistant] {REPLY}",
        "提示: 即使重启FastAPI服务，Redis中的数据仍然存在",
    ]
    stats = after(out, "测试统计信息")
    # user_redis_001, user_update_ttl, user_persist (user_ttl_test expired).
    assert number(stats, r"总用户数: (\d+)") == 3
    assert number(stats, r"总消息数: (\d+)") == 4 + 2 + 2
    assert re.fullmatch(r"Redis版本: \d+\.\d+\.\d+", stats[2])
    assert re.fullmatch(r"内存使用: [\d.]+[KMG]?", stats[3])
    assert number(stats, r"连接数: (\d+)") >= 1


def api_examples() -> list[tuple[str, str]]:
    """Seed 003's API examples (```http blocks: `METHOD /path?query`), in its order."""
    doc = require_seed_document("003")
    examples = [block.strip().split(" ", 1) for block in code_blocks(doc, "http")]
    return [(method, target) for method, target in examples]


def test_seed003_api_examples_as_written(server: LiveServer, fake: FakeOpenAI) -> None:
    """Each example is sent as the README writes it (placeholders and all: `your_user_id`,
    `session_id=session_id`); only the `{session_id}` of the path is filled in, with the
    session the examples talked to."""
    examples = api_examples()
    assert [m for m, _ in examples] == ["POST", "GET", "GET", "GET", "GET", "DELETE"]
    answers = {}
    for method, target in examples:
        path = target.replace("{session_id}", "session_id")
        resp = httpx.request(method, server.url + path, timeout=30)
        assert resp.status_code == 200, (method, target, resp.text)
        answers[target.split("?")[0]] = resp

    started = answers["/chat/start"].json()
    assert started["message"] == "聊天会话已创建"
    assert started["welcome_message"] == "你好！我是你的AI助手，有什么可以帮助你的吗？"
    # The stream example names the session `session_id`, which it starts.
    frames = [event.data for event in sse_events(answers["/chat/stream"].text)]
    assert [f["type"] for f in frames][-1] == "end"
    assert frames[-1]["session_id"] == "session_id"
    assert "".join(f["content"] for f in frames if f["type"] == "chunk") == REPLY
    assert fake.chat_bodies[-1]["messages"][-1] == {"role": "user", "content": "your_message"}
    history = answers["/chat/history"].json()
    assert [m["content"] for m in history["messages"]] == ["your_message", REPLY]
    listed = answers["/chat/sessions"].json()
    assert {s["session_id"] for s in listed["sessions"]} == {started["session_id"], "session_id"}
    roles = answers["/roles"].json()["roles"]
    assert {k: roles[k]["name"] for k in ("assistant", "teacher", "programmer")} == {
        "assistant": "智能助手",
        "teacher": "AI老师",
        "programmer": "编程专家",
    }
    assert answers["/chat/session/{session_id}"].json()["message"] == "会话已删除"
    left = httpx.get(server.url + "/chat/sessions", params={"user_id": "your_user_id"}).json()
    assert [s["session_id"] for s in left["sessions"]] == [started["session_id"]]


@pytest.mark.parametrize("number", ["000", "001", "002", "003"])
def test_addresses_the_documents_tell_a_reader_to_open(server: LiveServer, number: str) -> None:
    """`http://localhost:8000/docs`, `…/static/index.html`: served, at the same path."""
    text = require_seed_document(number).read_text(encoding="utf-8")
    urls = set(re.findall(re.escape(DOCUMENT_BASE_URL) + r"(/[\w./-]*)?", text))
    for path in sorted(urls):
        resp = httpx.get(server.url + (path or "/"), timeout=10)
        assert resp.status_code == 200, (number, path)


def test_seed000_route_list_is_served(server: LiveServer) -> None:
    """Seed 000's "RESTful API设计" list: every route it names is chatmem's too."""
    text = require_seed_document("000").read_text(encoding="utf-8")
    listed = re.findall(r"^- `(GET|POST|PUT|DELETE) (/[^`]*)`", text, re.M)
    assert len(listed) == 5
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    for method, path in listed:
        assert method.lower() in paths[path], (method, path)
