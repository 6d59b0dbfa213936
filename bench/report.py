"""
The bench's results as text tables, and each target with PASS or FAIL.
"""

from __future__ import annotations

import json
import math
import statistics

from attrs import frozen


def num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def publish(text: str, results: dict, json_path: str | None) -> None:
    """
    Print a bench's tables, and write its raw figures to C{json_path} if
    one was given (C{--json}).
    """
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2, default=str)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [headers] + rows) for i in range(len(headers))]
    lines = []
    for n, row in enumerate([headers] + rows):
        cells = [str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


@frozen
class Target:
    name: str
    figure: str
    target: str
    passed: bool


def _get(results: dict, key: str, field: str) -> float:
    return results.get(key, {}).get(field, float("nan"))


def _ok(value: float, test) -> bool:
    return not (isinstance(value, float) and math.isnan(value)) and bool(test(value))


def targets(results: dict) -> list[Target]:
    r = results
    found = []

    def add(name, figure, target, passed):
        found.append(Target(name, figure, target, passed))

    # The framework floor (Klein + treq doing nothing else) is measured in
    # the same run: the HTTP targets are what SheLLM may add to it, so they
    # hold on any machine.
    floor_cpu = _get(r, "floor_c8", "daemon_cpu_ms")
    cpu = _get(r, "http_c8", "daemon_cpu_ms")
    add(
        "HTTP relay: daemon CPU per request, c=8",
        f"{num(cpu, 3)} ms (floor {num(floor_cpu, 3)}, +{num(cpu - floor_cpu, 3)})",
        "<= floor + 0.1 ms",
        _ok(cpu - floor_cpu, lambda v: v <= 0.1),
    )
    direct_first = _get(r, "direct_c1", "first_event_p50_ms")
    first = _get(r, "stream_c1", "first_event_p50_ms") - direct_first
    floor_first = _get(r, "floor_stream_c1", "first_event_p50_ms") - direct_first
    add(
        "Streaming: first content event over direct, p50, c=1",
        f"{num(first, 3)} ms (floor {num(floor_first, 3)})",
        "<= 0.5 ms",
        _ok(first, lambda v: v <= 0.5),
    )
    whole, floor_whole = _get(r, "stream_c1", "p50_ms"), _get(r, "floor_stream_c1", "p50_ms")
    add(
        "Streaming: whole stream, p50, c=1",
        f"{num(whole, 3)} ms (floor {num(floor_whole, 3)}, +{num(whole - floor_whole, 3)})",
        "<= floor + 0.2 ms",
        _ok(whole - floor_whole, lambda v: v <= 0.2),
    )
    p50, p99 = _get(r, "relay_c1", "relay_p50_ms"), _get(r, "relay_c1", "relay_p99_ms")
    add("Streaming: event relay p50, c=1", f"{num(p50, 3)} ms", "<= 1 ms", _ok(p50, lambda v: v <= 1))
    add("Streaming: event relay p99, c=1", f"{num(p99, 3)} ms", "<= 5 ms", _ok(p99, lambda v: v <= 5))
    bare, cli = _get(r, "bare_c1", "p50_ms"), _get(r, "cli_c1", "p50_ms")
    launcher = _get(r, "launcher_c1", "p50_ms")
    add(
        "CLI path: p50 over a bare spawn, c=1",
        f"{num(cli - bare, 3)} ms ({num(cli, 3)} vs {num(bare, 3)}; setpriv+env {num(launcher - bare, 3)})",
        "<= 1.5 ms",
        _ok(cli - bare, lambda v: v <= 1.5),
    )
    rate = _get(r, "cli_c8", "rate")
    add(
        "CLI path: throughput, c=8, SHELLM_MAX_CONCURRENT=8",
        f"{num(rate, 0)} req/s",
        ">= 500 req/s",
        _ok(rate, lambda v: v >= 500),
    )
    after = _get(r, "cli_c1_after", "p50_ms")
    add(
        "CLI path: p50 after the memory rounds vs before",
        f"{num(after - cli, 3)} ms ({num(after, 3)} vs {num(cli, 3)})",
        "no slowdown (<= +15% or +0.3 ms)",
        _ok(after, lambda v: v <= max(cli * 1.15, cli + 0.3)),
    )
    memory = r.get("memory", {})
    nan = float("nan")
    idle = memory.get("idle", nan)
    add(
        "Memory: RSS idle",
        f"{num(idle, 1)} MiB (floor {num(r.get('floor_memory', nan), 1)})",
        "<= 45 MiB",
        _ok(idle, lambda v: v <= 45),
    )
    loaded = memory.get("after_round2", nan)
    add("Memory: RSS after load", f"{num(loaded, 1)} MiB", "<= 80 MiB", _ok(loaded, lambda v: v <= 80))
    growth = loaded - memory.get("after_round1", nan)
    add(
        "Memory: growth between the two rounds",
        f"{num(growth, 1)} MiB",
        "flat (<= 2 MiB)",
        _ok(growth, lambda v: v <= 2),
    )
    streams = r.get("streams", {})
    n = streams.get("streams", 0)
    errors = streams.get("errors", nan)
    add(
        f"{n:,} concurrent streams: errors (all open at once: {streams.get('opened_at_once', '-')})",
        f"{errors}",
        "0",
        _ok(float(errors), lambda v: v == 0) and streams.get("opened_at_once") == n,
    )
    peak = streams.get("rss_peak", nan)
    add(
        f"{n:,} concurrent streams: daemon peak RSS", f"{num(peak, 1)} MiB", "<= 200 MiB", _ok(peak, lambda v: v <= 200)
    )
    hit, miss = _get(r, "cache_hit_c1", "p50_ms"), _get(r, "cache_miss_c1", "p50_ms")
    add(
        "Cache: a hit's p50 vs a miss's, c=1",
        f"{num(hit, 3)} ms vs {num(miss, 3)} ms",
        "<= half",
        _ok(hit, lambda v: v <= miss / 2),
    )
    startups = r.get("startup_s", [])
    middle = statistics.median(startups) if startups else nan
    floors = r.get("floor_startup_s", [])
    floor_middle = statistics.median(floors) if floors else nan
    add(
        "Start-up to first 200 on /health, median",
        f"{num(middle * 1000, 0)} ms (max {num(max(startups) * 1000 if startups else nan, 0)}, "
        f"{len(startups)} starts; floor {num(floor_middle * 1000, 0)})",
        "<= 200 ms",
        _ok(middle, lambda v: v <= 0.2),
    )
    return found


def render(results: dict, plan) -> str:
    r = results
    out = []
    machine = r.get("machine", {})
    out.append(
        f"SheLLM bench: {machine.get('cpus')} CPUs, Python {machine.get('python')}, fake CLI "
        f"in {'C' if r.get('fake_cli') == 'c' else '/bin/sh'}; load average before "
        f"{num(machine.get('load_before', [float('nan')])[0])}, after "
        f"{num(machine.get('load_after', [float('nan')])[0])} "
        "(anything else running on the machine shows up in these numbers)"
    )
    out.append(
        f"calibration: a JSON round-trip of a request body takes "
        f"{num(machine.get('json_roundtrip_us'), 1)} us in this Python; mkdir+rmdir in "
        f"{machine.get('tmpdir')} (where the daemon makes each CLI run's scratch directory) "
        f"takes {num(machine.get('mkdir_rmdir_ms'), 3)} ms"
    )
    out.append(
        f"windows: {plan.warmup_s} s warm-up + {plan.measure_s} s measured per point; "
        f"memory rounds of {plan.memory_requests:,} requests "
        f"(the issue asks for 100,000: --requests 100000); {plan.streams:,} open streams; "
        f"took {num(r.get('elapsed_s'), 1)} s"
    )
    out.append("")

    rows = []
    for c in (1, 8, 64):
        direct = r.get(f"direct_c{c}", {})
        for key, label in (
            (f"direct_c{c}", "direct upstream"),
            (f"floor_c{c}", "floor: Klein + treq relay"),
            (f"http_c{c}", "shellm /completions"),
            (f"stream_c{c}", "shellm /completions/stream"),
        ):
            s = r.get(key)
            if not s:
                continue
            is_direct = key.startswith("direct")
            rows.append(
                [
                    f"c={c:<3} {label}",
                    num(s["rate"], 0),
                    ""
                    if is_direct
                    else f"{num(s['rate'] / direct['rate'] if direct.get('rate') else float('nan'), 2)}x",
                    num(s["p50_ms"], 3),
                    num(s["p99_ms"], 3),
                    "" if is_direct else num(s["p50_ms"] - direct.get("p50_ms", float("nan")), 3),
                    num(s["first_event_p50_ms"], 3),
                    "" if is_direct else num(s["daemon_cpu_ms"], 3),
                    num(s["upstream_cpu_ms"], 3),
                    num(s["client_cpu_ms"], 3),
                    str(s["errors"]),
                ]
            )
    out.append("1. HTTP-provider path (cerebras -> fast fake upstream)")
    out.append(
        table(
            [
                "",
                "req/s",
                "vs direct",
                "p50 ms",
                "p99 ms",
                "added p50",
                "1st event p50",
                "daemon CPU/req",
                "upstream CPU/req",
                "loadgen CPU/req",
                "errors",
            ],
            rows,
        )
    )
    out.append("")

    rows = []
    for key, label in (
        ("direct_relay_c1", "direct upstream, c=1"),
        ("relay_c1", "shellm /completions/stream, c=1"),
        ("relay_c8", "shellm /completions/stream, c=8"),
        ("cli_relay_c1", "shellm claude (fake CLI) stream, c=1"),
    ):
        s = r.get(key)
        if s:
            rows.append(
                [label, str(s["relay_events"]), num(s["relay_p50_ms"], 3), num(s["relay_p99_ms"], 3), str(s["errors"])]
            )
    out.append(
        f"2. Streaming relay: upstream (or CLI) stamps each event, client receives it "
        f"({plan.relay_events} events, {plan.relay_gap_ms} ms apart, per request)"
    )
    out.append(table(["", "events", "p50 ms", "p99 ms", "errors"], rows))
    out.append("")

    rows = []
    bare = r.get("bare_c1", {})
    for key, label in (
        ("bare_c1", "bare spawn of the fake CLI, c=1"),
        ("launcher_c1", "spawn through setpriv + env -C, c=1"),
        ("fork_c1", "for reference: fork+exec from a 60 MiB Python, c=1"),
        ("cli_c1", "shellm claude, c=1"),
        ("cli_c1_after", "shellm claude, c=1, after the memory rounds"),
        ("bare_c8", "bare spawn, 8 threads"),
        ("cli_c8", "shellm claude, c=8, SHELLM_MAX_CONCURRENT=8"),
        ("cli_c8_max2", "shellm claude, c=8, SHELLM_MAX_CONCURRENT=2"),
    ):
        s = r.get(key)
        if not s:
            continue
        is_bare = key.startswith(("bare", "fork", "launcher"))
        rows.append(
            [
                label,
                num(s["rate"], 0),
                num(s.get("p50_ms"), 3),
                num(s.get("p99_ms"), 3),
                "" if is_bare or "c1" not in key else num(s["p50_ms"] - bare.get("p50_ms", float("nan")), 3),
                "" if is_bare else num(s["daemon_cpu_ms"], 3),
                "" if is_bare else str(s["errors"]),
            ]
        )
    out.append("3. CLI path (claude -> instant fake CLI)")
    out.append(table(["", "req/s", "p50 ms", "p99 ms", "added p50", "daemon CPU/req", "errors"], rows))
    out.append("")

    memory = r.get("memory", {})
    rounds = [r.get("memory_round1", {}), r.get("memory_round2", {})]
    out.append(f"4. Memory (daemon RSS, MiB; rounds of {plan.memory_requests:,} requests at c=64, half streaming)")
    out.append(
        table(
            [
                "idle",
                "floor idle",
                "before rounds",
                "after round 1",
                "after round 2",
                "peak (VmHWM)",
                "rounds: done",
                "req/s",
                "errors",
            ],
            [
                [
                    num(memory.get("idle"), 1),
                    num(r.get("floor_memory"), 1),
                    num(memory.get("before_rounds"), 1),
                    num(memory.get("after_round1"), 1),
                    num(memory.get("after_round2"), 1),
                    num(memory.get("peak"), 1),
                    " / ".join(f"{x.get('completed', 0):,}" for x in rounds),
                    " / ".join(num(x.get("rate"), 0) for x in rounds),
                    " / ".join(str(x.get("errors", "-")) for x in rounds),
                ]
            ],
        )
    )
    out.append("")

    s = r.get("streams", {})
    out.append("5. Concurrent open streams against a holding upstream (fresh daemon)")
    out.append(
        table(
            ["streams", "open at once", "held upstream", "errors", "RSS idle", "RSS all open", "RSS after", "peak RSS"],
            [
                [
                    f"{s.get('streams', 0):,}",
                    str(s.get("opened_at_once")),
                    str(s.get("held_upstream")),
                    str(s.get("errors")),
                    num(s.get("rss_idle"), 1),
                    num(s.get("rss_open"), 1),
                    num(s.get("rss_after"), 1),
                    num(s.get("rss_peak"), 1),
                ]
            ],
        )
    )
    out.append("")

    startups = r.get("startup_s", [])
    out.append("6. Start-up, spawn of twistd to the first 200 on /health: " + ", ".join(f"{x:.3f} s" for x in startups))
    out.append("")

    rows = []
    for key, label in (
        ("cache_miss_c1", "miss (Cache-Control: no-cache), c=1"),
        ("cache_hit_c1", "hit, c=1"),
        ("cache_hit_stream_c1", "hit, streamed, c=1"),
        ("cache_miss_c8", "miss (Cache-Control: no-cache), c=8"),
        ("cache_hit_c8", "hit, c=8"),
    ):
        s = r.get(key)
        if s:
            rows.append(
                [label, num(s["rate"], 0), num(s["p50_ms"], 3), num(s["p99_ms"], 3), num(s["daemon_cpu_ms"], 3)]
                + [str(s["errors"])]
            )
    counts = r.get("cache_counts") or {}
    out.append(
        "7. Response cache: claude -> instant fake CLI, SHELLM_CACHE_TTL=3600, SHELLM_MAX_CONCURRENT=2 "
        f"(the daemon counted {counts.get('hit', '-')} hits, {counts.get('miss', '-')} misses, "
        f"{counts.get('bypass', '-')} no-cache runs)"
    )
    out.append(table(["", "req/s", "p50 ms", "p99 ms", "daemon CPU/req", "errors"], rows))
    out.append("")

    found = targets(r)
    out.append("Targets")
    out.append(
        table(
            ["", "measured", "target", "result"],
            [[t.name, t.figure, t.target, "PASS" if t.passed else "FAIL"] for t in found],
        )
    )
    passed = sum(t.passed for t in found)
    out.append(f"{passed} of {len(found)} targets met")
    return "\n".join(out)
