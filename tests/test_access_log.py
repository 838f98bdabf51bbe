"""The access log's query redaction, as a pure function and as a logging filter (the
real uvicorn's output is read in tests/test_serve_processes.py)."""

from __future__ import annotations

import logging

import pytest

from chatmem.api.access_log import RedactQueryFilter, redact_target


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("/v1/sessions", "/v1/sessions"),
        ("/v1/sessions?limit=5", "/v1/sessions?limit=5"),
        (
            "/chat/stream?user_id=u1&session_id=s1&message=hello%20secret&role=teacher",
            "/chat/stream?user_id=u1&session_id=s1&message=[redacted]&role=teacher",
        ),
        ("/v1/models?api_key=sk-123&token=t", "/v1/models?api_key=[redacted]&token=[redacted]"),
        ("/x?sk-bare-secret", "/x?[redacted]"),
        ("/x?we%20ird=v&=v2&&", "/x?[redacted]&[redacted]"),
        ("/x?message=a=b", "/x?message=[redacted]"),
    ],
)
def test_redact_target(target: str, logged: str) -> None:
    assert redact_target(target) == logged


def test_the_filter_rewrites_uvicorns_access_record() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/chat/stream?message=secret", "1.1", 200),
        None,
    )
    assert RedactQueryFilter().filter(record)
    assert record.getMessage() == (
        '127.0.0.1:5000 - "GET /chat/stream?message=[redacted] HTTP/1.1" 200'
    )
