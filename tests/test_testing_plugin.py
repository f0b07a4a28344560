"""The pytest plugin, as a user's test suite sees it (a pytest run in a subprocess)."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = textwrap.dedent("""\
    import falcon.asgi
    import pachinko
    from pachinko.testing import ReceiveTimeout


    class Echo(pachinko.WebSocketResource):
        @pachinko.handles_message("say")
        async def say(self, ws, payload):
            await self.send({"type": "said", "text": payload["text"]})


    def make_app():
        router = pachinko.WebSocketRouter()
        router.add_route("/echo", Echo)
        app = falcon.asgi.App()
        pachinko.mount(app, "/ws", router)
        return app


    def test_timeout_option(pachinko_timeout):
        assert pachinko_timeout == 0.25


    async def test_in_process(pachinko_client):
        client = await pachinko_client(make_app())
        async with client.websocket("/ws/echo") as ws:
            await ws.send_json({"type": "say", "text": "hi"})
            assert await ws.expect(type="said") == {"type": "said", "text": "hi"}
            try:
                await ws.expect(type="never")
            except ReceiveTimeout as ex:
                assert "within 0.25 s" in str(ex)
            else:
                raise AssertionError("expected a timeout")


    async def test_live(pachinko_live):
        server = await pachinko_live(make_app())
        async with server.websocket("/ws/echo") as ws:
            await ws.send_json({"type": "say", "text": "hi"})
            assert await ws.expect(type="said") == {"type": "said", "text": "hi"}
""")


@pytest.mark.live
def test_plugin_fixtures_and_option_in_a_user_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    result = pytester.runpytest_subprocess("--pachinko-timeout", "0.25", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_plugin_documents_its_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--pachinko-timeout=SECONDS*"])
