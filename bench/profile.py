"""
``python -m bench.profile``: one scenario under load while py-spy samples
the daemon, then the functions that cost the most, by own time and with
what they call::

    pip install py-spy
    python -m bench.profile --scenario http --seconds 10 --out /tmp/shellm-profile

The collapsed stacks are kept (``<out>/<scenario>.folded``); flamegraph.pl,
inferno or speedscope draw them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile

from bench import fakecli, processes
from bench.loadgen import build_request, run_load
from bench.processes import Daemon, Upstream, stop_group
from bench.run import Plan, answered_by, daemon_settings, ended_clean, seed_body

SCENARIOS = {
    # name: (path, model, concurrency, check)
    "http": ("/completions", "cerebras", 8, answered_by("cerebras")),
    "stream": ("/completions/stream", "cerebras", 8, ended_clean),
    "cli": ("/completions", "claude", 8, answered_by("claude")),
}


def summarize(folded: str, top: int = 25) -> str:
    """
    The heaviest frames of py-spy's collapsed stacks, by own samples and
    by samples anywhere on the stack.
    """
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    samples = 0
    with open(folded) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            samples += n
            frames = stack.split(";")
            own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
    lines = [f"{samples} samples", "", "own time:"]
    lines += [f"  {n * 100 / samples:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "including callees:"]
    lines += [f"  {n * 100 / samples:5.1f}%  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(lines)


async def profile(scenario: str, seconds: float, out: str, rate: int, env: dict) -> str:
    path, model, concurrency, check = SCENARIOS[scenario]
    workdir = tempfile.mkdtemp(prefix="shellm-profile-")
    upstream = Upstream()
    daemon = None
    spy = None
    try:
        fake, _ = fakecli.build(workdir)
        upstream.start()
        daemon = Daemon(
            os.path.join(workdir, "daemon"),
            daemon_settings(os.path.join(workdir, "daemon"), fake, upstream, Plan(daemon_env=env)),
        )
        daemon.start()
        await daemon.ready()
        raw = build_request(daemon.port, "POST", path, seed_body(model, "bench:fast"))
        await run_load(daemon.port, raw, concurrency, check, measure_s=1.0)  # warm up
        folded = os.path.join(out, f"{scenario}.folded")
        spy = subprocess.Popen(
            [
                shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy"),
                "record",
                "--pid",
                str(daemon.pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--nonblocking",
                "--duration",
                str(int(seconds)),
                "--output",
                folded,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        await asyncio.sleep(0.5)
        result = await run_load(
            daemon.port, raw, concurrency, check, measure_s=seconds - 0.5, cpu_probes={"daemon": daemon.cpu_seconds}
        )
        _, err = await asyncio.get_running_loop().run_in_executor(None, spy.communicate)
        spy = None
        if not os.path.exists(folded):
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        head = (
            f"scenario {scenario}: {path} model={model} c={concurrency}: "
            f"{result.rate:,.0f} req/s, daemon CPU {result.cpu_ms_per_request('daemon'):.3f} "
            f"ms/request, {result.errors} errors (py-spy slows the daemon a little)"
        )
        return head + "\n" + summarize(folded)
    finally:
        if spy is not None:
            stop_group(spy, 1)
        if daemon is not None:
            daemon.stop()
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="http")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--checkout", metavar="PATH", help="profile the SheLLM checkout at PATH instead of this one")
    parser.add_argument(
        "--daemon-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra environment variable for the daemon (repeatable)",
    )
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "shellm-profile"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.checkout:
        processes.checkout = os.path.abspath(args.checkout)
    env = dict(item.split("=", 1) for item in args.daemon_env)
    print(asyncio.run(profile(args.scenario, args.seconds, args.out, args.rate, env)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
