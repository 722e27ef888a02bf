"""jsontext writes the text json.dumps writes, for every value and every option it is used
with (the decision log's rules, counter labels, canonical event payloads)."""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringrift_coord import jsontext

# every character class that matters: ASCII, controls, DEL, quotes, backslashes, the BMP,
# beyond it (surrogate pairs when escaped) and lone surrogates
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(max_codepoint=0x7F),
        st.sampled_from(['"', "\\", "\x7f", "\u2028", "é", "\ud800", "\udfff", "😀"]),
        st.characters(),
    ),
    max_size=12,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(TEXT, inner, max_size=4),
    ),
    max_leaves=20,
)

OPTIONS = [
    # the canonical event payload
    {"sort_keys": True, "compact": True, "ensure_ascii": False, "allow_nan": False},
    # a counter's labels
    {"sort_keys": True, "compact": True},
    # the decision log's rules
    {"default": str},
    {},
]


def json_dumps(value: Any, compact: bool = False, **options: Any) -> str:
    return json.dumps(value, separators=(",", ":") if compact else None, **options)


def same(value: Any, options: dict[str, Any]) -> None:
    try:
        expected = json_dumps(value, **options)
    except ValueError as exc:
        with pytest.raises(ValueError) as raised:
            jsontext.dumps(value, **options)
        assert str(raised.value) == str(exc)  # json's own words
        return
    assert jsontext.dumps(value, **options) == expected


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
@settings(max_examples=400, deadline=None)
@given(value=VALUES)
def test_the_text_json_dumps_writes(options: dict[str, Any], value: Any) -> None:
    same(value, options)


class Level(enum.IntEnum):
    HIGH = 3


class Name(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        {1: "a non-text key"},
        {Name("k"): 1},
        [Level.HIGH],  # json writes an IntEnum as its number, not as default(str) would
        {"when": complex(1, 2)},  # only default can write it
        [Name("a str subclass")],
        {"f": -0.0, "big": 10**30, "tiny": 5e-324, "nan": math.nan},
    ],
    ids=repr,
)
def test_values_it_hands_to_json_come_out_the_same(value: Any) -> None:
    for options in OPTIONS:
        try:
            expected = json_dumps(value, **options)
        except (TypeError, ValueError) as exc:
            with pytest.raises(type(exc)):
                jsontext.dumps(value, **options)
            continue
        assert jsontext.dumps(value, **options) == expected


def test_without_the_interpreter_s_own_sha256_hashlib_gives_the_same_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The event digest (a stored dedupe key) is SHA-256 whichever module computes it."""
    import hashlib
    import sys

    from ringrift_coord import events

    payload = {"rules": ["node_limit"], "type": "selfplay", "node": "n1", "minute": 60}
    builtin = events.digest("TASK_DENIED", payload, "tool", "n1")
    monkeypatch.setitem(sys.modules, "_sha2", None)  # import refused: ImportError
    monkeypatch.setitem(sys.modules, "_sha256", None)
    monkeypatch.setattr(events, "_sha256_of", None)  # looked for again
    assert events.digest("TASK_DENIED", payload, "tool", "n1") == builtin
    text = events.canonical(["TASK_DENIED", "tool", "n1", payload]).encode()
    assert builtin == hashlib.sha256(text).hexdigest()


def test_a_circular_value_is_refused_as_json_refuses_it() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        jsontext.dumps(loop)
