"""
Keys administered at /admin/ without a restart, budgets, and the request
log, on both store engines (the C{db_setting} fixture), through the real
Klein resource (StubTreq) with the store's real pool threads.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from shellm.http.admin_api import AdminAPI
from shellm.http.api import ShellmAPI
from shellm.http.web import ShellmSite
from shellm.routing.auth import Authenticator, Client
from shellm.state import keys as keys_module
from shellm.state.keys import KeyRing, KeyStore, checksum_ok, load_secret, new_key
from shellm.state.ledger import Ledger
from shellm.state.store import Store
from tests.daemon import eventually
from tests.fake_providers import fake_providers, make_router
from tests.test_api import MAX_BODY, Gateway, admin_call, stub_treq

ADMIN = "admin-key-0123456789abcdef"
ENV_KEY = "env-key-0123456789abcdef"
#: 2027-01-15T08:00:00Z: a clock well after any ISO time the tests call past.
NOW = 1_800_000_000.0
SECRET = b"test-secret-0123456789abcdef"


def build(store: Store, admin_key: str | None = ADMIN, clients=()) -> Gateway:
    clock = Clock()
    clock.advance(NOW)
    keys = KeyStore(store, SECRET, clock)
    ring = KeyRing(keys, clock)
    authenticator = Authenticator(clients, ring, admin_key)
    providers = fake_providers()
    for provider in providers.values():
        provider.on_start = lambda run: run.succeed()
    router = make_router(clock, providers)
    ledger = Ledger(store, clock)
    ledger._open = True
    api = ShellmAPI(
        clock,
        router,
        max_prompt_chars=1000,
        heartbeat=15,
        authenticator=authenticator,
        ledger=ledger,
        admin=AdminAPI(clock, authenticator, keys, router.models),
    )
    site = ShellmSite(api.resource(), clock, MAX_BODY)
    return Gateway(clock, providers, router, site, stub_treq(site), api)


@pytest.fixture
def gw(store) -> Gateway:
    return build(store, clients=(Client("envapp", ENV_KEY, rpm=5),))


async def call(gw: Gateway, method: str, path: str, body=None, key: str | None = ADMIN):
    return await admin_call(gw, method, path, body, key)


async def create(gw: Gateway, **fields) -> dict:
    code, body, _ = await call(gw, "POST", "/admin/keys", {"name": "app", **fields})
    assert code == 201, body
    return body


def test_key_format():
    """
    Keys carry the shellm_ prefix, 256 random bits and a checksum that
    tells a typo apart from an unknown key.
    """
    key = new_key()
    assert key.startswith("shellm_") and len(key) == 7 + 43 + 6
    assert checksum_ok(key)
    typo = key[:20] + ("A" if key[20] != "A" else "B") + key[21:]
    assert not checksum_ok(typo)
    assert new_key() != key


def test_secret_file_is_private(tmp_path):
    """
    Without a setting, the hashing secret is made once in a 0600 file and
    read back the same.
    """
    path = tmp_path / "sub" / "key_secret"
    first = load_secret(None, str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(None, str(path)) == first
    assert load_secret("from-setting-0123456789", str(path)) == b"from-setting-0123456789"


@pytest_twisted.ensureDeferred
async def test_create_use_list_revoke(gw, store, log_events):
    """
    A created key is shown once, works at once, is listed without any
    secret (env clients read-only beside it), is stored only hashed, and
    once revoked is refused (401) and a second revoke is 404.
    """
    made = await create(gw, models=["claude"], rpm=3)
    key = made["key"]
    assert made["prefix"] == key[:12] and made["status"] == "active"
    code, answer, _ = await call(gw, "POST", "/completions", {"model": "claude", "prompt": "hi"}, key=key)
    assert code == 200, answer
    code, listing, _ = await call(gw, "GET", "/admin/keys")
    assert code == 200
    text = json.dumps(listing)
    assert key not in text and "hash" not in text
    sources = {entry["name"]: entry["source"] for entry in listing["keys"]}
    assert sources == {"app": "db", "envapp": "env"}
    rows = await store.query("SELECT key_hash FROM api_keys")
    assert key not in json.dumps(rows)
    code, body, _ = await call(gw, "DELETE", f"/admin/keys/{made['id']}")
    assert code == 200 and body["status"] == "revoked"
    code, body, _ = await call(gw, "POST", "/completions", {"model": "claude", "prompt": "hi"}, key=key)
    assert (code, body["error"]) == (401, "auth_required") and "revoked" in body["message"]
    code, body, _ = await call(gw, "DELETE", f"/admin/keys/{made['id']}")
    assert (code, body["error"]) == (404, "not_found")
    audit = await store.query("SELECT action FROM audit_log ORDER BY at")
    assert [row[0] for row in audit] == ["create", "revoke"]
    assert key not in json.dumps(await store.query("SELECT * FROM audit_log"))
    from twisted.logger import formatEvent

    logged = " ".join(formatEvent(event) + repr(event) for event in log_events)
    assert "created by admin" in logged and key not in logged


@pytest_twisted.ensureDeferred
async def test_admin_access(gw):
    """
    /admin/ takes only admin keys: no key 401, a client key 403, and with
    no admin key configured it is not there at all (404).
    """
    assert (await call(gw, "GET", "/admin/keys", key=None))[0] == 401
    assert (await call(gw, "GET", "/admin/keys", key=ENV_KEY))[:2][0] == 403
    made = await create(gw)
    code, body, _ = await call(gw, "GET", "/admin/keys", key=made["key"])
    assert (code, body["error"]) == (403, "admin_only")
    closed = build(gw.api.authenticator.ring.keys.store, admin_key=None)
    code, body, _ = await call(closed, "GET", "/admin/keys")
    assert (code, body["error"]) == (404, "not_found")


@pytest_twisted.ensureDeferred
async def test_typo_and_model_allow_list(gw):
    """
    A mistyped key is told apart from a revoked one; models [] allows
    nothing, and the allow-list is enforced.
    """
    made = await create(gw, models=[])
    key = made["key"]
    typo = key[:20] + ("A" if key[20] != "A" else "B") + key[21:]
    code, body, _ = await call(gw, "POST", "/completions", {"model": "claude", "prompt": "hi"}, key=typo)
    assert code == 401 and "mistyped" in body["message"]
    code, body, _ = await call(gw, "POST", "/completions", {"model": "claude", "prompt": "hi"}, key=key)
    assert (code, body["error"]) == (403, "model_not_allowed")


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"colour": "red"}, "colour"),
        ({"rpm": -1}, "rpm"),
        ({"daily_tokens": 0}, "daily_tokens"),
        ({"models": ["no-such-model"]}, "models"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_input_names_the_field(gw, store, fields, named):
    """
    Unknown fields, negative limits, unknown models and past (or offset-less)
    expiries are 400s naming the field, and store nothing.
    """
    code, body, _ = await call(gw, "POST", "/admin/keys", {"name": "app", **fields})
    assert (code, body["error"]) == (400, "invalid_request")
    assert body["message"].startswith(named)
    assert (await store.query("SELECT COUNT(*) FROM api_keys"))[0][0] == 0


@pytest_twisted.ensureDeferred
async def test_patch_and_name_conflict(gw):
    """
    PATCH changes limits and models at once; an empty PATCH is 400; a
    taken name is 409; env clients are read-only.
    """
    made = await create(gw)
    await create(gw, name="other")
    code, body, _ = await call(gw, "PATCH", f"/admin/keys/{made['id']}", {"models": [], "note": "frozen"})
    assert code == 200 and body["models"] == [] and body["note"] == "frozen"
    code, body, _ = await call(gw, "POST", "/completions", {"model": "claude", "prompt": "hi"}, key=made["key"])
    assert code == 403
    assert (await call(gw, "PATCH", f"/admin/keys/{made['id']}", {}))[0] == 400
    assert (await call(gw, "PATCH", f"/admin/keys/{made['id']}", {"name": "other"}))[0] == 409
    assert (await call(gw, "PATCH", "/admin/keys/env:envapp", {"rpm": 2}))[0] == 409


@pytest_twisted.ensureDeferred
async def test_rotation_grace_and_budget_follow_the_id(gw):
    """
    Rotating gives a new key; the old one works during the grace period
    and is refused after it.  The daily budget follows the key's id, so
    the rotated key is refused too (429 budget_exceeded, Retry-After to
    the UTC midnight).
    """
    made = await create(gw, daily_tokens=30)
    old = made["key"]
    ask = {"model": "claude", "prompt": "hi"}
    assert (await call(gw, "POST", "/completions", ask, key=old))[0] == 200  # 18 tokens
    code, rotated, _ = await call(gw, "POST", f"/admin/keys/{made['id']}/rotate", {"grace_seconds": 60})
    assert code == 200 and rotated["key"] != old and rotated["id"] == made["id"]
    new = rotated["key"]
    assert (await call(gw, "POST", "/completions", ask, key=old))[0] == 200  # 36 tokens: spent
    code, body, response = await call(gw, "POST", "/completions", ask, key=new)
    assert (code, body["error"]) == (429, "budget_exceeded")
    midnight = NOW - NOW % 86400 + 86400
    assert int(response.headers.getRawHeaders(b"retry-after")[0]) == int(midnight - NOW)
    gw.clock.advance(61)
    code, body, _ = await call(gw, "POST", "/completions", ask, key=old)
    assert code == 401 and "rotated" in body["message"]


@pytest_twisted.ensureDeferred
async def test_request_log_and_stats(gw):
    """
    Every request is a row (key id, endpoint, status, error code, tokens),
    newest first in cursor pages, filterable; stats sum them by bucket.
    """
    made = await create(gw, models=["claude"])
    ask = {"model": "claude", "prompt": "hi"}
    for _ in range(3):
        assert (await call(gw, "POST", "/completions", ask, key=made["key"]))[0] == 200
    assert (await call(gw, "POST", "/completions", {**ask, "model": "gemini"}, key=made["key"]))[0] == 403
    await gw.api._ledger.flush()
    code, page, _ = await call(gw, "GET", f"/admin/requests?key={made['id']}&limit=2")
    assert code == 200 and len(page["requests"]) == 2 and page["next_cursor"]
    first = page["requests"][0]
    assert first["key_id"] == made["id"] and first["endpoint"] == "/completions" and first["status"] == 200
    assert first["prompt_text"] is None and first["answer_text"] is None
    code, rest, _ = await call(gw, "GET", f"/admin/requests?key={made['id']}&cursor={page['next_cursor']}")
    assert len(rest["requests"]) == 1 and rest["next_cursor"] is None
    code, stats, _ = await call(gw, "GET", f"/admin/stats?since={NOW - 10}&by=key")
    assert code == 200
    (bucket,) = stats["buckets"]
    assert bucket["requests"] == 3 and bucket["input_tokens"] == 33 and bucket["key"] == made["id"]
    assert (await call(gw, "GET", "/admin/requests?limit=5000"))[0] == 400
    code, usage, _ = await call(gw, "GET", "/usage", key=made["key"])
    assert usage["totals"]["requests"] == 3 and usage["client"] == "app"
    code, usage, _ = await call(gw, "GET", "/usage")
    assert usage["client"] is None and usage["totals"]["requests"] == 3


@pytest_twisted.ensureDeferred
async def test_bodies_only_when_asked(gw, monkeypatch):
    """
    With SHELLM_LOG_BODIES on, the request log keeps the prompt and the
    answer, cut at the cap.
    """
    from shellm.routing import accounting

    monkeypatch.setattr(accounting, "BODY_CAP", 5)
    gw.api.accounting.log_bodies = True
    made = await create(gw)
    ask = {"model": "claude", "prompt": "hello there"}
    assert (await call(gw, "POST", "/completions", ask, key=made["key"]))[0] == 200
    await gw.api._ledger.flush()
    code, page, _ = await call(gw, "GET", "/admin/requests")
    (row,) = page["requests"]
    assert row["prompt_text"] == "hello"
    assert row["answer_text"] is not None and len(row["answer_text"]) <= 5


@pytest_twisted.ensureDeferred
async def test_expired_key_is_refused(gw):
    """
    A key past its expires_at is refused with a 401 that says so.
    """
    made = await create(gw, expires_at=NOW + 30)
    ask = {"model": "claude", "prompt": "hi"}
    assert (await call(gw, "POST", "/completions", ask, key=made["key"]))[0] == 200
    gw.clock.advance(31)
    code, body, _ = await call(gw, "POST", "/completions", ask, key=made["key"])
    assert code == 401 and "expired" in body["message"]


@pytest_twisted.ensureDeferred
async def test_two_nodes_share_keys(store):
    """
    Two nodes on one store: a key made on one works on the other after its
    next refresh (no reload), and once revoked is refused on both.
    """
    one, two = build(store), build(store)
    made = await create(one)
    ask = {"model": "claude", "prompt": "hi"}
    await two.api.authenticator.ring.refresh()
    assert (await call(two, "POST", "/completions", ask, key=made["key"]))[0] == 200
    assert (await call(one, "DELETE", f"/admin/keys/{made['id']}"))[0] == 200
    await two.api.authenticator.ring.refresh()
    assert (await call(two, "POST", "/completions", ask, key=made["key"]))[0] == 401
    assert (await call(one, "POST", "/completions", ask, key=made["key"]))[0] == 401


def test_refresh_interval_keeps_changes_within_two_seconds():
    """
    The ring re-reads the store often enough for the 2 s promise.
    """
    assert keys_module.REFRESH_INTERVAL * 2 <= 2.0


@pytest_twisted.ensureDeferred
async def test_retention_prunes_old_rows_in_the_background(store):
    """
    The retention service deletes request-log rows older than
    SHELLM_RETENTION_DAYS once an hour (on the injected clock), leaving
    newer ones.
    """
    from shellm.state.ledger import UsageRecord
    from shellm.state.retention import PRUNE_INTERVAL, Retention

    clock = Clock()
    clock.advance(NOW)
    ledger = Ledger(store, clock)
    ledger._open = True
    for when in (NOW - 3 * 86400, NOW - 60):
        ledger.record(UsageRecord(when, "a", "claude", "m", 200, 1, 1, 0.0, 10, 0, "r"))
    await ledger.flush()
    ring = KeyRing(KeyStore(store, SECRET, clock), clock)
    service = Retention(clock, ring, retention_days=2)
    service.startService()
    try:
        clock.advance(PRUNE_INTERVAL)

        async def pruned():
            return (await store.query("SELECT COUNT(*) FROM usage"))[0][0] == 1

        assert await eventually(pruned, timeout=5)
    finally:
        service.stopService()


def test_env_keys_shaped_like_stored_ones_still_work_and_auth_fails_closed():
    """
    A SHELLM_CLIENTS key that happens to start with shellm_ is still
    accepted; until the stored keys are first read, a store that had client
    keys at start keeps auth on (no open window at start-up).
    """
    from shellm.routing.auth import AuthRequired

    clock = Clock()
    ring = KeyRing(KeyStore(None, SECRET, clock), clock)  # type: ignore[arg-type]
    env_key = "shellm_" + "x" * 30
    auth = Authenticator([Client("legacy", env_key)], ring)
    assert auth.authenticate(env_key).name == "legacy"
    with pytest.raises(AuthRequired, match="mistyped"):
        auth.authenticate(new_key()[:-1] + "!")
    with pytest.raises(AuthRequired, match="not known"):
        auth.authenticate(new_key())
    fresh = KeyRing(KeyStore(None, SECRET, clock), clock)  # type: ignore[arg-type]
    fresh.assume_client_keys = True
    assert Authenticator([], fresh).enabled
    fresh.replace([])
    assert not Authenticator([], fresh).enabled
