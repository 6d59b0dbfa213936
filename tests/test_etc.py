"""
The deployment files in C{etc/} and C{bin/setup-vps}: checked by the tools
that will read them (systemd-analyze, logrotate, bash) where installed, and
against the code they must agree with.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys

import pytest

from shellm.admin.common import Paths
from shellm.admin.env_example import ENV_EXAMPLES, render_env_example
from shellm.config import SETTINGS, load_config, read_env_file

pytestmark = pytest.mark.slow  # real processes and daemons (the second stage of .ci/run)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "etc", "shellm.service")
LOGROTATE = os.path.join(ROOT, "etc", "logrotate.conf")
ENV_EXAMPLE = os.path.join(ROOT, "etc", "shellm.env.example")
SETUP_VPS = os.path.join(ROOT, "bin", "setup-vps")
SERVICE_HOME = "/home/shellm"


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def unit_section(name: str) -> dict[str, list[str]]:
    """
    One section of the unit: every key with all its values, in order.
    """
    values: dict[str, list[str]] = {}
    section = None
    for line in read(UNIT).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == name:
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def script_variables() -> dict[str, str]:
    """
    C{NAME=value} assignments at the top level of bin/setup-vps, with
    C{$NAME} references expanded.
    """
    found: dict[str, str] = {}
    for line in read(SETUP_VPS).splitlines():
        match = re.match(r"^([A-Z_]+)=([^\s(`$][^\s]*|\$[A-Z_]+[^\s]*)$", line)
        if match:
            value = re.sub(r"\$([A-Z_]+)", lambda m: found[m.group(1)], match.group(2))
            found[match.group(1)] = value
    return found


def default(name: str) -> float:
    return float(next(s for s in SETTINGS if s.name == name).default)


# -- etc/shellm.env.example


def test_env_example_is_generated_from_the_settings():
    """
    The example file is exactly what C{shellm env-example} prints from
    L{SETTINGS}: regenerate it with
    C{python -m shellm.admin env-example > etc/shellm.env.example}.
    """
    assert read(ENV_EXAMPLE) == render_env_example()


def test_env_example_lists_every_setting_with_its_default_and_help():
    """
    Each setting appears with its one-line help and, commented out, its default.
    """
    text = read(ENV_EXAMPLE)
    for s in SETTINGS:
        assert f"\n#{s.env}={s.default}\n" in text, s.env
        assert f"\n# {s.help}\n" in text, s.env
    assert set(ENV_EXAMPLES) <= {s.env for s in SETTINGS}


def test_env_example_values_are_valid(tmp_path):
    """
    Every line, uncommented, is a valid settings file for the daemon (and
    the examples of JSON values survive its quoting rules).
    """
    text = read(ENV_EXAMPLE)
    assert read_env_file(ENV_EXAMPLE) == {}  # everything commented out
    defaults = tmp_path / "defaults.env"
    defaults.write_text("\n".join(l[1:] for l in text.splitlines() if re.match(r"^#[A-Z_]+=", l)))
    assert set(read_env_file(str(defaults))) == {s.env for s in SETTINGS} | {"SHELLM_HOME"}
    load_config({}, {}, str(defaults))
    examples = tmp_path / "examples.env"
    examples.write_text("\n".join(l[len("# e.g. ") :] for l in text.splitlines() if l.startswith("# e.g. ")))
    parsed = read_env_file(str(examples))
    assert set(parsed) == set(ENV_EXAMPLES)
    for s in SETTINGS:
        if s.env in parsed:
            s.parse(parsed[s.env])


# -- etc/shellm.service


def test_unit_runs_twistd_in_the_foreground_as_the_service_user():
    service = unit_section("Service")
    (exec_start,) = service["ExecStart"]
    assert exec_start.endswith("/bin/twistd --nodaemon --pidfile= shellm --env-file /etc/shellm/shellm.env")
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["User"] == ["shellm"]
    assert service["EnvironmentFile"] == ["/etc/shellm/shellm.env"]
    assert service["Restart"] == ["on-failure"]
    (path,) = [v[len("PATH=") :] for v in service["Environment"] if v.startswith("PATH=")]
    assert f"{SERVICE_HOME}/.npm-global/bin" in path.split(":")
    assert os.path.dirname(exec_start.split()[0]) in path.split(":")
    assert unit_section("Install")["WantedBy"] == ["multi-user.target"]


def test_unit_stop_lets_the_daemon_drain_then_kills_the_control_group():
    """
    SIGTERM to twistd alone (KillMode=mixed), and systemd's SIGKILL for the
    whole group only after the daemon's own drain and kill grace.
    """
    service = unit_section("Service")
    assert service["KillMode"] == ["mixed"]
    assert service.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    (timeout,) = service["TimeoutStopSec"]
    assert float(timeout) > default("drain_timeout") + default("kill_grace")


def test_unit_leaves_descriptors_for_every_connection_and_more():
    """
    LimitNOFILE leaves room above the default connection cap (each
    connection is a descriptor) for the CLIs' pipes and the rest, so the
    cap is reached before the descriptors run out.
    """
    service = unit_section("Service")
    (limit,) = service["LimitNOFILE"]
    assert int(limit) >= 2 * default("max_connections")


def test_unit_sandbox_leaves_the_service_home_writable():
    service = unit_section("Service")
    for directive in (
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictSUIDSGID",
        "LockPersonality",
        "RestrictRealtime",
    ):
        assert service[directive] == ["yes"], directive
    assert service["ProtectSystem"] == ["strict"]
    assert service["ProtectHome"] == ["read-only"]
    assert service["ReadWritePaths"] == [SERVICE_HOME]
    assert service["CapabilityBoundingSet"] == [""]
    # Node's JIT needs writable executable memory.
    assert "MemoryDenyWriteExecute" not in service


def test_unit_agrees_with_setup_vps_and_the_command():
    """
    The unit names the user, home, virtual environment and settings file
    that bin/setup-vps creates, and the daemon-mode files the command uses
    live in that home.
    """
    variables = script_variables()
    service = unit_section("Service")
    assert service["User"] == [variables["SERVICE_USER"]]
    assert service["ReadWritePaths"] == [variables["SERVICE_HOME"]]
    assert service["ExecStart"][0].startswith(variables["VENV"] + "/bin/twistd ")
    assert service["EnvironmentFile"] == [variables["ENV_FILE"]]
    assert variables["NPM_PREFIX"] + "/bin" in service["Environment"][0]
    paths = Paths.from_environ({"HOME": variables["SERVICE_HOME"]})
    text = read(LOGROTATE)
    assert text.count(paths.log_file + " {") == 1
    assert paths.pid_file in text


def executable_unit(tmp_path) -> str:
    """
    A copy of the unit whose ExecStart names this environment's twistd
    (systemd-analyze checks that the program exists).
    """
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.access(twistd, os.X_OK):
        pytest.skip("no twistd script next to this Python")
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={twistd}", read(UNIT))
    path = tmp_path / "shellm.service"
    path.write_text(text)
    return str(path)


def systemd_analyze():
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return tool


def test_unit_passes_systemd_analyze_verify(tmp_path):
    """
    C{systemd-analyze verify} accepts the unit: no unknown directive, no bad
    value.  Skipped where systemd-analyze is not installed.
    """
    tool = systemd_analyze()
    result = subprocess.run([tool, "verify", executable_unit(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shellm.service" not in result.stderr, result.stderr  # no warning about it


def test_unit_sandbox_exposure_is_low(tmp_path):
    """
    C{systemd-analyze security} rates the unit's sandbox at 5.0 ("MEDIUM")
    or safer; without the sandbox directives a unit rates 9.6 ("UNSAFE").
    """
    tool = systemd_analyze()
    unit = executable_unit(tmp_path)
    probe = subprocess.run(
        [tool, "security", "--offline=yes", "--threshold=50", unit], capture_output=True, text=True, timeout=120
    )
    if "--offline" in probe.stderr and "unrecognized" in probe.stderr:
        pytest.skip("this systemd-analyze cannot rate unit files offline")
    assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr


# -- etc/logrotate.conf


def test_logrotate_directives():
    """
    Daily, 7 rotations, 10 MB, compressed; rename and signal the daemon
    (which reopens on SIGUSR1), never copytruncate.
    """
    text = read(LOGROTATE)
    for directive in (
        "daily",
        "rotate 7",
        "maxsize 10M",
        "compress",
        "delaycompress",
        "missingok",
        "notifempty",
        "nocreate",
        "su shellm shellm",
    ):
        assert re.search(rf"(?m)^\s+{directive}$", text), directive
    assert not re.search(r"(?m)^\s+copytruncate", text)
    assert re.search(r'(?m)^\s+postrotate\n.*kill -USR1 "\$pid".*\n\s+endscript$', text)


def test_logrotate_parses_the_file(tmp_path):
    """
    C{logrotate -d} reads the file without an error and with the intended
    schedule.  Skipped where logrotate is not installed.
    """
    tool = shutil.which("logrotate")
    if tool is None:
        pytest.skip("logrotate is not installed (apt-get install logrotate)")
    home = tmp_path / "home"
    (home / ".shellm" / "logs").mkdir(parents=True)
    (home / ".shellm" / "logs" / "shellm.log").write_text("{}\n")
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    config = tmp_path / "logrotate.conf"
    config.write_text(
        read(LOGROTATE).replace(SERVICE_HOME, str(home)).replace("su shellm shellm", f"su {user} {group}")
    )
    result = subprocess.run(
        [tool, "-d", "-s", str(tmp_path / "state"), str(config)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "error" not in output.lower(), output
    assert "after 1 days (7 rotations)" in output
    assert "log files >= 10485760 are rotated earlier" in output
    assert f"considering log {home}/.shellm/logs/shellm.log" in output


# -- bin/setup-vps


def test_setup_vps_is_valid_bash():
    """
    The script parses (C{bash -n}) and is executable.
    """
    assert os.access(SETUP_VPS, os.X_OK)
    result = subprocess.run(["bash", "-n", SETUP_VPS], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def system_state() -> dict:
    def exists(path):
        return os.path.lexists(path)

    try:
        pwd.getpwnam("shellm")
        user = True
    except KeyError:
        user = False
    return {
        "user": user,
        **{
            path: exists(path)
            for path in (
                "/etc/systemd/system/shellm.service",
                "/etc/logrotate.d/shellm",
                "/etc/shellm",
                "/opt/shellm",
                "/usr/local/bin/shellm",
                SERVICE_HOME,
            )
        },
    }


def test_setup_vps_dry_run_lists_every_action_and_changes_nothing():
    """
    C{--dry-run} prints the provisioning steps (user, CLIs with npm in the
    user's prefix, venv, unit, logrotate, settings) and the manual steps,
    and leaves the system as it was.
    """
    before = system_state()
    result = subprocess.run([SETUP_VPS, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert system_state() == before
    actions = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    text = "\n".join(actions)
    variables = script_variables()
    if not before["user"]:
        assert re.search(r"(?m)^useradd --system --create-home --home-dir /home/shellm .* shellm$", text)
    assert re.search(
        r"(?m)^runuser -u shellm -- env HOME=/home/shellm \S+ npm install -g --prefix "
        r"/home/shellm/\.npm-global @anthropic-ai/claude-code @google/gemini-cli @openai/codex$",
        text,
    )
    if not os.path.exists(variables["VENV"] + "/bin/python"):
        assert f"python3 -m venv {variables['VENV']}" in actions
    assert f"{variables['VENV']}/bin/pip install --upgrade {ROOT}" in actions
    assert f"install -m 0644 -o root -g root {ROOT}/etc/shellm.service /etc/systemd/system/shellm.service" in actions
    assert f"install -m 0644 -o root -g root {ROOT}/etc/logrotate.conf /etc/logrotate.d/shellm" in actions
    if not os.path.exists("/etc/shellm/shellm.env"):
        assert f"install -m 0640 -o root -g shellm {ROOT}/etc/shellm.env.example /etc/shellm/shellm.env" in actions
    for manual in (
        "sudo -iu shellm claude",
        "sudo -iu shellm codex login",
        "/etc/shellm/shellm.env",
        "systemctl start shellm",
        "shellm check",
    ):
        assert manual in result.stdout, manual


def test_setup_vps_rejects_unknown_arguments():
    """
    A mistyped option stops the script with a usage error before it does anything.
    """
    result = subprocess.run([SETUP_VPS, "--yes-really"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown argument" in result.stderr
