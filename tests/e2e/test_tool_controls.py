"""
Controls for the no-tools tests: run each real CLI directly, with its tools
switched on, against the same fake tool calls, and see them work.  Only
then does "nothing happened" through the daemon mean the product's flags
stopped them, not that the fakes' calls were malformed.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from tests.e2e.conftest import SECRET

pytestmark = pytest.mark.e2e

CONTROLS = [
    ("claude", "shell"),
    ("claude", "write"),
    ("claude", "read"),
    ("gemini", "shell"),
    ("gemini", "write"),
    ("gemini", "read"),
    ("codex", "shell"),
    ("codex", "read"),
    ("codex", "code"),
]


class _Run(ProcessProtocol):
    def __init__(self, stdin: bytes):
        self.stdin = stdin
        self.output = bytearray()
        self.ended = Deferred()

    def connectionMade(self):
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value)


def tools_on(rig, kind: str) -> tuple[list[str], dict]:
    """
    argv and extra environment that let the CLI use the tool kind, on the
    rig's targets, headless.
    """
    outside = os.path.dirname(rig.targets.secret)
    if rig.name == "claude":
        return (
            [
                "-p",
                "--output-format",
                "json",
                "--no-session-persistence",
                "--allowedTools",
                "Bash",
                "Write",
                "Read",
                "--add-dir",
                outside,
            ],
            {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1"},
        )
    if rig.name == "gemini":
        return (
            ["-o", "json", "--yolo", "--include-directories", outside],
            {"GEMINI_CLI_TRUST_WORKSPACE": "true", "GEMINI_CLI_NO_RELAUNCH": "true"},
        )
    args = [
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--ephemeral",
        "--sandbox",
        "danger-full-access",
        "-c",
        "analytics.enabled=false",
        "--disable",
        "plugins",
        "--disable",
        "remote_plugin",
    ]
    if kind != "code":
        # A model codex does not know gets the plain exec_command tool
        # instead of code mode.
        args += ["-m", "gpt-fake"]
    return args + ["-"], {}


@pytest.mark.parametrize("cli,kind", CONTROLS)
@pytest_twisted.ensureDeferred
async def test_the_fake_tool_calls_work_when_tools_are_on(rigs, cli, kind, tmp_path):
    """
    With tools on, the fake's shell call creates the marker file, its write
    call writes the file, and its read call sends the secret upstream.
    """
    from twisted.internet import reactor

    rig = rigs(cli)
    rig.script(tool=kind)
    args, env = tools_on(rig, kind)
    work = tmp_path / f"work-{cli}-{kind}"
    work.mkdir()
    scratch = tempfile.mkdtemp(prefix="shellm-e2e-control-")
    env = {"PATH": os.environ["PATH"], "TMPDIR": scratch, "CLAUDE_CODE_TMPDIR": scratch, **rig.env, **env}
    run = _Run(b"Use your tools.")
    reactor.spawnProcess(run, rig.bin, [rig.bin, *args], env=env, path=str(work))
    killer = reactor.callLater(90, run.transport.signalProcess, "KILL")
    try:
        await run.ended
    finally:
        if killer.active():
            killer.cancel()
        shutil.rmtree(scratch, ignore_errors=True)
    output = run.output.decode("utf-8", "replace")
    assert rig.fake.tool_calls, output[-2000:]
    targets = rig.targets
    if kind == "shell":
        assert os.path.exists(targets.pwned), output[-2000:]
        os.unlink(targets.pwned)
    elif kind == "write":
        assert os.path.exists(targets.written), output[-2000:]
        os.unlink(targets.written)
    elif kind == "read":
        assert any(SECRET in r.text() for r in rig.fake.requests), output[-2000:]
    else:
        # Code mode: its script reached the shell and wrote with apply_patch.
        assert os.path.exists(targets.pwned) and os.path.exists(targets.written), output[-2000:]
        os.unlink(targets.pwned)
        os.unlink(targets.written)
    # This run was not the product's (rig.bin, not rig.launcher): what it
    # leaves in the real /tmp is its own business, and nobody looks there.
