"""The on_{tag} naming rule."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pachinko._naming import handler_name, snake_case


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("sendMessage", "send_message"),
        ("SendMessage", "send_message"),
        ("HTTPRequest", "http_request"),
        ("getHTTPResponseCode", "get_http_response_code"),
        ("chat.message", "chat_message"),
        ("chat--message..x", "chat_message_x"),
        ("typing", "typing"),
        ("user2fa", "user2fa"),
        ("v2Ready", "v2_ready"),
        ("__private__", "private"),
        ("UPPER", "upper"),
    ],
)
def test_examples(tag: str, expected: str) -> None:
    assert snake_case(tag) == expected
    assert handler_name(tag) == "on_" + expected


@given(st.text())
def test_result_is_lower_snake_case(tag: str) -> None:
    result = snake_case(tag)
    assert re.fullmatch(r"([a-z0-9]+(_[a-z0-9]+)*)?", result)


@given(st.text())
def test_idempotent(tag: str) -> None:
    assert snake_case(snake_case(tag)) == snake_case(tag)


@given(st.from_regex(r"[a-z]{2}[a-z0-9]*(_[a-z]{2}[a-z0-9]*)*", fullmatch=True))
def test_snake_case_is_a_fixed_point_and_camel_case_maps_to_it(name: str) -> None:
    # words of two letters or more: "aAA" is ambiguous (an acronym?)
    assert snake_case(name) == name
    camel = "".join(part.capitalize() if i else part for i, part in enumerate(name.split("_")))
    assert snake_case(camel) == name
    assert snake_case(name.replace("_", ".")) == name
