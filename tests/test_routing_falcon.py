"""pachinko's route matcher against Falcon's CompiledRouter, on generated input.

Templates are built from literals, bare fields, converters, segments with
several fields, a trailing ``{rest:path}`` and trailing slashes; for every
generated path both routers must pick the same template with the same params.

Deliberate differences (docs/guide.md, "Routes"), and only they, are left out:
pachinko accepts side by side, at one position, fields with different names
or converters (``/a/{x}/b`` with ``/a/{y}/c``, ``{n:int}`` with ``{x}``, a
field with a ``{rest:path}``), which Falcon refuses as conflicting. When
Falcon refuses such a template, it is dropped from both routers.
"""

from __future__ import annotations

from typing import Any

import falcon.routing
import pytest
from falcon.routing.compiled import UnacceptableRouteError
from hypothesis import given, settings
from hypothesis import strategies as st

from pachinko import RouteError, WebSocketResource, WebSocketRouter


class Resource(WebSocketResource):
    pass


class HttpResource:
    def on_get(self, req: Any, resp: Any) -> None:  # Falcon needs a responder
        pass


# Segment kinds; "{i}" becomes the segment's position so that a template never
# repeats a field name, while two templates may use the same name at the same
# position (shared) or another one ("y" against "x": a deliberate difference).
SEGMENT_KINDS = [
    "a",
    "b",
    "1",
    "{x{i}}",
    "{y{i}}",
    "{n{i}:int}",
    "{x{i}}.{y{i}}",
    "{x{i}}1{y{i}}",
    "v{n{i}:int}",
    "{n{i}:int}.{x{i}}",
]


@st.composite
def templates(draw: st.DrawFn) -> str:
    kinds = draw(st.lists(st.sampled_from(SEGMENT_KINDS), max_size=3))
    segments = [kind.replace("{i}", str(i)) for i, kind in enumerate(kinds)]
    if draw(st.booleans()):
        segments.append(f"{{p{len(segments)}:path}}")
    elif draw(st.booleans()):
        segments.append("")  # trailing slash
    return "/" + "/".join(segments)


PATH_SEGMENTS = ["a", "b", "1", "12", "v2", "1.2", "a.b", "a.b.c", "213", "x1y", "v", ""]


@st.composite
def paths(draw: st.DrawFn) -> str:
    segments = draw(st.lists(st.sampled_from(PATH_SEGMENTS), min_size=1, max_size=5))
    leading = draw(st.sampled_from(["/", "//", ""]))
    return leading + "/".join(segments)


def falcon_router(accepted: list[str]) -> falcon.routing.CompiledRouter:
    router = falcon.routing.CompiledRouter()
    for template in accepted:
        router.add_route(template, HttpResource())
    return router


def pachinko_router(accepted: list[str]) -> WebSocketRouter:
    router = WebSocketRouter()
    for template in accepted:
        router.add_route(template, Resource)
    return router


def build_both(candidates: list[str]) -> tuple[list[str], list[str]]:
    """Add templates one by one; return (accepted by both, dropped by difference)."""
    accepted: list[str] = []
    dropped: list[str] = []
    for template in candidates:
        try:
            pachinko_router([*accepted, template])
            pachinko_ok = True
        except RouteError:
            pachinko_ok = False
        try:
            falcon_router([*accepted, template])
            falcon_ok = True
        except UnacceptableRouteError as ex:
            falcon_ok = False
            falcon_error = str(ex)
        # pachinko never refuses what Falcon accepts (templates are unique here)
        assert pachinko_ok or not falcon_ok, template
        if pachinko_ok and falcon_ok:
            accepted.append(template)
        elif pachinko_ok:
            # The deliberate difference: Falcon calls it a conflict.
            assert "conflicts with another route" in falcon_error, falcon_error
            dropped.append(template)
    return accepted, dropped


@settings(max_examples=400, deadline=None)
@given(st.lists(templates(), unique=True, max_size=6), st.lists(paths(), max_size=12))
def test_matches_like_falcons_compiled_router(candidates: list[str], requests: list[str]) -> None:
    accepted, _ = build_both(candidates)
    ours = pachinko_router(accepted)
    theirs = falcon_router(accepted)
    for path in requests:
        found = ours.match(path)
        expected = theirs.find(path)
        got = None if found is None else (found[0].template, found[1])
        want = None if expected is None else (expected[3], expected[2])
        assert got == want, f"path {path!r} with templates {accepted}"


@pytest.mark.parametrize(
    ("path", "template", "params"),
    [
        ("/a", "/a", {}),
        ("/a/", "/a/", {}),
        ("//a", "/a", {}),  # leading slashes do not count (Falcon)
        ("/", "/", {}),
        ("/f/x/y", "/f/{rest:path}", {"rest": "x/y"}),
        ("/f/", "/f/{rest:path}", {"rest": ""}),
        ("/g/1.2.3", "/g/{a}.{b}", {"a": "1.2", "b": "3"}),  # greedy, as Falcon
    ],
)
def test_trailing_slash_and_falcon_examples(path: str, template: str, params: Any) -> None:
    router = WebSocketRouter()
    for added in ["/a", "/a/", "/", "/f/{rest:path}", "/g/{a}.{b}"]:
        router.add_route(added, Resource)
    found = router.match(path)
    assert found is not None
    assert (found[0].template, found[1]) == (template, params)
    falcon_found = falcon_router(["/a", "/a/", "/", "/f/{rest:path}", "/g/{a}.{b}"]).find(path)
    assert falcon_found is not None
    assert (falcon_found[3], falcon_found[2]) == (template, params)


def test_without_the_trailing_slash_route_a_slash_does_not_match() -> None:
    router = WebSocketRouter()
    router.add_route("/a", Resource)
    router.add_route("/b/", Resource)
    assert router.match("/a/") is None
    assert router.match("/b") is None
    assert router.match("/f") is None


def test_fields_with_other_names_at_one_position_keep_their_names() -> None:
    # Falcon refuses this pair; pachinko accepts it and binds each route's names.
    router = WebSocketRouter()
    router.add_route("/a/{x}/b", Resource)
    router.add_route("/a/{y}/c", Resource)
    found = router.match("/a/1/c")
    assert found is not None
    assert (found[0].template, found[1]) == ("/a/{y}/c", {"y": "1"})
    found = router.match("/a/1/b")
    assert found is not None
    assert (found[0].template, found[1]) == ("/a/{x}/b", {"x": "1"})


def test_a_converter_field_is_tried_before_a_bare_one() -> None:
    router = WebSocketRouter()
    router.add_route("/i/{any}", Resource)
    router.add_route("/i/{num:int}", Resource)
    found = router.match("/i/7")
    assert found is not None
    assert found[1] == {"num": 7}
    found = router.match("/i/seven")
    assert found is not None
    assert found[1] == {"any": "seven"}
