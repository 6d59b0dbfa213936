"""
Start-up: what a daemon loads before its first answer.  What most daemons
never use (the dashboard, YAML front matter, Codex's config.toml, time zones)
is imported on first use, so it costs neither start-up time nor memory.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import pytest_twisted
import treq

from shellm.tap import LazyDashboard
from tests.daemon import Daemon

#: Modules that only a configuration or a request that needs them loads.
ON_FIRST_USE = (
    "shellm.http.dashboard.pages",
    "shellm.http.dashboard.session",
    "yaml",
    "tomllib",
    "zoneinfo",
    "jsonschema",
    "standardwebhooks",
)


def test_the_dashboard_is_built_by_its_first_request_and_only_once():
    """
    Nothing is built until the first request reaches the dashboard's app;
    every later request gets the same one.
    """
    built = []

    class Built:
        app = object()

    def build():
        built.append(Built())
        return built[-1]

    lazy = LazyDashboard(build)
    assert built == []
    assert lazy.app is Built.app
    assert lazy.app is Built.app
    assert len(built) == 1


@pytest.mark.slow
def test_start_up_imports_no_module_that_only_some_daemons_use():
    """
    Importing C{shellm.tap} (what C{twistd shellm} does before it builds the
    daemon) loads none of them.
    """
    code = f"import sys, shellm.tap; print(' '.join(m for m in {ON_FIRST_USE!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.split() == []


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_daemon_serves_its_dashboard_on_first_request(tmp_path, marker):
    """
    The real daemon builds the dashboard when its first page is asked for.
    """
    daemon = Daemon({}, marker, str(tmp_path))
    try:
        await daemon.started()
        response = await treq.get(daemon.url + "/dashboard/login", timeout=10)
        body = await response.text()
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
        assert "<main" in body
    finally:
        await daemon.stop()
