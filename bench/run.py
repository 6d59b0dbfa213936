"""
The bench's scenarios, in order: the fake upstream and a bare spawn of the
fake CLI first (the physical limits of this machine, in this run), then the
same work through real daemons.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

from attrs import define, field

from bench import fakecli
from bench.loadgen import (
    LoadResult,
    Response,
    build_request,
    connect,
    now_ns,
    percentile,
    run_load,
)
from bench.processes import Daemon, FloorServer, Upstream, cpu_seconds
from shellm.providers.spawner import find_launcher


@define
class Plan:
    """
    How long and how much: the defaults keep a full run under about three
    minutes on a 2-core machine; C{quick} runs everything small.
    """

    warmup_s: float = 0.5
    measure_s: float = 3.0
    spawn_measure_s: float = 2.0
    memory_requests: int = 10_000
    streams: int = 1_000
    extra_startups: int = 2
    relay_events: int = 20
    relay_gap_ms: int = 5
    log_level: str = "info"
    #: Extra variables for every daemon (e.g. TMPDIR=/dev/shm), for experiments.
    daemon_env: dict = field(factory=dict)

    @classmethod
    def quick(cls, **overrides) -> Plan:
        values = dict(
            warmup_s=0.2,
            measure_s=0.5,
            spawn_measure_s=0.4,
            memory_requests=1_000,
            streams=200,
            extra_startups=0,
            relay_events=10,
        )
        values.update(overrides)
        return cls(**values)


CONCURRENCY = (1, 8, 64)


def seed_body(model: str, prompt: str) -> dict:
    return {"model": model, "prompt": prompt, "fallback": False}


def upstream_body(prompt: str) -> dict:
    # What SheLLM's Cerebras provider sends upstream for a seed request.
    return {
        "model": "gpt-oss-120b",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def ended_clean(response: Response) -> bool:
    """
    A seed SSE stream whose last event is C{done} and not an error.
    """
    tail = bytes(response.body[-400:])
    last = tail[tail.rfind(b"data:") :]
    return b'"done": true' in last and b'"error"' not in last


def answered_by(provider: str):
    marker = f'"provider": "{provider}"'.encode()

    def check(response: Response) -> bool:
        return marker in response.body and b'"content": "' in response.body

    return check


def upstream_done(response: Response) -> bool:
    return response.body.endswith(b"data: [DONE]\n\n")


def daemon_settings(
    workdir: str, fake_cli: str, upstream: Upstream, plan: Plan, max_concurrent: int = 8, http_max_concurrent: int = 256
) -> dict:
    return {
        "CEREBRAS_API_KEY": "bench-key",
        "SHELLM_CEREBRAS_BASE_URL": upstream.base_url,
        "SHELLM_CLAUDE_BIN": fake_cli,
        "SHELLM_GEMINI_BIN": fake_cli,
        "SHELLM_CODEX_BIN": fake_cli,
        "SHELLM_CLAUDE_ENV": json.dumps({"ANTHROPIC_API_KEY": "bench"}),
        "SHELLM_GEMINI_ENV": json.dumps({"GEMINI_API_KEY": "bench"}),
        "SHELLM_CODEX_ENV": json.dumps({"OPENAI_API_KEY": "bench"}),
        "SHELLM_GLOBAL_RPM": str(10**9),
        "SHELLM_MAX_CONCURRENT": str(max_concurrent),
        "SHELLM_MAX_QUEUE_DEPTH": "100000",
        "SHELLM_HTTP_MAX_CONCURRENT": str(http_max_concurrent),
        "SHELLM_HTTP_MAX_QUEUE_DEPTH": "100000",
        "SHELLM_DB": os.path.join(workdir, "usage.db"),
        "SHELLM_DRAIN_TIMEOUT": "5",
        # Every stream and load connection comes from 127.0.0.1, and the
        # streams scenario holds 1,000 or more at once: no cap in the way.
        "SHELLM_MAX_CONNECTIONS": str(10**6),
        "LOG_LEVEL": plan.log_level,
        **plan.daemon_env,
    }


def cache_counts(port: int) -> dict:
    """
    The daemon's response-cache counts, from its /metrics (open: the bench
    daemons have no keys).
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("shellm_cache_requests_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            counts[result] = int(float(line.rsplit(" ", 1)[1]))
    return counts


def calibrate(tmpdir: str) -> dict:
    """
    Two figures that explain most differences between machines: how fast
    this Python is, and what a directory costs on the disk the daemon's
    scratch directories go to (each CLI run makes and removes three).
    """
    body = json.dumps(seed_body("cerebras", "bench:fast" * 10))
    started = time.perf_counter()
    for _ in range(2000):
        json.loads(body)
        json.dumps({"content": "Hi! I am a fast fake.", "done": False})
    python_us = (time.perf_counter() - started) / 2000 * 1e6
    base = tempfile.mkdtemp(prefix="shellm-bench-fs-", dir=tmpdir)
    try:
        started = time.perf_counter()
        for i in range(50):
            path = os.path.join(base, str(i))
            os.mkdir(path)
            os.rmdir(path)
        fs_ms = (time.perf_counter() - started) / 50 * 1000
    finally:
        os.rmdir(base)
    return {"json_roundtrip_us": python_us, "tmpdir": tmpdir, "mkdir_rmdir_ms": fs_ms}


class Bench:
    def __init__(self, plan: Plan, say=print):
        self.plan = plan
        self.say = say
        self.results: dict = {}
        self._daemons: list[Daemon] = []
        self.upstream = Upstream()
        self.workdir = ""
        self.fake_cli = ""

    # -- helpers

    def _window(self) -> dict:
        return {"warmup_s": self.plan.warmup_s, "measure_s": self.plan.measure_s}

    def _probes(self, daemon: Daemon | None = None) -> dict:
        probes = {"upstream": lambda: cpu_seconds(self.upstream.process.pid)}
        if daemon is not None:
            probes["daemon"] = daemon.cpu_seconds
        return probes

    async def _start_daemon(self, name: str, extra: dict | None = None, **kwargs) -> Daemon:
        workdir = os.path.join(self.workdir, name)
        os.makedirs(workdir, exist_ok=True)
        settings = daemon_settings(workdir, self.fake_cli, self.upstream, self.plan, **kwargs)
        daemon = Daemon(workdir, {**settings, **(extra or {})})
        self._daemons.append(daemon)
        daemon.start()
        took = await daemon.ready()
        self.results.setdefault("startup_s", []).append(took)
        return daemon

    def _stop_daemon(self, daemon: Daemon) -> None:
        daemon.stop()
        if daemon in self._daemons:
            self._daemons.remove(daemon)

    def _record(self, key: str, result: LoadResult) -> dict:
        summary = {
            "concurrency": result.concurrency,
            "completed": result.completed,
            "errors": result.errors,
            "rate": result.rate,
            "p50_ms": result.p(0.50),
            "p99_ms": result.p(0.99),
            "first_event_p50_ms": percentile(result.first_event_ms, 0.50),
            "first_event_p99_ms": percentile(result.first_event_ms, 0.99),
            "relay_p50_ms": percentile(result.relay_ms, 0.50),
            "relay_p99_ms": percentile(result.relay_ms, 0.99),
            "relay_events": len(result.relay_ms),
            "daemon_cpu_ms": result.cpu_ms_per_request("daemon"),
            "upstream_cpu_ms": result.cpu_ms_per_request("upstream"),
            "client_cpu_ms": (result.client_cpu_s * 1000 / result.completed if result.completed else float("nan")),
            "failures": result.failures,
        }
        self.results[key] = summary
        if result.errors:
            self.say(f"  {key}: {result.errors} errors, e.g. {result.failures[:2]}")
        return summary

    # -- scenarios

    async def direct(self) -> None:
        """
        The fake upstream alone: what no gateway can beat.
        """
        port = self.upstream.port
        fast = build_request(port, "POST", "/v1/chat/completions", upstream_body("bench:fast"))
        for c in CONCURRENCY:
            self.say(f"direct upstream, c={c}")
            result = await run_load(port, fast, c, upstream_done, cpu_probes=self._probes(), **self._window())
            self._record(f"direct_c{c}", result)
        await self._relay("direct_relay_c1", port, "/v1/chat/completions", upstream_body, 1)

    async def _relay(self, key: str, port: int, path: str, body, concurrency: int, model: str = "cerebras") -> dict:
        plan = self.plan
        prompt = f"bench:ts:{plan.relay_events}:{plan.relay_gap_ms}"
        payload = body(prompt) if body is upstream_body else body(model, prompt)
        raw = build_request(port, "POST", path, payload)
        check = upstream_done if body is upstream_body else ended_clean
        self.say(f"relay {key}")
        result = await run_load(port, raw, concurrency, check, keep_frames=True, measure_s=plan.measure_s, warmup_s=0)
        return self._record(key, result)

    async def http_path(self, daemon: Daemon) -> None:
        port = daemon.port
        plain = build_request(port, "POST", "/completions", seed_body("cerebras", "bench:fast"))
        stream = build_request(port, "POST", "/completions/stream", seed_body("cerebras", "bench:fast"))
        for c in CONCURRENCY:
            self.say(f"shellm HTTP provider, non-streaming, c={c}")
            self._record(
                f"http_c{c}",
                await run_load(
                    port, plain, c, answered_by("cerebras"), cpu_probes=self._probes(daemon), **self._window()
                ),
            )
        for c in CONCURRENCY:
            self.say(f"shellm HTTP provider, streaming, c={c}")
            self._record(
                f"stream_c{c}",
                await run_load(port, stream, c, ended_clean, cpu_probes=self._probes(daemon), **self._window()),
            )
        for c in (1, 8):
            await self._relay(f"relay_c{c}", port, "/completions/stream", seed_body, c)

    def _bare_spawn_once(self, launcher: tuple = ()) -> float:
        started = now_ns()
        process = subprocess.Popen(
            [*launcher, self.fake_cli, "-p", "--output-format", "stream-json"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"},
            cwd=self.workdir,
        )
        out, _ = process.communicate(b"bench:fast", timeout=10)
        took = (now_ns() - started) / 1e6
        if process.returncode != 0 or b'"type":"result"' not in out:
            raise RuntimeError(f"the fake CLI failed: {process.returncode} {out[-200:]!r}")
        return took

    def _spawn_series(self, launcher: tuple) -> dict:
        """
        One spawn after another for the spawn window, after a warm-up.
        """
        for _ in range(20):
            self._bare_spawn_once(launcher)  # warm the page cache and the allocator
        measure = self.plan.spawn_measure_s
        times = []
        deadline = time.monotonic() + measure
        while time.monotonic() < deadline and len(times) < 20_000:
            times.append(self._bare_spawn_once(launcher))
        return {
            "completed": len(times),
            "rate": len(times) / measure,
            "p50_ms": percentile(times, 0.5),
            "p99_ms": percentile(times, 0.99),
        }

    def bare_spawn(self) -> None:
        """
        The fake CLI started from this process with pipes for stdin, stdout
        and stderr, its output read to the end and the child reaped: what a
        CLI request costs before any gateway.
        """
        measure = self.plan.spawn_measure_s
        self.say("bare spawn of the fake CLI, c=1")
        self.results["bare_c1"] = self._spawn_series(())
        self.say("bare spawn of the fake CLI, c=8")

        def loop() -> int:
            done = 0
            while time.monotonic() < deadline8:
                self._bare_spawn_once()
                done += 1
            return done

        started = time.monotonic()
        deadline8 = started + measure
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            done = sum(pool.map(lambda _: loop(), range(8)))
        self.results["bare_c8"] = {"completed": done, "rate": done / (time.monotonic() - started)}

    def launcher_spawn(self) -> None:
        """
        The fake CLI started through C{setpriv --pdeathsig KILL} and C{env
        -C}, the two small programs SheLLM runs before each CLI (for the
        parent-death signal and the working directory): the floor of
        SheLLM's own way.
        """
        launcher = find_launcher()
        if launcher is None:
            return
        setpriv, env = launcher
        prefix = (setpriv, "--pdeathsig", "KILL", "--", env, "-C", self.workdir, "--")
        self.say("spawn of the fake CLI through setpriv and env, c=1")
        self.results["launcher_c1"] = self._spawn_series(prefix)

    async def floor(self) -> None:
        """
        The framework floor (L{bench.floor}) under the HTTP path's load.
        """
        server = FloorServer(os.path.join(self.workdir, "floor"), self.upstream.base_url)
        self._daemons.append(server)
        server.start()
        try:
            self.results.setdefault("floor_startup_s", []).append(await server.ready())
            await asyncio.sleep(0.5)
            self.results["floor_memory"] = server.memory()["rss"]
            for path, key, check in (
                ("/completions", "floor", answered_by("cerebras")),
                ("/completions/stream", "floor_stream", upstream_done),
            ):
                raw = build_request(server.port, "POST", path, seed_body("cerebras", "bench:fast"))
                for c in (1, 8):
                    self.say(f"framework floor (Klein + treq), {path}, c={c}")
                    self._record(
                        f"{key}_c{c}",
                        await run_load(server.port, raw, c, check, cpu_probes=self._probes(server), **self._window()),
                    )
        finally:
            self._stop_daemon(server)

    def forked_spawn(self) -> None:
        """
        For reference: the same CLI started by C{fork()} then C{exec()}
        from a Python process as large as an idle daemon, the way SheLLM
        starts CLIs where setpriv or C{env -C} is missing; the copy of its
        page tables, and the copy-on-write faults that follow, are what
        C{posix_spawn} and C{vfork} avoid.
        """
        self.say("fork+exec of the fake CLI from a 60 MiB Python process, c=1")
        script = (
            "import os, sys, time\n"
            "ballast = bytearray(60 * 1024 * 1024)\n"
            "for i in range(0, len(ballast), 4096): ballast[i] = 1\n"
            "fake, seconds = sys.argv[1], float(sys.argv[2])\n"
            "times = []\n"
            "deadline = time.monotonic() + seconds\n"
            "while time.monotonic() < deadline and len(times) < 5000:\n"
            "    started = time.monotonic_ns()\n"
            "    r_in, w_in = os.pipe(); r_out, w_out = os.pipe()\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        try:\n"
            "            os.dup2(r_in, 0); os.dup2(w_out, 1)\n"
            "            os.execv(fake, [fake, '-p'])\n"
            "        finally:\n"
            "            os._exit(127)\n"
            "    os.close(r_in); os.close(w_out)\n"
            "    os.write(w_in, b'bench:fast'); os.close(w_in)\n"
            "    while os.read(r_out, 65536): pass\n"
            "    os.close(r_out); os.waitpid(pid, 0)\n"
            "    times.append((time.monotonic_ns() - started) / 1e6)\n"
            "times.sort()\n"
            "print(len(times), times[len(times) // 2], times[int(0.99 * (len(times) - 1))])\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, self.fake_cli, str(self.plan.spawn_measure_s)],
            capture_output=True,
            timeout=60 + self.plan.spawn_measure_s,
            check=True,
        )
        count, p50, p99 = done.stdout.split()
        self.results["fork_c1"] = {
            "completed": int(count),
            "rate": int(count) / self.plan.spawn_measure_s,
            "p50_ms": float(p50),
            "p99_ms": float(p99),
        }

    async def cli_path(self, daemon: Daemon, key: str, concurrency: int) -> dict:
        port = daemon.port
        raw = build_request(port, "POST", "/completions", seed_body("claude", "bench:fast"))
        self.say(f"shellm CLI provider ({key}), c={concurrency}")
        return self._record(
            key,
            await run_load(
                port,
                raw,
                concurrency,
                answered_by("claude"),
                cpu_probes={"daemon": daemon.cpu_seconds},
                **self._window(),
            ),
        )

    async def memory_rounds(self, daemon: Daemon) -> None:
        port = daemon.port
        plain = build_request(port, "POST", "/completions", seed_body("cerebras", "bench:fast"))
        stream = build_request(port, "POST", "/completions/stream", seed_body("cerebras", "bench:fast"))

        def check(response: Response) -> bool:
            return ended_clean(response) if response.first_event_ns else (answered_by("cerebras")(response))

        memory = self.results.setdefault("memory", {})
        memory["before_rounds"] = daemon.memory()["rss"]
        for round_ in (1, 2):
            n = self.plan.memory_requests
            self.say(f"memory round {round_}: {n} requests, half streaming, c=64")
            result = await run_load(
                port,
                lambda i: stream if i % 2 else plain,
                64,
                check,
                measure_s=max(120.0, n / 200),
                max_requests=n,
                cpu_probes={"daemon": daemon.cpu_seconds},
            )
            self._record(f"memory_round{round_}", result)
            await asyncio.sleep(0.5)
            memory[f"after_round{round_}"] = daemon.memory()["rss"]
        memory["peak"] = daemon.memory()["peak"]

    async def open_streams(self) -> None:
        """
        Many streams open at once against an upstream that holds them, then
        released together.
        """
        n = self.plan.streams
        daemon = await self._start_daemon("streams", http_max_concurrent=n + 64)
        connections: list = []
        try:
            await asyncio.sleep(0.3)
            idle = daemon.memory()["rss"]
            port = daemon.port
            raw = build_request(port, "POST", "/completions/stream", seed_body("cerebras", "bench:hold"))
            self.say(f"{n} concurrent streams against a holding upstream")
            errors: list[str] = []
            waiters: list = []
            gate = asyncio.Semaphore(64)

            async def open_one() -> None:
                async with gate:
                    try:
                        connection = await connect(port)
                    except (TimeoutError, OSError) as e:
                        errors.append(f"connect: {e!r}")
                        return
                    connections.append(connection)
                    waiters.append((connection, connection.request(raw)))

            await asyncio.gather(*(open_one() for _ in range(n)))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                opened = sum(1 for c, _ in waiters if c.response.first_event_ns is not None)
                if opened + sum(1 for _, w in waiters if w.done()) >= len(waiters):
                    break
                await asyncio.sleep(0.05)
            held = (await self.upstream.call("/bench/stats"))["held"]
            opened = sum(1 for c, _ in waiters if c.response.first_event_ns is not None)
            during = daemon.memory()["rss"]
            released = (await self.upstream.call("/bench/release"))["released"]
            done, pending = await asyncio.wait([w for _, w in waiters], timeout=60)
            errors.extend("timed out" for _ in pending)
            for waiter in done:
                if waiter.exception() is not None:
                    errors.append(repr(waiter.exception()))
                elif waiter.result().status != 200 or not ended_clean(waiter.result()):
                    errors.append(f"{waiter.result().status}: {bytes(waiter.result().body[-200:])!r}")
            await asyncio.sleep(0.3)
            memory = daemon.memory()
            self.results["streams"] = {
                "streams": n,
                "opened_at_once": opened,
                "held_upstream": held,
                "released": released,
                "errors": len(errors),
                "error_examples": errors[:3],
                "rss_idle": idle,
                "rss_open": during,
                "rss_after": memory["rss"],
                "rss_peak": memory["peak"],
            }
            if errors:
                self.say(f"  streams: {len(errors)} errors, e.g. {errors[:2]}")
        finally:
            for connection in connections:
                connection.close()
            self._stop_daemon(daemon)

    async def cache_path(self) -> None:
        """
        The response cache, a hit next to a miss in the same daemon: the
        same claude request, answered afresh (Cache-Control: no-cache runs
        the CLI and stores the answer) or from the cache.
        """
        daemon = await self._start_daemon("cache", max_concurrent=2, extra={"SHELLM_CACHE_TTL": "3600"})
        port = daemon.port
        body = seed_body("claude", "bench:fast")
        miss = build_request(port, "POST", "/completions", body, headers={"Cache-Control": "no-cache"})
        hit = build_request(port, "POST", "/completions", body)
        hit_stream = build_request(port, "POST", "/completions/stream", body)
        probes = {"daemon": daemon.cpu_seconds}
        for c in (1, 8):
            self.say(f"response cache: miss (no-cache), c={c}")
            self._record(
                f"cache_miss_c{c}",
                await run_load(port, miss, c, answered_by("claude"), cpu_probes=probes, **self._window()),
            )
            self.say(f"response cache: hit, c={c}")
            self._record(
                f"cache_hit_c{c}",
                await run_load(port, hit, c, answered_by("claude"), cpu_probes=probes, **self._window()),
            )
        self.say("response cache: streamed hit, c=1")
        self._record(
            "cache_hit_stream_c1", await run_load(port, hit_stream, 1, ended_clean, cpu_probes=probes, **self._window())
        )
        self.results["cache_counts"] = cache_counts(port)
        self._stop_daemon(daemon)

    async def startups(self) -> None:
        """
        More start-ups of the daemon, each beside one of the floor, so
        that both medians see the same machine.
        """
        for i in range(self.plan.extra_startups):
            self.say(f"start-up {i + 1} of {self.plan.extra_startups}")
            self._stop_daemon(await self._start_daemon(f"startup{i}"))
            floor = FloorServer(os.path.join(self.workdir, f"floor-startup{i}"), self.upstream.base_url)
            self._daemons.append(floor)
            floor.start()
            self.results.setdefault("floor_startup_s", []).append(await floor.ready())
            self._stop_daemon(floor)

    # -- the whole run

    async def run(self) -> dict:
        started = time.monotonic()
        self.results["machine"] = {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_before": os.getloadavg(),
        }
        self.workdir = tempfile.mkdtemp(prefix="shellm-bench-")
        self.results["machine"].update(calibrate(self.plan.daemon_env.get("TMPDIR") or "/tmp"))
        try:
            self.fake_cli, kind = fakecli.build(self.workdir)
            self.results["fake_cli"] = kind
            self.upstream.start()
            await self.direct()
            await self.floor()
            self.bare_spawn()
            self.launcher_spawn()
            self.forked_spawn()

            main = await self._start_daemon("main", max_concurrent=8)
            await asyncio.sleep(0.5)
            self.results["memory"] = {"idle": main.memory()["rss"]}
            await self.http_path(main)
            await self.cli_path(main, "cli_c1", 1)
            await self.cli_path(main, "cli_c8", 8)
            if kind == "c":
                await self._relay("cli_relay_c1", main.port, "/completions/stream", seed_body, 1, model="claude")
            await self.memory_rounds(main)
            await self.cli_path(main, "cli_c1_after", 1)
            self._stop_daemon(main)

            two = await self._start_daemon("cli2", max_concurrent=2)
            await self.cli_path(two, "cli_c8_max2", 8)
            self._stop_daemon(two)

            await self.cache_path()
            await self.open_streams()
            await self.startups()
        finally:
            for daemon in list(self._daemons):
                self._stop_daemon(daemon)
            self.upstream.stop()
        self.results["machine"]["load_after"] = os.getloadavg()
        self.results["elapsed_s"] = time.monotonic() - started
        self.results["workdir"] = self.workdir
        return self.results
