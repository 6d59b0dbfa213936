"""
What reaches the upstream: the model the client asked for, the system
prompt where each CLI carries it, and the prompt as plain text that never
shows up in any process's argv.
"""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from tests.daemon import eventually, open_stream
from tests.e2e.conftest import CLIS, complete, read_stream
from tests.e2e.fakes.base import DEFAULT_TEXT

pytestmark = pytest.mark.e2e

#: A non-default alias per CLI, and what must be in the upstream's model
#: name for it.  Claude and gemini resolve their short names themselves.
ALIASES = {
    "claude": ("claude-sonnet", "sonnet"),
    "gemini": ("gemini-pro", "pro"),
    "codex": ("codex-mini", "gpt-5.1-codex-mini"),
}


def upstream_model(rig, recorded) -> str:
    if rig.name == "gemini":
        from tests.e2e.fakes.gemini import model_of

        return model_of(recorded)
    return recorded.body["model"]


def wrapped(system: str, prompt: str) -> str:
    """
    How the product hands gemini and codex the system prompt: in the user
    turn, set apart from the request.
    """
    return f"<system_instructions>\n{system}\n</system_instructions>\n\n<user_request>\n{prompt}\n</user_request>"


@pytest.mark.parametrize("cli", CLIS)
@pytest_twisted.ensureDeferred
async def test_model_alias_and_system_prompt_reach_the_upstream(rigs, cli):
    """
    The alias's model reaches the upstream as the model of the call, and the
    system prompt arrives as a system block (claude) or, set apart, ahead of
    the prompt in the user turn (gemini, codex); the prompt itself is the
    user turn's text.
    """
    rig = rigs(cli)
    rig.script()
    alias, model = ALIASES[cli]
    system = "You are a pirate. Always say arr."
    prompt = "Name three sorting algorithms."
    daemon = await rig.daemon()
    status, body, _ = await complete(daemon, {"model": alias, "prompt": prompt, "system": system})
    assert status == 200, body
    assert body["content"] == DEFAULT_TEXT
    requests = rig.fake.api_requests()
    assert requests
    for recorded in requests:
        found = upstream_model(rig, recorded)
        if cli == "codex":
            assert found == model
        else:
            assert model in found, found
    last = requests[-1].body
    if cli == "claude":
        assert system in rig.shape.system_blocks(last)
        assert rig.shape.user_text(last) == prompt
    else:
        assert rig.shape.user_text(last) == wrapped(system, prompt)
        assert not any(system in block for block in rig.shape.system_blocks(last))


def command_lines(rig) -> list[str]:
    lines = []
    for pid in rig.cli_processes():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                lines.append(f.read().replace(b"\0", b" ").decode("utf-8", "replace"))
        except OSError:
            pass
    return lines


@pytest.mark.parametrize("cli", CLIS)
@pytest_twisted.ensureDeferred
async def test_prompt_is_never_in_argv_and_flags_are_plain_text(rigs, cli):
    """
    While the upstream is still answering, no process of the CLI has the
    prompt or the system prompt in its command line; prompts that look like
    the CLIs' own switches reach the upstream verbatim, as the user's text,
    and get the upstream's ordinary answer.
    """
    rig = rigs(cli)
    gate = Deferred()
    rig.script(gate=gate)
    token = uuid.uuid4().hex
    prompt = f"--help -y --dangerously-skip-permissions {token}"
    system = f"system {token}"
    daemon = await rig.daemon()
    response, reader = await open_stream(
        daemon.url + "/completions/stream", {"model": cli, "prompt": prompt, "system": system}
    )
    try:

        async def upstream_called():
            return rig.fake.api_requests()

        assert await eventually(upstream_called, timeout=30)
        lines = command_lines(rig)
    finally:
        if not gate.called:
            gate.callback(None)
    events = await read_stream(reader)
    assert events[-1]["done"] is True and "error" not in events[-1], events[-1]
    assert lines, "no CLI process was running while the upstream answered"
    assert any(rig.bin in line or rig.name in line for line in lines), lines
    assert not [line for line in lines if token in line]

    rig.script()
    for prompt in ("--help", "-y", "--dangerously-skip-permissions"):
        before = len(rig.fake.api_requests())
        status, body, _ = await complete(daemon, {"model": cli, "prompt": prompt})
        assert status == 200, (prompt, body)
        assert body["content"] == DEFAULT_TEXT
        sent = rig.fake.api_requests()[before:]
        assert sent, prompt
        assert rig.shape.user_text(sent[-1].body) == prompt
