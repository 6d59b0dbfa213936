"""
``python -m bench.compare PATH``: the SheLLM checkout at PATH (an earlier
version) against this one, measured in the same rounds::

    python -m bench.compare /path/to/previous --json /tmp/compare.json
    python -m bench --compare /tmp/compare.json --record docs/performance.md

Two runs of the whole bench minutes apart differ on a small shared machine by
more than most changes do (a figure by 15 %, a latency at c=1 by half a
millisecond), so a before/after table made of two runs says little.  Here
both versions run at once, each its own daemon on one fake upstream, and the
load points alternate between them, the order swapped every round: whatever
else the machine does falls on both.  Each figure is the median of its
rounds.  Start-ups alternate the same way, and each freshly started daemon's
idle RSS is read before any load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable

from bench import fakecli, processes
from bench.loadgen import build_request, run_load
from bench.processes import Daemon, Upstream, memory_mib
from bench.report import publish
from bench.run import Plan, answered_by, daemon_settings, ended_clean, seed_body

#: The load points compared: key, label, path, model, concurrency.
POINTS = (
    ("http_c1", "HTTP /completions, c=1", "/completions", "cerebras", 1),
    ("http_c8", "HTTP /completions, c=8", "/completions", "cerebras", 8),
    ("stream_c1", "stream, c=1", "/completions/stream", "cerebras", 1),
    ("stream_c8", "stream, c=8", "/completions/stream", "cerebras", 8),
    ("cli_c1", "CLI (claude), c=1", "/completions", "claude", 1),
)
VERSIONS = ("before", "after")


def _order(index: int) -> tuple[str, str]:
    return VERSIONS if index % 2 == 0 else VERSIONS[::-1]


async def compare(before: str, rounds: int, measure_s: float, starts: int, say: Callable[[str], None]) -> dict:
    """
    Measure the checkout at C{before} against this one; the figures of each
    round, by version and point.
    """
    checkouts = {"before": os.path.abspath(before), "after": processes.checkout}
    results: dict = {
        "rounds": rounds,
        "measure_s": measure_s,
        **{
            name: {"checkout": checkouts[name], "commit": _commit(checkouts[name]), "startup_s": [], "idle_rss": []}
            for name in VERSIONS
        },
    }
    workdir = tempfile.mkdtemp(prefix="shellm-compare-")
    upstream = Upstream()
    daemons: list[Daemon] = []
    fake_cli = ""

    def start(name: str, label: str) -> Daemon:
        settings = daemon_settings(os.path.join(workdir, label), fake_cli, upstream, Plan())
        daemon = Daemon(os.path.join(workdir, label), {**settings, "PYTHONPATH": checkouts[name]})
        daemons.append(daemon)
        daemon.start()
        return daemon

    try:
        fake_cli, _ = fakecli.build(workdir)
        upstream.start()
        for index in range(starts):
            for name in _order(index):
                say(f"start-up {index + 1} of {starts}, {name}")
                daemon = start(name, f"{name}-start{index}")
                results[name]["startup_s"].append(await daemon.ready())
                results[name]["idle_rss"].append(memory_mib(daemon.pid)["rss"])
                daemon.stop()
                daemons.remove(daemon)
        live = {name: start(name, name) for name in VERSIONS}
        for daemon in live.values():
            await daemon.ready()
        for index in range(rounds):
            for key, label, path, model, concurrency in POINTS:
                for name in _order(index):
                    say(f"round {index + 1} of {rounds}: {label}, {name}")
                    daemon = live[name]
                    raw = build_request(daemon.port, "POST", path, seed_body(model, "bench:fast"))
                    check = ended_clean if path.endswith("/stream") else answered_by(model)
                    result = await run_load(
                        daemon.port,
                        raw,
                        concurrency,
                        check,
                        measure_s=measure_s,
                        warmup_s=0.5 if index == 0 else 0.2,
                        cpu_probes={"daemon": daemon.cpu_seconds},
                    )
                    results[name].setdefault(key, []).append(
                        {
                            "p50_ms": result.p(0.5),
                            "rate": result.rate,
                            "daemon_cpu_ms": result.cpu_ms_per_request("daemon"),
                            "errors": result.errors,
                        }
                    )
        return results
    finally:
        for daemon in daemons:
            daemon.stop()
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _commit(checkout: str) -> str | None:
    """
    The commit checked out at C{checkout} (with C{+} if it has changes), if
    it is a git checkout.
    """
    try:
        head = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", checkout, "status", "--porcelain"], capture_output=True, text=True)
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rows(results: dict) -> list[tuple[str, float | None, float | None]]:
    """
    (figure, before, after): the medians of the rounds.
    """
    table = []
    for key, label, _, _, concurrency in POINTS:
        figures = [("p50 ms", "p50_ms"), ("daemon CPU ms/req", "daemon_cpu_ms")]
        if concurrency > 1:
            figures.insert(0, ("req/s", "rate"))
        for name, field in figures:
            medians = [_median([r[field] for r in results[v].get(key, [])]) for v in VERSIONS]
            table.append((f"{label}: {name}", *medians))
    for label, field, scale in (("idle RSS MiB", "idle_rss", 1), ("start-up ms, median", "startup_s", 1000)):
        medians = [_median(results[v][field]) for v in VERSIONS]
        table.append((label, *(m * scale if m is not None else None for m in medians)))
    return table


def render(results: dict) -> str:
    """
    The comparison as a Markdown table, with what was compared.
    """

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:,.3f}"

    def change(old: float | None, new: float | None) -> str:
        return "-" if not old or new is None else f"{(new - old) / old * 100:+.0f} %"

    def version(name: str) -> str:
        figures = results[name]
        return f"`{figures.get('commit') or figures['checkout']}`"

    starts = len(results["before"]["startup_s"])
    lines = [
        f"The previous version ({version('before')}) and this one ({version('after')}), each its own daemon "
        f"on one fake upstream, the load points alternating between them for {results['rounds']} "
        f"rounds of {results['measure_s']:g} s, the order swapped every round; medians of the rounds "
        f"(`python -m bench.compare`). Start-up and idle RSS: {starts} fresh daemons of each, "
        "started alternately.",
        "",
        "| figure | before | after | change |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {label} | {cell(old)} | {cell(new)} | {change(old, new)} |" for label, old, new in rows(results)]
    errors = sum(r["errors"] for v in VERSIONS for key, *_ in POINTS for r in results[v].get(key, []))
    if errors:
        lines += ["", f"**{errors} requests failed** during the comparison: read the figures with care."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("before", metavar="PATH", help="the checkout of the earlier version")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of every load point (default 6)")
    parser.add_argument("--measure", type=float, default=2.0, metavar="SECONDS", help="window per point and round")
    parser.add_argument("--starts", type=int, default=4, help="start-ups of each version (default 4)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here (for bench --compare)")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(f"# {text}", file=sys.stderr, flush=True)

    results = asyncio.run(compare(args.before, args.rounds, args.measure, args.starts, say))
    publish(render(results), results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
