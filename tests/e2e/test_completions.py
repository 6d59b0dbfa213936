"""
The real CLIs behind the daemon answer with exactly what the upstream said:
the text, streamed in separate events while the CLI runs, and the usage.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from tests.daemon import open_stream
from tests.e2e.conftest import CLIS, complete, read_stream, within
from tests.e2e.fakes.base import split_text

pytestmark = pytest.mark.e2e

TEXT = "Hello there, general Kenobi. You are a bold one."


def expected_usage(rig) -> dict:
    """
    The usage the fake reported, over all of its answers (gemini's automatic
    model choice costs a router call of its own, and the CLI counts it).
    """
    answered = len(rig.fake.api_requests())
    script = rig.fake.script
    return {"input_tokens": script.input_tokens * answered, "output_tokens": script.output_tokens * answered}


@pytest.mark.parametrize("cli", CLIS)
@pytest_twisted.ensureDeferred
async def test_completion_is_the_upstream_text_and_usage(rigs, cli):
    """
    POST /completions returns exactly the upstream's text, delivered in
    several deltas, and exactly the token counts the upstream reported.
    """
    rig = rigs(cli)
    rig.script(text=TEXT, chunks=4, input_tokens=1234, output_tokens=56)
    daemon = await rig.daemon()
    status, body, _ = await complete(daemon, {"model": cli, "prompt": "say hi"})
    assert status == 200, body
    assert body["content"] == TEXT
    assert body["provider"] == cli
    assert body["usage"] == expected_usage(rig)
    assert rig.fake.api_requests(), "the CLI never called the fake upstream"


@pytest.mark.parametrize("cli", CLIS)
@pytest_twisted.ensureDeferred
async def test_stream_events_arrive_while_the_cli_runs(rigs, cli):
    """
    POST /completions/stream sends the first piece of the answer while the
    upstream is still holding back the rest, and the pieces add up to
    exactly the upstream's text, with its usage in the final event.
    Codex reports whole messages only, so its fake sends each piece as a
    message of its own.
    """
    rig = rigs(cli)
    gate = Deferred()
    rig.script(text=TEXT, chunks=3, delay=0.2, gate=gate, input_tokens=321, output_tokens=45)
    pieces = split_text(TEXT, 3)
    if cli == "codex":
        rig.fake.message_per_chunk = True
    daemon = await rig.daemon()
    response, reader = await open_stream(daemon.url + "/completions/stream", {"model": cli, "prompt": "say hi"})
    assert response.code == 200
    try:
        first = await within(reader.next_data())
    finally:
        released = not gate.called
        if released:
            gate.callback(None)
    assert released, "the gate opened before the first event arrived"
    assert first == {"content": pieces[0], "done": False}
    events = [first] + await read_stream(reader)
    final = events[-1]
    assert final["done"] is True and "error" not in final, final
    deltas = [e["content"] for e in events[:-1]]
    assert all(e["done"] is False for e in events[:-1])
    if cli == "codex":
        # One event per message, the product's blank line between them.
        assert [d for d in deltas if d != "\n\n"] == pieces
        assert "".join(deltas) == "\n\n".join(pieces)
    else:
        assert len(deltas) >= len(pieces)
        assert "".join(deltas) == TEXT
    assert final["usage"] == expected_usage(rig)


@pytest.mark.parametrize("cli", CLIS)
@pytest_twisted.ensureDeferred
async def test_only_model_calls_reach_the_upstream(rigs, cli):
    """
    The product's quiet switches work: the upstream sees model calls and
    nothing else (no claude "hello" probe), and gemini sends no usage
    statistics id.
    """
    rig = rigs(cli)
    rig.script()
    daemon = await rig.daemon()
    status, body, _ = await complete(daemon, {"model": cli, "prompt": "say hi"})
    assert status == 200, body
    others = [f"{r.method} {r.uri}" for r in rig.fake.requests if not rig.fake.is_model_request(r)]
    assert others == []
    assert rig.fake.api_requests()
    for recorded in rig.fake.api_requests():
        assert "x-gemini-api-privileged-user-id" not in recorded.headers, "usage statistics are on"
