"""Property-based API tests from `/openapi.json` (schemathesis, in-process through ASGI).

Every operation in the schema gets generated requests, valid and (where the schema
rules anything out) invalid, against the real app: real Redis, the fake model. A
response must never be a 5xx, and must match what the schema says of it: its content
type, and its body's schema where one is documented — for the streamed chat
completion, every SSE event, each `data:` checked as a chunk, an error or `[DONE]`.

Bounded and reproducible: MAX_EXAMPLES requests per operation and mode, from a fixed
seed (`derandomize`), so a failure reproduces on every run; the whole file takes well
under a minute.

Checks deliberately left out: `status_code_conformance` (most routes leave their 4xx
answers undocumented) and `positive_data_acceptance` (ids are typed as plain strings
but must match chatmem's id pattern, so schema-valid requests are rightly refused).
`negative_data_rejection` runs on the OpenAI-compatible routes only, whose request
models are strict: elsewhere pydantic's lax mode accepts e.g. `false` for a number.

Not `@schema.parametrize()`: under pytest 9 it gives every operation the same node id
(and its fixture-based loader writes the removed `Node._nodeid`), so the operations are
parametrized here, each run by Hypothesis over schemathesis's own strategies.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi import checks as openapi_checks

from chatmem.api.app import create_app
from tests.api_support import make_test_settings
from tests.fake_openai import FakeOpenAI, Reply

MAX_EXAMPLES = 25
CHAT_COMPLETIONS = "POST /v1/chat/completions"
OPENAI_ROUTES = ("/v1/chat/completions", "/v1/models")

CHECKS = [
    schemathesis.checks.not_a_server_error,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
]
STRICT_CHECKS = [*CHECKS, openapi_checks.negative_data_rejection]


# Every test takes `fake`: the model it calls answers this, whatever ran before.
pytestmark = [
    pytest.mark.fake_model(default=Reply(text="a short reply")),
    pytest.mark.usefixtures("fake"),
]


@pytest.fixture(scope="module")
def app(
    redis_url: str, fake_model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    data_dir: Path = tmp_path_factory.mktemp("data")
    yield create_app(make_test_settings(redis_url, fake_model.base_url, data_dir))
    # schemathesis started the app's lifespan on its own event loop thread; end it here.
    asgi.shutdown_lifespans()


def _operations() -> dict[str, APIOperation]:
    """The operations by label, read at collection time from an app that is built but
    never started (the routes do not depend on the settings)."""
    offline = make_test_settings(
        "redis://127.0.0.1:1", "http://127.0.0.1:1/v1", Path(tempfile.gettempdir())
    )
    schema = schemathesis.openapi.from_dict(create_app(offline).openapi())
    return {op.label: op for op in (result.ok() for result in schema.get_all_operations())}


def _plain_string(schema: dict[str, Any]) -> bool:
    """A string schema that every string satisfies (optional, so null too)."""
    options = schema.get("anyOf", [schema])
    return any(
        opt.get("type") == "string" and set(opt) <= {"type", "title", "description"}
        for opt in options
    )


def _admits_invalid_requests(operation: APIOperation) -> bool:
    """Whether the schema rules anything out: a body, a required query parameter or
    header, or a parameter narrower than "any string". Otherwise negative generation
    has nothing to generate (Hypothesis reports it as Unsatisfiable)."""
    raw = operation.definition.raw
    if "requestBody" in raw:
        return True
    return any(
        (param["in"] != "path" and param.get("required", False))
        or not _plain_string(param.get("schema", {}))
        for param in raw.get("parameters", [])
    )


OPERATIONS = _operations()
CASES = [
    pytest.param(label, mode, id=f"{label}-{mode.value}")
    for label, operation in sorted(OPERATIONS.items())
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE or _admits_invalid_requests(operation)
]
NEW_MESSAGE_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=200)


def _ending_with_a_user_message(drawn: tuple[schemathesis.Case, str, bool]) -> schemathesis.Case:
    case, text, stream = drawn
    case.body = {
        **case.body,
        "messages": [*case.body["messages"], {"role": "user", "content": text}],
        "stream": stream,
    }
    return case


def _cases(label: str, mode: GenerationMode) -> st.SearchStrategy[schemathesis.Case]:
    """schemathesis's strategy for the operation; valid chat completions also end with a
    user message, the one rule JSON Schema cannot state (the last item's role), so that
    most of them reach the model instead of all being refused, half of them streamed."""
    strategy = OPERATIONS[label].as_strategy(generation_mode=mode)
    if label == CHAT_COMPLETIONS and mode is GenerationMode.POSITIVE:
        drawn = st.tuples(strategy, NEW_MESSAGE_TEXT, st.booleans())
        return drawn.map(_ending_with_a_user_message)
    return strategy


@pytest.mark.slow
@pytest.mark.parametrize(("label", "mode"), CASES)
def test_api_conforms_to_its_schema(label: str, mode: GenerationMode, app: FastAPI) -> None:
    checks = STRICT_CHECKS if label.split(" ", 1)[1].startswith(OPENAI_ROUTES) else CHECKS

    @hypothesis.given(case=_cases(label, mode))
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def conforms(case: schemathesis.Case) -> None:
        case.call_and_validate(app=app, checks=checks)

    conforms()


def test_admin_users_offset_near_int64_max_is_not_a_server_error(app: FastAPI) -> None:
    """Found by the run above with a random seed: GET /v1/admin/users?offset=9223372036854775709
    answered 500 (ZRANGE's stop index, offset + limit - 1, overflowed a 64-bit integer)."""
    case = OPERATIONS["GET /v1/admin/users"].Case(query={"offset": 9223372036854775709})
    response = case.call_and_validate(app=app, checks=CHECKS)
    assert response.status_code == 200
