"""
Reloading the client keys (SIGHUP): a reload may change the keys but never
turns auth off, and a settings file it cannot use costs one error line and
a metric, never the old clients nor a traceback.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import LogLevel, formatEvent

from shellm.reload import ClientReload
from shellm.routing.auth import Authenticator, Client
from shellm.state.metrics import Metrics
from tests.conftest import wait_for_no_processes
from tests.daemon import Daemon, eventually
from tests.test_clients import KEY_A, KEY_B, _env, _post

DEEP = "[" * 100000 + "]" * 100000


def clients_line(clients: dict) -> str:
    return f"SHELLM_CLIENTS='{json.dumps(clients)}'\n"


@pytest.fixture
def reload(tmp_path):
    """
    A reload of an authenticator holding client "old", from C{tmp_path/.env}.
    """
    authenticator = Authenticator([Client("old", KEY_A)])
    metrics = Metrics({}, {})
    path = tmp_path / ".env"
    return authenticator, metrics, path, ClientReload(authenticator, str(path), metrics)


def refusals(log_events) -> list[str]:
    return [formatEvent(e) for e in log_events if e.get("log_level") == LogLevel.error]


def reload_metrics(metrics: Metrics) -> tuple[float, float]:
    registry = metrics.registry
    return (
        registry.get_sample_value("shellm_reload_failures_total"),
        registry.get_sample_value("shellm_last_reload_success"),
    )


@pytest.mark.parametrize(
    "text",
    [
        "SHELLM_CLIENTS='{}'\n",
        "SHELLM_CLIENTS={}\n",
        "SHELLM_CLIENTS=\n",
        "SHELLM_CLIENTS=''\n",
        "# SHELLM_CLIENTS='{\"old\": {\"key\": \"key-a-0123456789abcdef\"}}'\n",
        "",
    ],
)
def test_a_reload_never_turns_auth_off(reload, log_events, text):
    """
    A SHELLM_CLIENTS that is now empty, {} or commented out keeps the old
    clients, with one error line saying why and how to serve without keys,
    and the failure in the metrics.
    """
    authenticator, metrics, path, client_reload = reload
    path.write_text(text)
    assert client_reload.run({}) is False
    assert [c.name for c in authenticator.clients] == ["old"]
    [line] = refusals(log_events)
    assert "clients not reloaded, the 1 current clients stay" in line
    assert "SHELLM_CLIENTS is now empty or not set" in line and "never turns auth off" in line
    assert "SHELLM_ALLOW_OPEN" in line
    assert reload_metrics(metrics) == (1, 0)


def test_a_settings_file_that_is_gone_keeps_the_clients(reload, log_events):
    authenticator, metrics, path, client_reload = reload
    assert client_reload.run({}) is False
    assert authenticator.enabled
    [line] = refusals(log_events)
    assert f"the settings file {path} is gone" in line


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"SHELLM_CLIENTS='\xff\xfe'\n", "line 1: not UTF-8 text"),
        (("SHELLM_CLIENTS=" + DEEP + "\n").encode(), "SHELLM_CLIENTS: is nested too deeply"),
        (b"SHELLM_CLIENTS={broken\n", "SHELLM_CLIENTS: Expecting property name"),
    ],
)
def test_an_unusable_settings_file_is_one_error_line(reload, log_events, raw, why):
    """
    A file that is not UTF-8, or JSON nested too deeply or broken: the old
    clients stay, one error line names the reason, and no traceback is
    logged.
    """
    authenticator, metrics, path, client_reload = reload
    path.write_bytes(raw)
    assert client_reload.run({}) is False
    assert [c.name for c in authenticator.clients] == ["old"]
    [line] = refusals(log_events)
    assert why in line
    assert not [e for e in log_events if "log_failure" in e]
    assert reload_metrics(metrics) == (1, 0)


def test_a_good_reload_after_a_refused_one_clears_the_gauge(reload, log_events):
    authenticator, metrics, path, client_reload = reload
    path.write_text("SHELLM_CLIENTS=\n")
    client_reload.run({})
    path.write_text(clients_line({"new": {"key": KEY_B}}))
    assert client_reload.run({}) is True
    assert [c.name for c in authenticator.clients] == ["new"]
    assert reload_metrics(metrics) == (1, 1)
    assert "clients reloaded: 1 clients" in formatEvent(log_events[-1])


def test_without_auth_a_reload_may_turn_it_on_or_leave_it_off(tmp_path, log_events):
    """
    Auth that is off (decided at start-up) may stay off across a reload,
    which is no failure, or be turned on by one.
    """
    authenticator, metrics = Authenticator([]), Metrics({}, {})
    path = tmp_path / ".env"
    client_reload = ClientReload(authenticator, str(path), metrics)
    assert client_reload.run({}) is True
    assert not authenticator.enabled
    path.write_text(clients_line({"new": {"key": KEY_B}}))
    assert client_reload.run({}) is True
    assert authenticator.enabled
    assert reload_metrics(metrics) == (0, 1)
    assert refusals(log_events) == []


async def _reload_metrics(daemon) -> dict:
    text = (await (await treq.get(daemon.url + "/metrics")).content()).decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


@pytest_twisted.ensureDeferred
async def test_sighup_with_unusable_settings_keeps_the_keys(tmp_path, marker):
    """
    Through a real daemon: SIGHUP with SHELLM_CLIENTS emptied, then with a
    non-UTF-8 file, then with JSON nested too deeply, each keeps the old key
    working (auth stays on), logs one error line and no traceback, and
    counts in /metrics (public here, so SHELLM_METRICS_PUBLIC reaches the
    daemon); a good file afterwards is applied.
    """
    env = _env(marker, tmp_path, {}, SHELLM_METRICS_PUBLIC="1")
    del env["SHELLM_CLIENTS"]
    settings = tmp_path / ".env"
    settings.write_text(clients_line({"a": {"key": KEY_A}}))
    daemon = Daemon(env, marker, str(tmp_path))
    try:
        await daemon.started()
        assert (await _reload_metrics(daemon))["shellm_last_reload_success"] == 1
        bad_files = [b"SHELLM_CLIENTS=''\n", b"SHELLM_CLIENTS='\xff'\n", ("SHELLM_CLIENTS=" + DEEP).encode()]
        for count, raw in enumerate(bad_files, 1):
            settings.write_bytes(raw)
            daemon.transport.signalProcess("HUP")

            async def counted(count=count):
                return (await _reload_metrics(daemon)).get("shellm_reload_failures_total") == count

            assert await eventually(counted)
            assert (await _post(daemon))[0].code == 401  # auth is still on
            assert (await _post(daemon, KEY_A))[0].code == 200
        assert (await _reload_metrics(daemon))["shellm_last_reload_success"] == 0
        settings.write_text(clients_line({"b": {"key": KEY_B}}))
        daemon.transport.signalProcess("HUP")

        async def applied():
            return (await _reload_metrics(daemon))["shellm_last_reload_success"] == 1

        assert await eventually(applied)
        assert (await _post(daemon, KEY_A))[0].code == 401
        assert (await _post(daemon, KEY_B))[0].code == 200
    finally:
        await daemon.stop()
    lines = daemon.log_lines()
    assert len([line for line in lines if "clients not reloaded" in line]) == 3
    assert not [line for line in lines if "Traceback" in line or "log_failure" in line]
    assert await wait_for_no_processes(marker) == []
