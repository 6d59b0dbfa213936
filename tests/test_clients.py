"""
Clients: keys, limits, usage through a daemon, and metrics (the ledger
itself is tested on both engines in test_store.py).
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from shellm.config import ConfigError, load_config
from shellm.errors import RateLimited
from shellm.routing import auth
from shellm.routing.auth import ANONYMOUS, Authenticator, AuthRequired, Client, parse_clients, token_from_headers
from shellm.routing.limits import RateLimiter, SlidingWindow
from tests.conftest import fake_cli, wait_for_no_processes
from tests.daemon import Daemon, eventually

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"


# -- keys


def test_token_from_either_header():
    """
    The token comes from C{Authorization: Bearer} (any case), else C{x-api-key}.
    """
    assert token_from_headers("Bearer abc", None) == "abc"
    assert token_from_headers("bearer  abc ", "other") == "abc"
    assert token_from_headers(None, "xyz") == "xyz"
    assert token_from_headers("Basic abc", "xyz") == "xyz"
    assert token_from_headers("Basic abc", None) is None


def test_every_key_is_compared_whatever_matches(monkeypatch):
    """
    Authentication compares the token with every configured key, even after
    a match, and only fixed-length digests: no early exit to time.
    """
    clients = parse_clients(
        json.dumps(
            {
                "a": {"key": KEY_A},
                "b": {"key": KEY_B},
                "c": {"key": "key-c-0123456789abcdef"},
            }
        )
    )
    lengths = []
    real = auth.hmac.compare_digest

    def counting(x, y):
        lengths.append((len(x), len(y)))
        return real(x, y)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    authenticator = Authenticator(clients)
    assert authenticator.authenticate(KEY_A).name == "a"
    assert lengths == [(32, 32)] * 3
    lengths.clear()
    with pytest.raises(AuthRequired):
        authenticator.authenticate("k")
    assert lengths == [(32, 32)] * 3


def test_no_clients_means_anonymous_and_bad_tokens_are_refused():
    """
    Without clients everyone is the anonymous client; with clients a
    missing or wrong token is a 401.
    """
    assert Authenticator(()).authenticate(None) is ANONYMOUS
    authenticator = Authenticator(parse_clients(json.dumps({"a": {"key": KEY_A}})))
    for token in (None, "", KEY_B, KEY_A[:-1]):
        with pytest.raises(AuthRequired) as raised:
            authenticator.authenticate(token)
        assert raised.value.status == 401 and raised.value.code == "auth_required"


@pytest.mark.parametrize(
    "value",
    [
        "{not json",
        "[]",
        '{"a": "k"}',
        '{"a": {"key": "short"}}',
        '{"a": {"key": "%s", "rpm": 0}}' % KEY_A,
        '{"a": {"key": "%s", "models": "claude"}}' % KEY_A,
        '{"a": {"key": "%s"}, "b": {"key": "%s"}}' % (KEY_A, KEY_A),
    ],
)
def test_invalid_clients_stop_start_up(value):
    """
    Invalid SHELLM_CLIENTS stops start-up with an error naming it; auth is
    never silently disabled.
    """
    with pytest.raises(ConfigError, match="SHELLM_CLIENTS"):
        load_config({}, {"SHELLM_CLIENTS": value}, None)


def test_open_listener_needs_keys_or_explicit_consent():
    """
    A listener other machines can reach refuses to start without client
    keys, unless SHELLM_ALLOW_OPEN=1; loopback needs neither.
    """
    with pytest.raises(ConfigError, match="SHELLM_ALLOW_OPEN"):
        load_config({}, {"SHELLM_LISTEN": "tcp:6100"}, None)
    with pytest.raises(ConfigError):
        load_config({}, {"SHELLM_LISTEN": "tcp:6100:interface=0.0.0.0"}, None)
    assert load_config({}, {"SHELLM_LISTEN": "tcp:6100", "SHELLM_ALLOW_OPEN": "1"}, None)
    assert load_config(
        {}, {"SHELLM_LISTEN": "tcp:6100", "SHELLM_CLIENTS": json.dumps({"a": {"key": KEY_A}})}, None
    ).clients
    assert load_config({}, {}, None).listen == "tcp:6100:interface=127.0.0.1"


def test_model_allow_list_matches_alias_or_provider():
    """
    A client's C{models} may name aliases or whole providers.
    """
    client = Client("a", KEY_A, 10, frozenset({"claude", "cerebras-8b"}))
    assert client.may_use("claude-opus", "claude")
    assert client.may_use("cerebras-8b", "cerebras")
    assert not client.may_use("cerebras", "cerebras")
    assert not client.may_use("gemini", "gemini")


# -- limits


def test_sliding_window_frees_a_slot_exactly_60_seconds_later():
    """
    A full window refuses until its oldest request is 60 s old, and says
    how many whole seconds that is.
    """
    clock = Clock()
    window = SlidingWindow(clock, 2)
    window.take()
    clock.advance(10)
    window.take()
    assert window.wait() == 50
    clock.advance(49.5)
    assert window.wait() == 1
    clock.advance(0.5)
    assert window.wait() is None
    window.take()
    assert window.wait() == 10


def test_client_limit_rejection_does_not_spend_the_global_budget():
    """
    A request refused by its client's own limit is not counted globally, so
    other clients keep the whole remaining budget.
    """
    clock = Clock()
    limiter = RateLimiter(clock, global_rpm=3)
    greedy, other = Client("greedy", KEY_A, 1), Client("other", KEY_B, 10)
    limiter.admit_now(greedy)
    for _ in range(5):
        with pytest.raises(RateLimited) as raised:
            limiter.admit_now(greedy)
        assert "greedy" in raised.value.message and raised.value.retry_after == 60
    limiter.admit_now(other)
    limiter.admit_now(other)
    with pytest.raises(RateLimited) as raised:
        limiter.admit_now(other)
    assert "gateway" in raised.value.message
    assert len(limiter.global_window) == 3


def test_anonymous_is_bound_by_the_global_limit_only():
    """
    With auth off there is no per-client window, only the global one.
    """
    clock = Clock()
    limiter = RateLimiter(clock, global_rpm=2)
    limiter.admit_now(ANONYMOUS)
    limiter.admit_now(ANONYMOUS)
    with pytest.raises(RateLimited):
        limiter.admit_now(ANONYMOUS)
    clock.advance(60)
    limiter.admit_now(ANONYMOUS)


# -- through a real daemon


def _env(marker, tmp_path, clients, **extra):
    cli_env = {"ANTHROPIC_API_KEY": "fake", "SHELLM_TEST_MARKER": marker}
    return {
        "SHELLM_CLAUDE_BIN": fake_cli("claude"),
        "SHELLM_CLAUDE_ENV": json.dumps(cli_env),
        "SHELLM_CLIENTS": json.dumps(clients),
        "SHELLM_DB": str(tmp_path / "usage.db"),
        **extra,
    }


async def _post(daemon, key=None, model="claude", header="authorization"):
    headers = {}
    if key:
        headers = {"Authorization": f"Bearer {key}"} if header == "authorization" else {"x-api-key": key}
    response = await treq.post(daemon.url + "/completions", json={"model": model, "prompt": "hi"}, headers=headers)
    return response, json.loads(await response.content())


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_keys_limits_usage_and_metrics_end_to_end(tmp_path, marker):
    """
    Through a real daemon: 401 without a valid key (health stays open), both
    headers accepted, 403 for a model outside the allow-list, 429 with
    Retry-After past the client's rpm; /usage shows the caller's own totals,
    which survive a restart; /metrics, for a caller with a key, counts the
    requests and tokens.
    """
    clients = {
        "alpha": {"key": KEY_A, "rpm": 2, "models": ["claude"]},
        "beta": {"key": KEY_B},
        "gamma": {"key": "key-g-0123456789abcdef", "models": ["gemini"]},
    }
    env = _env(marker, tmp_path, clients)
    daemon = Daemon(env, marker, str(tmp_path))
    try:
        await daemon.started()
        response, body = await _post(daemon)
        assert response.code == 401 and body["error"] == "auth_required"
        assert response.headers.getRawHeaders("www-authenticate")
        response = await treq.get(daemon.url + "/providers")
        assert response.code == 401
        await response.content()
        response, body = await _post(daemon, KEY_A)
        assert response.code == 200, body
        response, body = await _post(daemon, KEY_A, header="x-api-key")
        assert response.code == 200
        response, body = await _post(daemon, KEY_A)
        assert response.code == 429 and body["error"] == "rate_limited"
        assert int(response.headers.getRawHeaders("retry-after")[0]) == body["retry_after"] > 0
        response, body = await _post(daemon, KEY_B, model="gemini")
        assert response.code == 200 and body["fallback"] is True  # gemini is not installed
        response, body = await _post(daemon, "key-g-0123456789abcdef", model="gemini")
        assert response.code == 503  # no fallback to a provider gamma may not use
        response, body = await _post(daemon, KEY_A, model="gemini")
        assert response.code == 403 and body["error"] == "model_not_allowed"
        usage = json.loads(
            await (await treq.get(daemon.url + "/usage?period=24h", headers={"x-api-key": KEY_A})).content()
        )
        assert usage["client"] == "alpha"
        assert usage["totals"]["requests"] == 2
        assert usage["totals"]["input_tokens"] == 20 and usage["totals"]["output_tokens"] == 10
        response = await treq.get(daemon.url + "/metrics")
        assert response.code == 401  # it names clients: with auth on, it takes a key
        await response.content()
        metrics = (await (await treq.get(daemon.url + "/metrics", headers={"x-api-key": KEY_B})).content()).decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
        }
        assert (
            samples[
                (
                    "shellm_requests_total",
                    (("client", "alpha"), ("model", "claude"), ("provider", "claude"), ("status", "200")),
                )
            ]
            == 2
        )
        assert (
            samples[("shellm_tokens_total", (("client", "alpha"), ("direction", "output"), ("provider", "claude")))]
            == 10
        )
        assert samples[("shellm_in_flight", (("queue", "cli"),))] == 0
        response = await treq.get(daemon.url + "/usage?period=1y", headers={"x-api-key": KEY_A})
        assert response.code == 400
        await response.content()
    finally:
        await daemon.stop()
    again = Daemon(env, marker, str(tmp_path))
    try:
        await again.started()
        usage = json.loads(
            await (await treq.get(again.url + "/usage?period=7d", headers={"x-api-key": KEY_A})).content()
        )
        assert usage["totals"]["requests"] == 2
    finally:
        await again.stop()
    assert await wait_for_no_processes(marker) == []


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_sighup_reloads_clients_from_the_env_file(tmp_path, marker):
    """
    SIGHUP re-reads SHELLM_CLIENTS from the .env file: the new key works,
    the removed one is refused, and the daemon keeps running.
    """
    env = _env(marker, tmp_path, {})
    del env["SHELLM_CLIENTS"]
    (tmp_path / ".env").write_text(f"SHELLM_CLIENTS='{json.dumps({'a': {'key': KEY_A}})}'\n")
    daemon = Daemon(env, marker, str(tmp_path))
    try:
        await daemon.started()
        assert (await _post(daemon, KEY_A))[0].code == 200
        (tmp_path / ".env").write_text(f"SHELLM_CLIENTS='{json.dumps({'b': {'key': KEY_B}})}'\n")
        daemon.transport.signalProcess("HUP")

        async def old_key_refused():
            return (await _post(daemon, KEY_A))[0].code == 401

        assert await eventually(old_key_refused)
        assert (await _post(daemon, KEY_B))[0].code == 200
    finally:
        await daemon.stop()
    assert await wait_for_no_processes(marker) == []


def test_reload_prefers_the_settings_file(tmp_path):
    """
    A reload reads SHELLM_CLIENTS from the settings file even when the
    environment holds the old value (as under systemd's EnvironmentFile),
    and keeps the old clients when the new value is invalid.
    """
    from shellm.config import load_clients

    path = tmp_path / "shellm.env"
    path.write_text(f"SHELLM_CLIENTS='{json.dumps({'new': {'key': KEY_B}})}'\n")
    old = json.dumps({"old": {"key": KEY_A}})
    assert [c.name for c in load_clients({"SHELLM_CLIENTS": old}, str(path))] == ["new"]
    assert [c.name for c in load_clients({"SHELLM_CLIENTS": old}, str(tmp_path / "none"))] == ["old"]
    path.write_text("SHELLM_CLIENTS={broken\n")
    with pytest.raises(ConfigError, match="SHELLM_CLIENTS"):
        load_clients({}, str(path))
