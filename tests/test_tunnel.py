"""
C{bin/setup-vps --tunnel HOSTNAME}: the cloudflared settings and unit it
writes, and the steps it prints, read from its C{--dry-run} output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from ruamel.yaml import YAML

from shellm.config import SETTINGS
from tests.test_etc import ROOT, SETUP_VPS, system_state, systemd_analyze

HOST = "shellm.example.com"
TUNNEL_UNIT = os.path.join(ROOT, "etc", "cloudflared-shellm.service")
CLOUDFLARED = (
    "/etc/cloudflared",
    "/etc/cloudflared/shellm.yml",
    "/etc/cloudflared/shellm.json",
    "/etc/systemd/system/cloudflared-shellm.service",
)


def path_without_cloudflared() -> str:
    return os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if not os.path.exists(os.path.join(d, "cloudflared"))
    )


def dry_run(*args: str, path: str | None = None) -> str:
    """
    The output of C{bin/setup-vps --dry-run ARGS}, which must change nothing.
    """
    before = system_state(), [os.path.lexists(p) for p in CLOUDFLARED]
    env = {**os.environ, "PATH": path or path_without_cloudflared()}
    result = subprocess.run([SETUP_VPS, "--dry-run", *args], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (system_state(), [os.path.lexists(p) for p in CLOUDFLARED]) == before
    return result.stdout


def written(output: str) -> dict[str, tuple[str, str]]:
    """
    The files a dry run would write: path -> (mode, content).
    """
    files = {}
    for match in re.finditer(r"(?m)^\+ write (\S+) \(mode (\d+)\):\n((?:    .*\n|\n)*)", output):
        content = "".join(line[4:] + "\n" for line in match.group(3).rstrip("\n").split("\n"))
        files[match.group(1)] = (match.group(2), content)
    return files


def default_port() -> str:
    (listen,) = [s.default for s in SETTINGS if s.env == "SHELLM_LISTEN"]
    assert listen.endswith(":interface=127.0.0.1")
    return listen.split(":")[1]


def test_tunnel_carries_the_hostname_to_the_loopback_listener_only():
    """
    The cloudflared settings route C{HOSTNAME} to SheLLM's default loopback
    listener, with the origin's Host header and TLS checks left on, and
    answer 404 for any other hostname (cloudflared's required catch-all).
    """
    files = written(dry_run("--tunnel", HOST))
    mode, text = files["/etc/cloudflared/shellm.yml"]
    assert mode == "0644"
    config = YAML(typ="safe").load(text)
    origin = f"127.0.0.1:{default_port()}"
    assert config == {
        "tunnel": "shellm",
        "credentials-file": "/etc/cloudflared/shellm.json",
        "ingress": [
            {
                "hostname": HOST,
                "service": f"http://{origin}",
                "originRequest": {"httpHostHeader": origin, "noTLSVerify": False},
            },
            {"service": "http_status:404"},
        ],
    }


def test_without_cloudflared_it_prints_how_to_install_and_create_the_tunnel():
    """
    With no cloudflared on the machine, no unit is written, and the manual
    steps say how to install it and, in order, the exact commands that log
    in, create the tunnel with the credentials file the settings name, route
    the hostname and start the unit.
    """
    output = dry_run("--tunnel", HOST)
    assert "/etc/systemd/system/cloudflared-shellm.service" not in written(output)
    assert "cloudflared is not installed" in output
    manual = output[output.index("== Done.") :]
    steps = [
        "apt-get update && apt-get install cloudflared",
        f"bin/setup-vps --tunnel {HOST}",
        "cloudflared tunnel login",
        "cloudflared tunnel create --credentials-file /etc/cloudflared/shellm.json shellm",
        f"cloudflared tunnel route dns shellm {HOST}",
        "systemctl start cloudflared-shellm",
    ]
    positions = [manual.index(step) for step in steps]
    assert positions == sorted(positions)
    assert "SHELLM_CLIENTS" in manual[manual.index("The tunnel from") :]


def test_with_cloudflared_the_unit_runs_the_installed_one(tmp_path):
    """
    With cloudflared on the PATH, the unit from C{etc/} is installed with
    that cloudflared in ExecStart, running the tunnel the settings describe.
    """
    fake = tmp_path / "cloudflared"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    output = dry_run("--tunnel", HOST, path=f"{tmp_path}{os.pathsep}{path_without_cloudflared()}")
    mode, unit = written(output)["/etc/systemd/system/cloudflared-shellm.service"]
    assert mode == "0644"
    with open(TUNNEL_UNIT, encoding="utf-8") as f:
        shipped = f.read()
    assert unit == shipped.replace("ExecStart=/usr/bin/cloudflared ", f"ExecStart={fake} ")
    assert f"\nExecStart={fake} --no-autoupdate --config /etc/cloudflared/shellm.yml tunnel run\n" in unit
    assert "cloudflared is not installed" not in output
    assert "cloudflared tunnel create --credentials-file /etc/cloudflared/shellm.json shellm" in output


def test_without_tunnel_nothing_about_cloudflared():
    output = dry_run()
    assert "cloudflared" not in output


@pytest.mark.parametrize("args", [["--tunnel"], ["--tunnel", "not a host"], ["--tunnel", "-x.example.com"]])
def test_tunnel_needs_a_hostname(args):
    """
    A missing or malformed hostname stops the script before it does anything.
    """
    result = subprocess.run([SETUP_VPS, "--dry-run", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "hostname" in result.stderr and result.stdout == ""


def test_tunnel_unit_passes_systemd_analyze_verify(tmp_path):
    """
    C{systemd-analyze verify} accepts the tunnel's unit (with an ExecStart
    that exists here).  Skipped where systemd-analyze is not installed.
    """
    tool = systemd_analyze()
    with open(TUNNEL_UNIT, encoding="utf-8") as f:
        text = f.read()
    unit = tmp_path / "cloudflared-shellm.service"
    unit.write_text(text.replace("ExecStart=/usr/bin/cloudflared ", f"ExecStart={shutil.which('true')} "))
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cloudflared-shellm.service" not in result.stderr, result.stderr
