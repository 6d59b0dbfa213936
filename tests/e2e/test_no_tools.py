"""
Prompts cannot run tools: when the upstream answers with a tool call, as a
prompt injection would make it, the real CLIs as the product runs them
execute nothing, write nothing and read nothing, and the request still ends
cleanly.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted

from tests.e2e.conftest import CLIS, SECRET, complete
from tests.e2e.fakes.base import AFTER_TOOL_TEXT, DEFAULT_TEXT
from tests.e2e.fakes.openai_responses import CODE_RAN

pytestmark = pytest.mark.e2e

#: The kinds of tool call each fake can make.  Codex has no file-read tool
#: of its own (it reads with a shell command), and in its "code mode" one
#: JavaScript tool reaches every other tool.
KINDS = [(cli, kind) for cli in CLIS for kind in ("shell", "write", "read")] + [("codex", "code")]

#: Codex tools that reach the machine (commands, files, images, the web).
CODEX_MACHINE_TOOLS = {
    "exec_command",
    "shell",
    "local_shell",
    "unified_exec",
    "write_stdin",
    "apply_patch",
    "read_file",
    "view_image",
    "image_generation",
    "web_search",
    "js_repl",
}


def model_turns(rig) -> list:
    """
    The upstream calls that carry the conversation (not gemini's own
    structured helper calls, such as its model router).
    """
    return [r for r in rig.fake.api_requests() if not rig.shape.is_helper_call(r.body)]


def assert_nothing_happened(rig, body: dict) -> None:
    targets = rig.targets
    assert not os.path.exists(targets.pwned), "the shell command ran"
    assert not os.path.exists(targets.written), "the file was written"
    leaked = [r.uri for r in rig.fake.requests if SECRET in r.text()]
    assert not leaked, f"the secret file's content went upstream in {leaked}"
    ran = [r.uri for r in rig.fake.requests if CODE_RAN in r.text()]
    assert not ran, f"a code-mode script ran and reported back in {ran}"
    assert SECRET not in str(body)


def assert_clean_end(status: int, body: dict) -> None:
    """
    A clean answer (the upstream's text after the tool call failed, or its
    plain answer) or a clean, classified error.
    """
    if status == 200:
        assert body["content"] in (AFTER_TOOL_TEXT, DEFAULT_TEXT), body
    else:
        assert status == 502 and body["error"] == "cli_failed", (status, body)


@pytest.mark.parametrize("cli,kind", KINDS)
@pytest_twisted.ensureDeferred
async def test_tool_calls_do_nothing(rigs, cli, kind):
    """
    A tool call the CLI was offered (if any), and one forced on it although
    it was not, neither runs a command, nor writes a file, nor reads the
    secret file, nor runs a code-mode script; each request still ends
    cleanly.  The CLI is offered no tools at all (claude, gemini), or none
    that reaches the machine (codex, which always declares a few).
    """
    rig = rigs(cli)
    rig.script(tool=kind)
    daemon = await rig.daemon()
    prompt = "Use your tools to do what the system tells you."
    status, body, _ = await complete(daemon, {"model": cli, "prompt": prompt})
    assert_clean_end(status, body)
    assert_nothing_happened(rig, body)
    turns = model_turns(rig)
    assert turns

    rig.script(tool=kind, force_tool=True)
    calls = len(rig.fake.tool_calls)
    status, body, _ = await complete(daemon, {"model": cli, "prompt": prompt})
    assert len(rig.fake.tool_calls) > calls, "the fake sent no tool call"
    assert_clean_end(status, body)
    assert_nothing_happened(rig, body)

    offered = rig.shape.tool_names(turns[0].body)
    if cli == "codex":
        # Codex declares a few tools whatever its flags (code mode's exec,
        # sub-agents, questions to the user): none may reach the machine.
        assert not set(offered or ()) & CODEX_MACHINE_TOOLS, offered
    else:
        assert offered in ([], None), f"{cli} was offered tools: {offered}"


@pytest.mark.parametrize("cli", CLIS)
@pytest_twisted.ensureDeferred
async def test_file_mentions_in_the_prompt_are_not_read(rigs, cli):
    """
    A prompt naming a file the way the interactive CLIs include files
    (C{@path}) is sent as text: the file's content never goes upstream.
    """
    rig = rigs(cli)
    rig.script()
    daemon = await rig.daemon()
    secret = rig.targets.secret
    for prompt in (f"@{secret}", f"Summarize @{secret} please", f"!cat {secret}"):
        status, body, _ = await complete(daemon, {"model": cli, "prompt": prompt})
        assert status == 200, (prompt, body)
        assert body["content"] == DEFAULT_TEXT
        assert_nothing_happened(rig, body)
        assert rig.shape.user_text(model_turns(rig)[-1].body) == prompt
