"""
The processes the bench starts (the fake upstream, real ``twistd -n
shellm`` daemons), each in its own process group so that stopping it stops
everything under it, and what ``/proc`` says about them.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import os
import signal
import socket
import subprocess
import sys
import time

from bench.loadgen import build_request, connect

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The SheLLM checkout the daemons run (first on their PYTHONPATH); another
#: one can be named to compare two versions with the same bench.
checkout = REPO
_TICK = os.sysconf("SC_CLK_TCK")


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _die_with_the_bench() -> None:
    # Runs in the child before exec: if the bench is killed outright, the
    # kernel kills what it started (and a daemon's CLIs follow the daemon).
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU of the whole process (every thread), not of its
    children.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def memory_mib(pid: int) -> dict:
    """
    C{{"rss": ..., "peak": ...}} in MiB (VmRSS and VmHWM).
    """
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values["rss" if line.startswith("VmRSS") else "peak"] = int(line.split()[1]) / 1024
    return values


def child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _python_env() -> dict:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "USER", "LOGNAME") if k in os.environ}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    # The checkout under test wins over whatever is installed.
    env["PYTHONPATH"] = checkout
    return env


def stop_group(process: subprocess.Popen, grace: float) -> None:
    """
    TERM the process, KILL its whole group after C{grace} seconds, and reap it.
    """
    if process.poll() is None:
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        pass


class Upstream:
    """
    C{python -m bench.upstream} in its own process.
    """

    def __init__(self):
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.upstream", "--port", "0"],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=_python_env(),
            start_new_session=True,
            preexec_fn=_die_with_the_bench,
        )
        line = self.process.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"the fake upstream did not start: {line!r}")
        self.port = int(line.split()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def call(self, path: str) -> dict:
        connection = await connect(self.port)
        try:
            response = await asyncio.wait_for(connection.request(build_request(self.port, "POST", path, {})), 10)
        finally:
            connection.close()
        return json.loads(bytes(response.body))

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, 2)
            if self.process.stdout:
                self.process.stdout.close()


class Daemon:
    """
    A real C{twistd -n --pidfile= shellm}, configured through C{SHELLM_*}
    variables only, in a fresh working directory (so no C{.env} is read),
    its JSON log written to a file there.
    """

    def __init__(self, workdir: str, settings: dict):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.port = free_port()
        self.settings = {"SHELLM_LISTEN": f"tcp:{self.port}:interface=127.0.0.1", **settings}
        self.process: subprocess.Popen | None = None
        self.log_path = os.path.join(workdir, "daemon.log")
        self.spawned_at = 0.0

    @staticmethod
    def command() -> list[str]:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if os.access(twistd, os.X_OK):
            return [twistd, "-n", "--pidfile=", "shellm"]
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "shellm"]

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> None:
        log = open(self.log_path, "ab")
        try:
            self.spawned_at = time.monotonic()
            self.process = subprocess.Popen(
                self.command(),
                env={**_python_env(), **self.settings},
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_the_bench,
            )
        finally:
            log.close()

    async def ready(self, timeout: float = 30.0) -> float:
        """
        Poll C{GET /health} until it answers 200; the seconds since spawning.
        """
        request = build_request(self.port, "GET", "/health")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.process.returncode}:\n" + self.log_tail())
            try:
                connection = await connect(self.port, timeout=2)
            except (TimeoutError, OSError):
                await asyncio.sleep(0.005)
                continue
            try:
                response = await asyncio.wait_for(connection.request(request), 10)
            except (TimeoutError, ConnectionError):
                await asyncio.sleep(0.005)
                continue
            finally:
                connection.close()
            if response.status == 200:
                return time.monotonic() - self.spawned_at
            await asyncio.sleep(0.005)
        raise RuntimeError("the daemon did not answer /health in time:\n" + self.log_tail())

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def memory(self) -> dict:
        return memory_mib(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 20000))
                return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, 10)


class FloorServer(Daemon):
    """
    L{bench.floor}: Klein and treq relaying to the upstream with nothing
    else, started and watched like the daemon.
    """

    def __init__(self, workdir: str, upstream_url: str):
        # This checkout's bench, whichever SheLLM checkout is under test.
        super().__init__(workdir, {"UPSTREAM": upstream_url, "PYTHONPATH": REPO})

    @staticmethod
    def command() -> list[str]:
        return [sys.executable, "-m", "bench.floor"]
