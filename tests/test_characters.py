from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from chatmem.characters import (
    BUILTIN_IDS,
    CARD_EXTENSION,
    DEFAULT_CARD_PROMPT,
    DEFAULT_CHARACTER_ID,
    CharacterRegistry,
    card_to_character,
    character_to_card,
    fill,
    load_builtins,
    load_directory,
    slugify_id,
)
from chatmem.errors import (
    AlreadyExists,
    CharacterNotFound,
    Forbidden,
    InvalidInput,
)
from chatmem.models import Character, ModelParams
from chatmem.store import keys
from chatmem.store.characters import CharacterStore

SEED_002_PROMPTS = {
    "assistant": "你是一个友善、专业的AI助手，能够帮助用户解答各种问题。请保持礼貌和耐心。",
    "teacher": "你是一位经验丰富的老师，擅长用简单易懂的方式解释复杂概念，善于启发学生思考。",
    "programmer": (
        "你是一位资深的程序员，精通多种编程语言和技术栈，能够提供专业的编程建议和解决方案。"
    ),
}


def full_card(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "Aria Vale",
        "description": "{{char}} is a starship navigator who talks to {{user}} a lot.",
        "personality": "calm, witty",
        "scenario": "{{user}} boards {{char}}'s ship.",
        "first_mes": "Welcome aboard, {{user}}. I'm {{char}}.",
        "mes_example": "<START>\n{{user}}: Where are we?\n{{char}}: Near Vega.",
        "creator_notes": "A friendly navigator.",
        "system_prompt": "{{original}} Never break character.",
        "post_history_instructions": "Reply as {{char}} in under 80 words.",
        "alternate_greetings": ["Hi {{user}}!", "Back again?"],
        "character_book": {"name": "lore", "entries": [{"keys": ["Vega"], "content": "A star."}]},
        "tags": ["sci-fi", "navigator"],
        "creator": "someone",
        "character_version": "1.2",
        "extensions": {"depth_prompt": {"depth": 4, "prompt": "x"}, "talkativeness": "0.5"},
        "x_unknown_field": {"kept": True},
    }
    data.update(overrides)
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}


@pytest.fixture
def registry(redis_client: Redis) -> CharacterRegistry:
    return CharacterRegistry(CharacterStore(redis_client))


def custom(cid: str = "pirate", **fields: Any) -> Character:
    base: dict[str, Any] = {
        "id": cid,
        "name": "Pirate",
        "system_prompt": "Talk like a pirate.",
        "greeting": "Ahoy!",
    }
    return Character(**{**base, **fields})


# --- built-ins ---------------------------------------------------------------


def test_builtins_carry_the_seed_roles_and_companions() -> None:
    chars = {ch.id: ch for ch in load_builtins()}
    assert tuple(chars) == BUILTIN_IDS
    for cid, prompt in SEED_002_PROMPTS.items():
        assert chars[cid].system_prompt == prompt
    assert chars["assistant"].greeting == "你好！我是你的AI助手，有什么可以帮助你的吗？"
    assert {chars[c].name for c in SEED_002_PROMPTS} == {"智能助手", "AI老师", "编程专家"}
    for ch in chars.values():
        assert ch.builtin
        assert ch.name and ch.system_prompt and ch.greeting and ch.description
    assert chars["companion"].params.temperature == 0.9


async def test_registry_serves_builtins_and_the_default(registry: CharacterRegistry) -> None:
    assert registry.default_id == DEFAULT_CHARACTER_ID == "assistant"
    assert (await registry.get(registry.default_id)).builtin
    listed = [ch.id for ch in await registry.list()]
    assert listed == list(BUILTIN_IDS)
    with pytest.raises(CharacterNotFound):
        await registry.get("nobody")


# --- directory ---------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_directory_loads_yaml_json_and_cards_and_reports_bad_files(tmp_path: Path) -> None:
    write(tmp_path / "chef.yaml", "name: Chef\nsystem_prompt: You cook.\ngreeting: Bonjour\n")
    write(
        tmp_path / "b.json",
        json.dumps({"id": "bard", "name": "Bard", "params": {"temperature": 1.1}}),
    )
    write(tmp_path / "card.json", json.dumps(full_card()))
    write(tmp_path / "broken.yaml", "name: [unclosed\n")
    write(tmp_path / "extra.yml", "name: X\nsytem_prompt: typo\n")
    write(tmp_path / "v1.json", json.dumps({"name": "Old", "first_mes": "hi"}))
    write(tmp_path / "list.yaml", "- a\n- b\n")
    write(tmp_path / "empty.yaml", "")
    write(tmp_path / "bard2.yaml", "id: bard\nname: Second bard\n")
    write(tmp_path / "notes.txt", "ignored")

    loaded = load_directory(tmp_path)

    by_id = {ch.id: ch for ch in loaded.characters}
    assert set(by_id) == {"chef", "bard", "aria-vale"}
    assert by_id["chef"].greeting == "Bonjour"
    assert by_id["bard"].params == ModelParams(temperature=1.1)
    assert by_id["aria-vale"].greeting == "Welcome aboard, {{user}}. I'm {{char}}."
    assert not any(ch.builtin for ch in loaded.characters)

    errors = {e.path.name: e.message for e in loaded.errors}
    assert set(errors) == {
        "broken.yaml",
        "extra.yml",
        "v1.json",
        "list.yaml",
        "empty.yaml",
        "bard2.yaml",
    }
    assert "invalid YAML" in errors["broken.yaml"]
    assert "sytem_prompt" in errors["extra.yml"]
    assert "V1" in errors["v1.json"]
    assert "mapping" in errors["list.yaml"]
    assert "empty" in errors["empty.yaml"]
    assert "b.json" in errors["bard2.yaml"]
    assert all(str(e).startswith(str(tmp_path)) for e in loaded.errors)


async def test_registry_merges_directory_and_exposes_errors(
    redis_client: Redis, tmp_path: Path
) -> None:
    write(tmp_path / "chef.yaml", "name: Chef\nsystem_prompt: You cook.\n")
    write(tmp_path / "assistant.yaml", "name: My assistant\nsystem_prompt: Answer in English.\n")
    write(tmp_path / "bad.json", "{not json")
    registry = CharacterRegistry(CharacterStore(redis_client), characters_dir=tmp_path)

    assert [e.path.name for e in registry.load_errors] == ["bad.json"]
    assert "invalid JSON" in registry.load_errors[0].message
    assert (await registry.get("chef")).system_prompt == "You cook."
    # A directory file may customize a built-in; it stays the default and read-only.
    assistant = await registry.get("assistant")
    assert assistant.system_prompt == "Answer in English." and not assistant.builtin
    assert registry.is_readonly("assistant") and registry.is_readonly("chef")
    with pytest.raises(Forbidden, match="loaded from"):
        await registry.delete("chef")
    ids = [ch.id for ch in await registry.list()]
    assert ids == [*BUILTIN_IDS, "chef"]

    (tmp_path / "bad.json").unlink()
    write(tmp_path / "poet.yaml", "name: Poet\n")
    registry.reload()
    assert registry.load_errors == []
    assert (await registry.get("poet")).name == "Poet"


async def test_missing_directory_is_reported_not_fatal(redis_client: Redis, tmp_path: Path) -> None:
    registry = CharacterRegistry(CharacterStore(redis_client), characters_dir=tmp_path / "nope")
    assert "does not exist" in registry.load_errors[0].message
    assert [ch.id for ch in await registry.list()] == list(BUILTIN_IDS)


# --- CRUD through Redis -------------------------------------------------------


async def test_crud_is_shared_through_redis(
    redis_client: Redis, registry: CharacterRegistry
) -> None:
    created = await registry.create(custom(builtin=True))
    assert not created.builtin  # a client cannot claim built-in status
    other_process = CharacterRegistry(CharacterStore(redis_client))
    assert (await other_process.get("pirate")).greeting == "Ahoy!"
    assert await redis_client.hexists(keys.characters_key(), "pirate")

    with pytest.raises(AlreadyExists):
        await other_process.create(custom(name="Another"))

    updated = await other_process.update(custom(greeting="Arr!", params=ModelParams(max_tokens=64)))
    assert updated.greeting == "Arr!"
    got = await registry.get("pirate")
    assert got.greeting == "Arr!" and got.params.max_tokens == 64

    assert [ch.id for ch in await registry.list()] == [*BUILTIN_IDS, "pirate"]
    await registry.delete("pirate")
    with pytest.raises(CharacterNotFound):
        await other_process.get("pirate")
    with pytest.raises(CharacterNotFound):
        await registry.delete("pirate")
    with pytest.raises(CharacterNotFound):
        await registry.update(custom())  # replace never creates


async def test_builtins_are_protected(registry: CharacterRegistry) -> None:
    with pytest.raises(AlreadyExists, match="built in"):
        await registry.create(custom("assistant"))
    with pytest.raises(Forbidden, match="cannot be changed"):
        await registry.update(custom("teacher"))
    with pytest.raises(Forbidden, match="cannot be deleted"):
        await registry.delete("programmer")
    assert (await registry.get("teacher")).system_prompt == SEED_002_PROMPTS["teacher"]


async def test_many_stored_characters_list_sorted(registry: CharacterRegistry) -> None:
    for i in reversed(range(150)):
        await registry.create(custom(f"c{i:03d}"))
    listed = [ch.id for ch in await registry.list()]
    assert listed[len(BUILTIN_IDS) :] == [f"c{i:03d}" for i in range(150)]


async def test_unreadable_stored_character_is_skipped(
    redis_client: Redis, registry: CharacterRegistry
) -> None:
    await registry.create(custom())
    await redis_client.hset(keys.characters_key(), "junk", "{not json")
    assert [ch.id for ch in await registry.list()][-1] == "pirate"
    with pytest.raises(CharacterNotFound):
        await registry.get("junk")
    await registry.delete("junk")


# --- Card V2 ------------------------------------------------------------------


def test_card_fields_are_mapped() -> None:
    ch = card_to_character(full_card())
    assert ch.id == "aria-vale"
    assert ch.name == "Aria Vale"
    # The placeholders stay (filled in per user when used: test_display_name.py).
    assert ch.greeting == "Welcome aboard, {{user}}. I'm {{char}}."
    assert ch.description == "A friendly navigator."
    assert ch.post_history_instructions == "Reply as {{char}} in under 80 words."
    assert not ch.builtin
    prompt = fill(ch.system_prompt, ch.name, "User")
    original = DEFAULT_CARD_PROMPT.replace("{{char}}", "Aria Vale").replace("{{user}}", "User")
    assert prompt.startswith(original + " Never break character.")
    for part in (
        "Aria Vale is a starship navigator who talks to User a lot.",
        "Aria Vale's personality: calm, witty",
        "Scenario: User boards Aria Vale's ship.",
        "Example dialogue:\nUser: Where are we?\nAria Vale: Near Vega.",
    ):
        assert part in prompt
    assert "{{" not in prompt and "<START>" not in prompt
    # <BOT> / <USER>, any case, are written as the one spelling.
    odd = card_to_character(full_card(first_mes="<BOT> greets <user>, {{User}}."))
    assert odd.greeting == "{{char}} greets {{user}}, {{user}}."
    # The picker's blurb is the same for everyone: filled at import.
    blurb = card_to_character(full_card(creator_notes="")).description
    assert blurb == "Aria Vale is a starship navigator who talks to User a lot."
    kept = ch.extensions[CARD_EXTENSION]["data"]
    assert kept["extensions"] == full_card()["data"]["extensions"]
    assert kept["x_unknown_field"] == {"kept": True}
    assert kept["alternate_greetings"] == ["Hi {{user}}!", "Back again?"]
    assert kept["character_book"]["entries"][0]["keys"] == ["Vega"]


def test_card_without_system_prompt_uses_default_and_minimal_fields() -> None:
    ch = card_to_character({"spec": "chara_card_v2", "data": {"name": "Zoë Ünal!"}})
    assert ch.id == "zoe-unal"
    assert ch.system_prompt == DEFAULT_CARD_PROMPT
    assert (
        fill(ch.system_prompt, ch.name)
        == "You are Zoë Ünal!. Stay in character and write Zoë Ünal!'s next reply "
        "in a conversation with User."
    )
    assert ch.greeting == "" and ch.description == ""


def test_card_id_slugs_and_overrides() -> None:
    assert slugify_id("小暖").startswith("card-")
    assert slugify_id("小暖") == slugify_id("小暖")
    assert slugify_id("  --Hello, World!--  ") == "hello-world"
    assert len(slugify_id("x" * 300)) == 64
    assert card_to_character(full_card(), character_id="nav").id == "nav"
    card = full_card(extensions={"chatmem": {"id": "nav2", "params": {"temperature": 0.3}}})
    ch = card_to_character(card)
    assert ch.id == "nav2" and ch.params.temperature == 0.3


def test_card_round_trip_reproduces_the_card() -> None:
    card = full_card()
    assert character_to_card(card_to_character(card)) == card
    # A placeholder-name card with a backslash survives substitution literally.
    odd = full_card(name="C:\\dir \\1")
    filled = fill(card_to_character(odd).greeting, "C:\\dir \\1", "D:\\2")
    assert filled == "Welcome aboard, D:\\2. I'm C:\\dir \\1."
    # One pass: a name holding a placeholder is not filled in again.
    assert fill("{{char}} and <USER>", "{{user}}", "<bot>") == "{{user}} and <bot>"


def test_card_export_applies_edits_and_reimports() -> None:
    ch = card_to_character(full_card())
    edited = ch.model_copy(
        update={
            "greeting": "New hello",
            "system_prompt": "A brand new prompt.",
            "params": ModelParams(temperature=0.4),
        }
    )
    card = character_to_card(edited)
    data = card["data"]
    assert data["first_mes"] == "New hello"
    assert data["system_prompt"] == "A brand new prompt."
    assert data["description"] == data["personality"] == data["scenario"] == ""
    assert data["tags"] == ["sci-fi", "navigator"]
    assert data["extensions"]["chatmem"] == {"params": {"temperature": 0.4}}
    again = card_to_character(card)
    assert (again.id, again.system_prompt, again.greeting, again.params) == (
        edited.id,
        edited.system_prompt,
        edited.greeting,
        edited.params,
    )


def test_plain_character_exports_as_a_card() -> None:
    ch = next(c for c in load_builtins() if c.id == "teacher")
    card = character_to_card(ch)
    assert card["spec"] == "chara_card_v2" and card["spec_version"] == "2.0"
    data = card["data"]
    assert data["name"] == "AI老师" and data["first_mes"] == ch.greeting
    assert data["extensions"]["chatmem"] == {"id": "teacher", "params": {"temperature": 0.6}}
    with_extras = ch.model_copy(update={"extensions": {"avatar": "teacher.png"}})
    assert character_to_card(with_extras)["data"]["extensions"]["avatar"] == "teacher.png"
    back = card_to_character(card)
    assert (back.id, back.system_prompt, back.greeting, back.description, back.params) == (
        ch.id,
        ch.system_prompt,
        ch.greeting,
        ch.description,
        ch.params,
    )


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ([], "JSON object"),
        ({"name": "Old", "first_mes": "hi"}, "'spec' field is missing"),
        ({"spec": "chara_card_v4", "data": {"name": "x"}}, "chara_card_v4"),
        ({"spec": "chara_card_v2"}, "'data' must be an object"),
        ({"spec": "chara_card_v2", "data": {"name": "  "}}, "data.name"),
        ({"spec": "chara_card_v2", "data": {"name": "x", "first_mes": 3}}, "data.first_mes"),
        ({"spec": "chara_card_v2", "data": {"name": "x", "tags": "a,b"}}, "data.tags"),
        ({"spec": "chara_card_v2", "data": {"name": "x", "extensions": []}}, "data.extensions"),
        ({"spec": "chara_card_v2", "data": {"name": "x", "character_book": 1}}, "character_book"),
        (
            {"spec": "chara_card_v2", "data": {"name": "x", "first_mes": "y" * 10_001}},
            "data.first_mes",
        ),
        (
            {
                "spec": "chara_card_v2",
                "data": {"name": "x", "extensions": {"chatmem": {"id": "a b"}}},
            },
            "id",
        ),
    ],
)
def test_malformed_cards_are_rejected(card: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        card_to_character(card)
    assert info.value.code == "invalid_card"


async def test_registry_imports_and_exports_cards(registry: CharacterRegistry) -> None:
    card = full_card()
    ch = await registry.import_card(copy.deepcopy(card))
    assert (await registry.get("aria-vale")).greeting == ch.greeting
    assert await registry.export_card("aria-vale") == card
    with pytest.raises(AlreadyExists):
        await registry.import_card(card)
    assert (await registry.import_card(card, character_id="aria2")).id == "aria2"
