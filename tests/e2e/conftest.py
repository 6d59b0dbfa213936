"""
End-to-end wiring: the real, pinned vendor CLIs (installed with npm into a
git-ignored cache on first use), the fake vendor servers on loopback, and a
real daemon that runs the CLIs against those fakes through its ordinary
settings (C{SHELLM_*_BIN}, C{SHELLM_*_ENV}) only.

To update a pin: change L{PINS}, run the e2e tests (the cache reinstalls
itself when a version differs) and fix what the new version broke.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time

import pytest
import pytest_twisted
import treq
from attrs import define, field
from twisted.internet.defer import ensureDeferred

from tests.conftest import processes_with_marker, wait_for_no_processes
from tests.daemon import Daemon
from tests.e2e.fakes import anthropic, gemini, openai_responses
from tests.e2e.fakes.base import FakeUpstream, Script, ToolTargets

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")

#: The CLI releases the e2e tests run, as described in
#: shared/reference/cli-formats.md.
PINS = {
    "claude": ("@anthropic-ai/claude-code", "2.1.332"),
    "gemini": ("@google/gemini-cli", "0.61.0"),
    "codex": ("@openai/codex", "0.169.0"),
}
CLIS = tuple(PINS)
NPM_TIMEOUT = 900

#: A key the fakes accept; it must never show up anywhere it should not.
FAKE_KEY = "fake-e2e-key"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _installed(package: str) -> str | None:
    try:
        with open(os.path.join(CACHE, "node_modules", package, "package.json")) as f:
            return json.load(f).get("version")
    except (OSError, ValueError):
        return None


def cli_path(name: str) -> str:
    return os.path.join(CACHE, "node_modules", ".bin", name)


def _missing() -> list[str]:
    return [
        f"{package}@{version}"
        for name, (package, version) in PINS.items()
        if _installed(package) != version or not os.access(cli_path(name), os.X_OK)
    ]


def _unavailable(why: str):
    """
    In CI the real CLIs are required; locally their absence skips.
    """
    if in_ci():
        pytest.fail(f"e2e: {why}", pytrace=False)
    pytest.skip(f"e2e: {why}")


def _install_missing() -> None:
    missing = _missing()
    if not missing:
        return
    npm = shutil.which("npm")
    if npm is None:
        _unavailable("npm is not installed, so the real CLIs cannot be installed")
    manifest = os.path.join(CACHE, "package.json")
    if not os.path.exists(manifest):
        with open(manifest, "w") as f:
            json.dump({"name": "shellm-e2e-clis", "private": True}, f)
    started = time.monotonic()
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--save-exact", "--prefix", CACHE, *missing],
            cwd=CACHE,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"npm install did not finish in {NPM_TIMEOUT} s")
    if done.returncode != 0 or _missing():
        _unavailable(
            f"npm install {' '.join(missing)} failed (exit {done.returncode}):\n" + (done.stderr or done.stdout)[-3000:]
        )
    print(f"\ne2e: installed {' '.join(missing)} in {time.monotonic() - started:.0f} s")


def install_clis() -> dict[str, str]:
    """
    Install the pinned CLIs into the cache unless they are already there;
    return each CLI's executable, once each has said its version.  Runs
    once per session, before any reactor work, so blocking is harmless.
    """
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        # One installer at a time: parallel test runs share the cache.
        fcntl.flock(lock, fcntl.LOCK_EX)
        _install_missing()
    paths = {}
    for name, (_package, version) in PINS.items():
        path = cli_path(name)
        done = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "GEMINI_CLI_NO_RELAUNCH": "true"},
        )
        if done.returncode != 0 or version not in done.stdout:
            _unavailable(f"{path} --version said {done.stdout!r} {done.stderr[-500:]!r}, expected {version}")
        paths[name] = path
    return paths


@pytest.fixture(scope="session")
def cli_bins():
    return install_clis()


# -- a private /tmp for each CLI


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if path is None:
        _unavailable(f"{name} is not installed, so the CLIs cannot get a private /tmp")
    return path


class PrivateTmp:
    """
    What a CLI writes to C{/tmp}, caught: the CLI runs through a launcher
    that gives it (and everything it starts) a mount namespace of its own
    whose C{/tmp} is the empty directory L{root}, with only the test's own
    directories (C{passed}: its tmp_path, the daemon's TMPDIR) and the CLIs'
    installation mounted back at their usual paths.  Whatever else the CLIs write under C{/tmp} lands
    in L{root}, and nothing else on the machine does.
    """

    def __init__(self, passed: list[str]):
        self.tmp = os.path.realpath("/tmp")
        self.root = tempfile.mkdtemp(prefix="shellm-e2e-tmp-")
        self.mountpoints = set()
        # The CLIs' own installation stays visible wherever the checkout is
        # (a CI clone may itself live under /tmp).
        for path in [*passed, CACHE]:
            path = os.path.realpath(path)
            if os.path.commonpath([path, self.tmp]) == self.tmp and path != self.tmp:
                relative = os.path.relpath(path, self.tmp)
                os.makedirs(os.path.join(self.root, relative))
                self.mountpoints.add(relative)
        #: The mountpoints and the directories above them, all empty.
        self.skeleton = {parent for m in self.mountpoints for parent in _ancestors(m)}

    def launcher(self, program: str, where: str) -> str:
        """
        Write, in C{where}, an executable that runs C{program} with its
        arguments, environment and pid (the product's signals reach it as
        before), in the private C{/tmp}.
        """
        mounts = [
            f"{_tool('mount')} --bind {shlex.quote(os.path.join(self.tmp, m))} "
            f"{shlex.quote(os.path.join(self.root, m))}"
            for m in sorted(self.mountpoints)
        ]
        mounts.append(f"{_tool('mount')} --rbind {shlex.quote(self.root)} {shlex.quote(self.tmp)}")
        inner = " && ".join(mounts) + ' && exec "$0" "$@"'
        # Unprivileged, a user namespace that maps the user to itself grants
        # the mounts without changing who the CLI runs as.
        user = [] if os.geteuid() == 0 else ["--user", "--map-current-user"]
        unshare = [_tool("unshare"), *user, "--mount", "--propagation", "private", "--", "/bin/sh", "-c", inner]
        path = os.path.join(where, f"private-tmp-{os.path.basename(program)}")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n")
            f.write(f'exec {shlex.join(unshare)} {shlex.quote(program)} "$@"\n')
        os.chmod(path, 0o755)
        return path

    def written(self) -> list[str]:
        """
        What the CLIs put in their C{/tmp}, as paths they saw.
        """
        found = []
        for directory, dirs, files in os.walk(self.root):
            relative = os.path.relpath(directory, self.root)
            for name in sorted(dirs + files):
                entry = os.path.normpath(os.path.join(relative, name))
                if entry not in self.skeleton:
                    found.append(os.path.join("/tmp", entry))
        return found

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _ancestors(relative: str) -> list[str]:
    parts = relative.split(os.sep)
    return [os.path.join(*parts[: i + 1]) for i in range(len(parts))]


@pytest.fixture(scope="session")
def private_tmp_works(tmp_path_factory):
    """
    Whether this machine lets the tests give a CLI a private C{/tmp}: one
    launcher run that writes there, seen in the private directory only.
    """
    where = str(tmp_path_factory.mktemp("private-tmp-probe"))
    private = PrivateTmp([where])
    try:
        probe = os.path.join(where, "probe")
        with open(probe, "w") as f:
            f.write(f"#!/bin/sh\necho private > /tmp/shellm-probe && test -d {shlex.quote(where)}\n")
        os.chmod(probe, 0o755)
        done = subprocess.run(
            [private.launcher(probe, where)], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0 or private.written() != ["/tmp/shellm-probe"] or os.path.exists("/tmp/shellm-probe"):
            _unavailable(f"cannot give the CLIs a private /tmp (unshare --mount): {done.stderr.strip()[-500:]}")
    finally:
        private.close()


# -- what differs between the vendors

FAKES = {
    "claude": anthropic.FakeAnthropic,
    "gemini": gemini.FakeGemini,
    "codex": openai_responses.FakeOpenAIResponses,
}
#: Module with user_text, system_blocks, tool_names for each CLI's requests.
SHAPES = {"claude": anthropic, "gemini": gemini, "codex": openai_responses}
#: Where each CLI keeps its own configuration in HOME.
CONFIG_ENTRIES = {
    "claude": {".claude", ".claude.json"},
    "gemini": {".gemini"},
    "codex": {".codex"},
}


def cli_environment(name: str, fake: FakeUpstream, home: str, marker: str, logged_in: bool = True) -> dict[str, str]:
    """
    What an operator puts into C{SHELLM_<NAME>_ENV} (and the service user's
    home) to point C{name} at C{fake}.  The quiet and fail-fast switches are
    the product's business, not repeated here.
    """
    env = {"HOME": home, "SHELLM_TEST_MARKER": marker}
    if name == "claude":
        env["ANTHROPIC_BASE_URL"] = fake.origin
        if logged_in:
            env["ANTHROPIC_API_KEY"] = FAKE_KEY
    elif name == "gemini":
        env["GOOGLE_GEMINI_BASE_URL"] = fake.origin
        if logged_in:
            env["GEMINI_API_KEY"] = FAKE_KEY
            settings = os.path.join(home, ".gemini", "settings.json")
            os.makedirs(os.path.dirname(settings))
            with open(settings, "w") as f:
                # GOOGLE_GEMINI_BASE_URL alone selects the "gateway" auth type,
                # which headless mode refuses.
                json.dump({"security": {"auth": {"selectedType": "gemini-api-key"}}}, f)
    elif name == "codex":
        if logged_in:
            # Codex takes a custom base URL only from its config.
            env["FAKE_OPENAI_KEY"] = FAKE_KEY
            config = os.path.join(home, ".codex", "config.toml")
            os.makedirs(os.path.dirname(config))
            with open(config, "w") as f:
                f.write(
                    'model_provider = "fake"\n\n'
                    "[model_providers.fake]\n"
                    'name = "fake"\n'
                    f'base_url = "{fake.origin}/v1"\n'
                    'env_key = "FAKE_OPENAI_KEY"\n'
                    'wire_api = "responses"\n'
                    "supports_websockets = false\n"
                    "request_max_retries = 0\n"
                    "stream_max_retries = 0\n"
                )
    return env


@define
class Rig:
    """
    One CLI wired to its fake for one test: a private HOME, the settings
    for the daemon, and the daemons started with them.
    """

    name: str
    bin: str
    fake: FakeUpstream
    root: str
    marker: str
    logged_in: bool = True
    home: str = field(init=False)
    targets: ToolTargets = field(init=False)
    env: dict = field(init=False)
    daemons: list = field(factory=list)
    daemon_dirs: list = field(factory=list)
    daemon_tmp: str = field(init=False)
    private_tmp: PrivateTmp = field(init=False)
    launcher: str = field(init=False)

    def __attrs_post_init__(self):
        self.home = os.path.join(self.root, "home")
        os.makedirs(self.home)
        # Short: claude puts a UNIX socket under its TMPDIR and, when the path
        # would be too long for one, falls back to /tmp/cc-socks-<uid>.
        self.daemon_tmp = tempfile.mkdtemp(prefix="shellm-e2e-")
        self.private_tmp = PrivateTmp([os.path.dirname(self.root), self.daemon_tmp])
        self.launcher = self.private_tmp.launcher(self.bin, self.root)
        outside = os.path.join(self.root, "outside")
        os.makedirs(outside)
        self.targets = ToolTargets(
            pwned=os.path.join(outside, "pwned"),
            written=os.path.join(outside, "written.txt"),
            secret=os.path.join(outside, "secret.txt"),
        )
        with open(self.targets.secret, "w") as f:
            f.write(SECRET + "\n")
        self.env = cli_environment(self.name, self.fake, self.home, self.marker, self.logged_in)

    @property
    def shape(self):
        return SHAPES[self.name]

    def daemon_env(self, **settings) -> dict[str, str]:
        return {
            "HOME": self.home,
            # The daemon's own temporary files (each run's scratch directory).
            "TMPDIR": self.daemon_tmp,
            # The CLI, run with a /tmp of its own (see PrivateTmp).
            f"SHELLM_{self.name.upper()}_BIN": self.launcher,
            f"SHELLM_{self.name.upper()}_ENV": json.dumps(self.env),
            "SHELLM_FALLBACK_CHAIN": self.name,
            "SHELLM_HEALTH_TTL": "300",
            "SHELLM_KILL_GRACE": "1",
            **{k: str(v) for k, v in settings.items()},
        }

    async def daemon(self, **settings) -> Daemon:
        cwd = os.path.join(self.root, f"daemon-{len(self.daemons)}")
        os.makedirs(cwd)
        daemon = Daemon(self.daemon_env(**settings), self.marker, cwd)
        self.daemons.append(daemon)
        self.daemon_dirs.append(cwd)
        await daemon.started(timeout=30)
        return daemon

    def script(self, **changes) -> Script:
        self.fake.script = Script(targets=self.targets, **changes)
        return self.fake.script

    def cli_processes(self) -> list[int]:
        """
        Live processes of this test other than the daemons.
        """
        daemons = {d.pid for d in self.daemons}
        return [p for p in processes_with_marker(self.marker) if p not in daemons]

    def home_entries(self) -> set[str]:
        return set(os.listdir(self.home))

    def stray_files(self) -> list[str]:
        """
        Files the runs left where they should not: anything in HOME but the
        CLI's own config, each run's scratch directory still there, the
        tool targets, anything the CLIs wrote in /tmp.
        """
        stray = [f"$HOME/{e}" for e in sorted(self.home_entries() - CONFIG_ENTRIES[self.name])]
        stray += [f"$TMPDIR/{e} (a run's scratch directory)" for e in sorted(os.listdir(self.daemon_tmp))]
        outside = os.path.dirname(self.targets.secret)
        stray += [os.path.join(outside, e) for e in sorted(os.listdir(outside)) if e != "secret.txt"]
        for cwd in self.daemon_dirs:
            stray += [os.path.join(cwd, e) for e in sorted(os.listdir(cwd)) if not e.startswith("shellm.db")]
        stray += self.private_tmp.written()
        return stray

    def close(self):
        shutil.rmtree(self.daemon_tmp, ignore_errors=True)
        self.private_tmp.close()


#: Content of the secret file that tool calls try to read.
SECRET = "e2e-secret-7f3a9c1d5b"


@pytest_twisted.async_yield_fixture
async def rigs(cli_bins, private_tmp_works, tmp_path, marker):
    """
    C{rigs(name)} makes a L{Rig}; afterwards every daemon is stopped, every
    fake closed, and no process of the test may be left.
    """
    from twisted.internet import reactor

    made: list[Rig] = []

    def make(name: str, logged_in: bool = True) -> Rig:
        fake = FAKES[name](reactor).start()
        rig = Rig(name, cli_bins[name], fake, str(tmp_path / f"{name}-{len(made)}"), marker, logged_in)
        made.append(rig)
        return rig

    try:
        yield make
    finally:
        for rig in made:
            for daemon in rig.daemons:
                await daemon.stop()
            await rig.fake.stop()
        left = await wait_for_no_processes(marker)
        stray = [f for rig in made for f in rig.stray_files()]
        for rig in made:
            rig.close()
    assert left == [], f"processes left behind: {left}"
    assert stray == [], f"files written outside the run's directory and the CLI's config: {stray}"


async def complete(daemon: Daemon, body: dict, path: str = "/completions", timeout: float = 60):
    """
    POST C{body}; the status, the parsed JSON body and the seconds it took.
    """
    from twisted.internet import reactor

    started = reactor.seconds()
    response = await treq.post(daemon.url + path, json=body, timeout=timeout)
    parsed = json.loads(await response.content())
    return response.code, parsed, reactor.seconds() - started


async def within(awaitable, seconds: float = 60):
    """
    Await C{awaitable}, but fail after C{seconds} instead of hanging the
    run.
    """
    from twisted.internet import reactor

    return await ensureDeferred(awaitable).addTimeout(seconds, reactor)


async def read_stream(reader, seconds: float = 60) -> list[dict]:
    """
    The rest of an SSE stream's data events, up to its end.
    """
    events = []
    while True:
        event = await within(reader.next_data(), seconds)
        if event is None:
            return events
        events.append(event)
