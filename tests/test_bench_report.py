"""
The benchmark's verdicts: each target is judged from the measured figure,
a missing figure never passes, and the report prints every target with the
framework floor beside the ones it bounds.
"""

from __future__ import annotations

import pytest

from bench.report import render, targets
from bench.run import Plan


def _point(rate, p50, cpu, first=float("nan"), relay=(float("nan"), float("nan"))):
    return {
        "rate": rate,
        "p50_ms": p50,
        "p99_ms": p50 * 2,
        "daemon_cpu_ms": cpu,
        "upstream_cpu_ms": 0.1,
        "client_cpu_ms": 0.1,
        "errors": 0,
        "completed": 100,
        "first_event_p50_ms": first,
        "first_event_p99_ms": first,
        "relay_p50_ms": relay[0],
        "relay_p99_ms": relay[1],
        "relay_events": 10,
    }


def _results(http_cpu: float, idle: float) -> dict:
    return {
        "machine": {"cpus": 2, "python": "3", "load_before": [0.1], "load_after": [0.2]},
        "direct_c1": _point(3000, 0.25, float("nan"), first=0.25),
        "direct_c8": _point(9000, 0.4, float("nan")),
        "floor_c1": _point(700, 1.2, 1.1),
        "floor_c8": _point(900, 8.0, 1.05),
        "floor_stream_c1": _point(700, 1.0, 1.1, first=0.9),
        "http_c1": _point(800, 1.0, http_cpu),
        "http_c8": _point(1200, 6.0, http_cpu),
        "stream_c1": _point(700, 1.1, http_cpu, first=1.1),
        "stream_c8": _point(1100, 7.0, http_cpu),
        "relay_c1": _point(100, 50, 1.0, relay=(0.7, 2.0)),
        "bare_c1": _point(400, 2.4, float("nan")),
        "launcher_c1": _point(250, 4.0, float("nan")),
        "cli_c1": _point(130, 3.5, 3.0),
        "cli_c1_after": _point(130, 3.6, 3.0),
        "cli_c8": _point(600, 12.0, 2.5),
        "memory": {"idle": idle, "before_rounds": 50, "after_round1": 60, "after_round2": 60.5},
        "floor_memory": 52.0,
        "streams": {"streams": 1000, "opened_at_once": 1000, "errors": 0, "rss_peak": 90},
        "startup_s": [0.18, 0.19, 0.25],
        "floor_startup_s": [0.15],
        "cache_miss_c1": _point(250, 3.8, 3.0),
        "cache_hit_c1": _point(1500, 0.6, 0.5),
        "cache_miss_c8": _point(400, 20.0, 3.0),
        "cache_hit_c8": _point(2500, 3.0, 0.4),
        "cache_counts": {"hit": 4000, "miss": 0, "bypass": 650},
    }


def test_targets_pass_and_fail_on_the_figures():
    good = {t.name: t for t in targets(_results(http_cpu=1.1, idle=44.0))}
    bad = {t.name: t for t in targets(_results(http_cpu=1.6, idle=59.0))}
    cpu = "HTTP relay: daemon CPU per request, c=8"
    assert good[cpu].passed and not bad[cpu].passed  # the floor is 1.05 ms: +0.05 passes, +0.55 fails
    assert "floor 1.050" in bad[cpu].figure
    assert good["Memory: RSS idle"].passed and not bad["Memory: RSS idle"].passed
    assert "floor 52.0" in bad["Memory: RSS idle"].figure
    assert "setpriv+env 1.600" in good["CLI path: p50 over a bare spawn, c=1"].figure
    startup = good["Start-up to first 200 on /health, median"]
    assert startup.passed and "190 ms" in startup.figure and "floor 150" in startup.figure
    assert good["Cache: a hit's p50 vs a miss's, c=1"].passed
    assert len(good) == 15


def test_streaming_targets_are_judged_against_direct_and_the_floor():
    results = _results(http_cpu=1.1, idle=44.0)
    judged = {t.name: t for t in targets(results)}
    # first content 1.1 ms vs direct 0.25: +0.85 ms; whole stream 1.1 vs the floor's 1.0: +0.1 ms
    assert not judged["Streaming: first content event over direct, p50, c=1"].passed
    assert judged["Streaming: whole stream, p50, c=1"].passed
    results["stream_c1"] = _point(700, 1.3, 1.1, first=0.7)
    judged = {t.name: t for t in targets(results)}
    assert judged["Streaming: first content event over direct, p50, c=1"].passed
    assert not judged["Streaming: whole stream, p50, c=1"].passed


def test_a_missing_figure_never_passes():
    results = _results(http_cpu=0.9, idle=44.0)
    del results["http_c8"], results["memory"], results["floor_stream_c1"]
    judged = {t.name: t.passed for t in targets(results)}
    assert judged["HTTP relay: daemon CPU per request, c=8"] is False
    assert judged["Memory: RSS idle"] is False
    assert judged["Streaming: whole stream, p50, c=1"] is False


def test_the_report_prints_every_target_with_its_verdict():
    results = _results(http_cpu=1.6, idle=59.0)
    text = render(results, Plan())
    for target in targets(results):
        line = next(line for line in text.splitlines() if line.startswith(target.name))
        assert line.rstrip().endswith("PASS" if target.passed else "FAIL")
    assert "floor: Klein + treq relay" in text
    assert "spawn through setpriv + env -C, c=1" in text
    assert "7. Response cache" in text and "hit, c=8" in text


def test_the_record_is_generated_with_its_machine_targets_and_warning(tmp_path):
    """
    C{--record} writes the page from the run: it says it is generated, names
    the machine and the load, has every target, the before/after table when
    given an earlier run, and warns when the machine was busy.
    """
    from bench import record

    results = _results(http_cpu=1.6, idle=59.0)
    results["machine"]["load_before"] = [1.9, 1.0, 0.5]
    path = tmp_path / "performance.md"
    record.write(str(path), results, render(results, Plan()), _compared())
    text = path.read_text()
    assert "Generated by `python -m bench --record`, do not edit" in text.splitlines()[2]
    assert "Load average (1, 5, 15 min) before the run 1.90, 1.00, 0.50" in text
    assert "**Warning:** the load average was 1.90 on 2 CPUs" in text
    for target in targets(results):
        assert f"| {target.name} | {target.figure} |" in text
    assert "### Before and after" in text
    assert "| HTTP /completions, c=8: daemon CPU ms/req | 2.000 | 1.600 | -20 % |" in text
    assert "$" not in text.replace("$ ", "")  # every placeholder filled


def test_an_idle_machine_gets_no_warning():
    from bench.record import busy_warning

    assert busy_warning({"cpus": 2, "load_before": [0.3, 0.2, 0.1]}) is None
    assert busy_warning({"cpus": 2, "load_before": [0.6, 0.2, 0.1]}) is not None


def _compared(rounds: int = 3) -> dict:
    """
    What C{python -m bench.compare} measures: every point's rounds for both
    versions (the earlier one at 2.0 ms of CPU at c=8, this one at 1.6).
    """
    from bench.compare import POINTS

    def version(cpu_c8: float) -> dict:
        figures: dict = {"checkout": "/old", "startup_s": [1.0, 1.2, 1.1], "idle_rss": [60.0, 61.0, 62.0]}
        for key, *_ in POINTS:
            cpu = cpu_c8 if key == "http_c8" else 2.5
            figures[key] = [
                {"p50_ms": 3.0 + i, "rate": 400.0, "daemon_cpu_ms": cpu + (i - 1) * 0.3, "errors": 0}
                for i in range(rounds)
            ]
        return figures

    return {"rounds": rounds, "measure_s": 2.0, "before": version(2.0), "after": version(1.6)}


def test_the_comparison_takes_the_median_of_the_rounds():
    """
    Each figure of C{python -m bench.compare} is the median of its rounds
    (noise in one round moves nothing), start-up in milliseconds, with the
    change in percent; failed requests are called out.
    """
    from bench.compare import render, rows

    compared = _compared()
    compared["after"]["http_c8"][0]["daemon_cpu_ms"] = 99.0  # one bad round
    table = {label: (old, new) for label, old, new in rows(compared)}
    assert table["HTTP /completions, c=8: daemon CPU ms/req"] == pytest.approx((2.0, 1.9))
    assert table["HTTP /completions, c=1: p50 ms"] == (4.0, 4.0)
    assert table["start-up ms, median"] == (1100.0, 1100.0)
    assert table["idle RSS MiB"] == (61.0, 61.0)
    assert "req/s" not in " ".join(label for label in table if "c=1" in label)
    text = render(compared)
    assert "| HTTP /completions, c=8: daemon CPU ms/req | 2.000 | 1.900 | -5 % |" in text
    assert "failed" not in text
    compared["after"]["stream_c1"][1]["errors"] = 2
    assert "**2 requests failed**" in render(compared)
