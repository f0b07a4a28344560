"""Room policies: declarations by name or pattern, the most specific wins."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pachinko.rooms import DEFAULT_POLICY, RoomPolicies, RoomPolicy

HISTORY = RoomPolicy(history=100, history_ttl=600)
PRESENCE = RoomPolicy(presence=True)
EVERYTHING = RoomPolicy(history=5)


def test_the_most_specific_declaration_wins_whole() -> None:
    policies = RoomPolicies(
        {"auction:*": HISTORY, "auction:vip:*": PRESENCE, "auction:lobby": EVERYTHING}
    )
    assert policies.lookup("auction:42") is HISTORY
    assert policies.lookup("auction:vip:7") is PRESENCE
    assert policies.lookup("auction:lobby") is EVERYTHING
    assert policies.lookup("auction:") is HISTORY
    assert policies.lookup("auction") is DEFAULT_POLICY
    assert policies.lookup("chat:1") is DEFAULT_POLICY


def test_a_lone_star_is_the_default_for_every_room() -> None:
    policies = RoomPolicies({"*": EVERYTHING, "team:*": PRESENCE})
    assert policies.lookup("anything") is EVERYTHING
    assert policies.lookup("") is EVERYTHING
    assert policies.lookup("team:a") is PRESENCE


def test_no_declarations_means_the_default_policy() -> None:
    policies = RoomPolicies()
    assert policies.lookup("x") is DEFAULT_POLICY
    assert RoomPolicy(history=0, history_ttl=None, presence=False) == DEFAULT_POLICY
    assert not policies.any_history
    assert not policies.any_presence
    assert not policies.any_authorize


def test_summaries_say_which_features_are_on() -> None:
    policies = RoomPolicies({"a:*": HISTORY, "b": RoomPolicy(authorize=lambda r, room: True)})
    assert policies.any_history
    assert policies.any_authorize
    assert not policies.any_presence
    assert dict(policies) == {"a:*": HISTORY, "b": policies["b"]}
    assert len(policies) == 2


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "a room pattern must be a non-empty str (got '')"),
        (3, "a room pattern must be a non-empty str (got 3)"),
        (
            "a*b",
            "room pattern 'a*b': '*' may only end a pattern ('auction:*'), found at position 1",
        ),
        ("**", "room pattern '**': '*' may only end a pattern ('auction:*'), found at position 0"),
    ],
)
def test_bad_patterns_are_refused(pattern: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        RoomPolicies({pattern: HISTORY})  # type: ignore[dict-item]
    assert str(info.value) == message


def test_a_value_that_is_not_a_policy_is_refused() -> None:
    with pytest.raises(TypeError, match=r"room policy for 'a' must be a RoomPolicy \(got 5\)"):
        RoomPolicies({"a": 5})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"history": -1}, ValueError, "RoomPolicy.history must be an int >= 0 (got -1)"),
        ({"history": 1.5}, ValueError, "RoomPolicy.history must be an int >= 0 (got 1.5)"),
        ({"history": True}, ValueError, "RoomPolicy.history must be an int >= 0 (got True)"),
        (
            {"history": 1, "history_ttl": 0},
            ValueError,
            "RoomPolicy.history_ttl must be a number > 0 or None (got 0)",
        ),
        (
            {"history_ttl": 5},
            ValueError,
            "RoomPolicy.history_ttl needs history > 0 (got history=0, history_ttl=5)",
        ),
        ({"authorize": "app:f"}, TypeError, "RoomPolicy.authorize must be callable or None"),
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, object], error: type, message: str) -> None:
    with pytest.raises(error) as info:
        RoomPolicy(**kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


def test_the_lookup_cache_is_bounded() -> None:
    policies = RoomPolicies({"a:*": HISTORY})
    for n in range(10_000):
        assert policies.lookup(f"a:{n}") is HISTORY
        assert policies.lookup(f"b:{n}") is DEFAULT_POLICY
    assert len(policies._cache) <= 4096


prefixes = st.text("ab:", max_size=4)
names = st.text("ab:", min_size=1, max_size=4)


@given(
    declared=st.dictionaries(
        st.one_of(names, prefixes.map(lambda p: p + "*")), st.integers(1, 9), max_size=6
    ),
    room=st.text("ab:", max_size=6),
)
def test_lookup_is_the_longest_matching_declaration(declared: dict[str, int], room: str) -> None:
    made = {pattern: RoomPolicy(history=n) for pattern, n in declared.items()}
    policies = RoomPolicies(made)
    if room in made:
        expected = made[room]
    else:
        matching = [p for p in made if p.endswith("*") and room.startswith(p[:-1])]
        expected = made[max(matching, key=len)] if matching else DEFAULT_POLICY
    assert policies.lookup(room) is expected
    assert policies.lookup(room) is expected  # cached: the same answer
