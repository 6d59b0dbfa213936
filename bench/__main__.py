"""
``python -m bench``: run every scenario, print the tables and the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import sys
import time
from datetime import UTC, datetime

from bench import processes, record
from bench.record import busy_warning
from bench.report import publish, render, targets
from bench.run import Bench, Plan


def _raise_file_limit(wanted: int) -> None:
    # The open-streams scenario holds two sockets per stream in the daemon
    # and one here; children inherit the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure SheLLM against a fast fake upstream and instant fake CLIs, "
        "directly and through a real `twistd -n shellm`; print each figure "
        "with its target.",
    )
    parser.add_argument("--quick", action="store_true", help="everything with small counts, about 20-30 s")
    parser.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help="requests per memory round (default 10,000; quick 1,000; the issue's figure is 100,000)",
    )
    parser.add_argument("--streams", type=int, metavar="N", help="concurrent open streams (default 1,000; quick 200)")
    parser.add_argument(
        "--measure", type=float, metavar="SECONDS", help="measured window per load point (default 3; quick 0.5)"
    )
    parser.add_argument("--log-level", default="info", help="the daemons' LOG_LEVEL (default info, as deployed)")
    parser.add_argument(
        "--checkout",
        metavar="PATH",
        help="run the daemons from the SheLLM checkout at PATH (to compare two versions with the same bench)",
    )
    parser.add_argument(
        "--daemon-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra environment variable for every daemon (repeatable), e.g. TMPDIR=/dev/shm",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (daemon logs, usage databases)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    parser.add_argument("--record", metavar="FILE", help="write the record of this run here (docs/performance.md)")
    parser.add_argument(
        "--compare", metavar="FILE", help="the --json of python -m bench.compare, the record's before/after table"
    )
    args = parser.parse_args(argv)
    if args.compare and not args.record:
        parser.error("--compare goes into the record: give --record FILE too")

    overrides = {"log_level": args.log_level, "daemon_env": dict(item.split("=", 1) for item in args.daemon_env)}
    if args.requests is not None:
        overrides["memory_requests"] = args.requests
    if args.streams is not None:
        overrides["streams"] = args.streams
    if args.measure is not None:
        overrides["measure_s"] = args.measure
    if args.checkout:
        processes.checkout = os.path.abspath(args.checkout)
    plan = Plan.quick(**overrides) if args.quick else Plan(**overrides)
    _raise_file_limit(4 * plan.streams + 1024)

    started = time.monotonic()
    warning = busy_warning({"cpus": os.cpu_count(), "load_before": os.getloadavg()})
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)

    def say(text: str) -> None:
        print(f"# {time.monotonic() - started:6.1f} s  {text}", file=sys.stderr, flush=True)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    # TERM and HUP stop the bench like Ctrl-C: every process it started is stopped.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    bench = Bench(plan, say)
    try:
        results = asyncio.run(bench.run())
    except KeyboardInterrupt:
        print("interrupted; every process the bench started has been stopped", file=sys.stderr)
        return 130
    finally:
        if bench.workdir and not args.keep:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    if args.keep:
        say(f"work directory kept: {bench.workdir}")
    results["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = render(results, plan)
    publish(report, results, args.json)
    if warning:  # again, under the tables it concerns
        print(f"warning: {warning}", file=sys.stderr)
    if args.record:
        compared = None
        if args.compare:
            with open(args.compare) as f:
                compared = json.load(f)
        record.write(args.record, results, report, compared)
    if args.strict and not all(t.passed for t in targets(results)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
