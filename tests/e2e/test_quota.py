"""
Subscription windows with the real CLIs: fake vendor servers send the
rate-limit information each CLI turns into its events and errors (claude's
C{anthropic-ratelimit-unified-*} headers, codex's 429 C{usage_limit_reached}
and ChatGPT usage endpoint, gemini's 429 naming a per-day quota), and the
daemon skips the spent provider without calling it again.
"""

from __future__ import annotations

import base64
import json
import os
import time

import pytest
import pytest_twisted
import treq

from tests.daemon import eventually
from tests.e2e.conftest import complete

pytestmark = pytest.mark.e2e


def claude_headers(status: str, five_hour: float, resets_at: int) -> dict:
    """
    What Anthropic's API sends a subscription (OAuth) login, as claude reads it.
    """
    window = "rejected" if status == "rejected" else ("allowed_warning" if five_hour >= 0.8 else "allowed")
    return {
        "anthropic-ratelimit-unified-status": status,
        "anthropic-ratelimit-unified-reset": str(resets_at),
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-5h-status": window,
        "anthropic-ratelimit-unified-5h-reset": str(resets_at),
        "anthropic-ratelimit-unified-5h-utilization": str(five_hour),
        "anthropic-ratelimit-unified-7d-status": "allowed",
        "anthropic-ratelimit-unified-7d-reset": str(resets_at + 3 * 86400),
        "anthropic-ratelimit-unified-7d-utilization": "0.4",
        "anthropic-ratelimit-unified-overage-status": "rejected",
        "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
        "request-id": "req_fake_quota",
    }


async def quota_of(daemon) -> dict:
    response = await treq.get(daemon.url + "/usage/quota", timeout=10)
    return json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_claude_windows_from_its_stream(rigs):
    """
    With a subscription login, claude 2.1.332 prints the windows it reads
    from the API's headers as C{rate_limit_event}s: a warning answer carries
    them in SheLLM's headers; a rejection becomes 429 C{quota_exhausted}
    until the reset, after which claude is not started again.
    """
    rig = rigs("claude")
    # A subscription login: claude reports windows only for one.
    del rig.env["ANTHROPIC_API_KEY"]
    rig.env["CLAUDE_CODE_OAUTH_TOKEN"] = "fake-oauth-token"
    resets_at = int(time.time()) + 3600
    rig.script(headers=claude_headers("allowed", 0.82, resets_at))
    daemon = await rig.daemon()
    body = {"model": "claude", "prompt": "hi", "fallback": False}

    response = await treq.post(daemon.url + "/completions", json=body, timeout=60)
    answer = json.loads(await response.content())
    assert response.code == 200, answer
    assert response.headers.getRawHeaders("x-shellm-quota-five-hour") == [
        f"0.82;reset={resets_at};status=allowed_warning"
    ]
    assert response.headers.getRawHeaders("x-shellm-quota-seven-day") == [
        f"0.4;reset={resets_at + 3 * 86400};status=allowed"
    ]

    rig.script(fail_status=429, headers=claude_headers("rejected", 1, resets_at))
    status, error, _ = await complete(daemon, body)
    assert (status, error["error"]) == (429, "quota_exhausted"), error
    assert resets_at - time.time() - 60 < error["retry_after"] <= resets_at - time.time() + 1
    calls = len(rig.fake.api_requests())
    status, error, took = await complete(daemon, body)
    assert (status, error["error"]) == (429, "quota_exhausted")
    assert len(rig.fake.api_requests()) == calls and took < 1, "claude was started although spent"

    claude = (await quota_of(daemon))["providers"]["claude"]
    assert (claude["state"], claude["resets_at"]) == ("exhausted", resets_at)
    five_hour = next(w for w in claude["windows"] if w["kind"] == "five_hour")
    assert (five_hour["status"], five_hour["used"], five_hour["source"]) == ("rejected", 1.0, "stream")
    health = json.loads(await (await treq.get(daemon.url + "/health")).content())
    assert health["providers"]["claude"]["circuit"]["consecutive_failures"] == 0


@pytest_twisted.ensureDeferred
async def test_codex_usage_limit(rigs):
    """
    codex 0.169 turns a 429 C{usage_limit_reached} into "You've hit your
    usage limit ... try again at <date time>": 429 C{quota_exhausted} until
    then (to the minute), and codex is not started again.
    """
    rig = rigs("codex")
    resets_in = 7500
    rig.script(
        fail_status=429,
        fail_body={
            "error": {
                "type": "usage_limit_reached",
                "message": "The usage limit has been reached",
                "plan_type": "plus",
                "resets_at": int(time.time()) + resets_in,
                "resets_in_seconds": resets_in,
            }
        },
    )
    daemon = await rig.daemon()
    body = {"model": "codex", "prompt": "hi", "fallback": False}
    status, error, _ = await complete(daemon, body)
    assert (status, error["error"]) == (429, "quota_exhausted"), error
    assert resets_in - 120 <= error["retry_after"] <= resets_in, error
    calls = len(rig.fake.api_requests())
    status, error, _ = await complete(daemon, body)
    assert (status, error["error"]) == (429, "quota_exhausted")
    assert len(rig.fake.api_requests()) == calls


def chatgpt_login(home: str, origin: str) -> None:
    """
    A ChatGPT login for codex (an unsigned token codex only decodes) and its
    backend on the fake: what codex's app-server needs to read rate limits.
    """

    def part(value) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {
        "email": "fake@example.invalid",
        "exp": int(time.time()) + 86400,
        "https://api.openai.com/auth": {"chatgpt_plan_type": "plus", "chatgpt_account_id": "acc-fake"},
    }
    token = part({"alg": "none", "typ": "JWT"}) + "." + part(claims) + ".sig"
    codex = os.path.join(home, ".codex")
    with open(os.path.join(codex, "auth.json"), "w") as f:
        json.dump(
            {
                "auth_mode": "chatgpt",
                "OPENAI_API_KEY": None,
                "tokens": {"id_token": token, "access_token": token, "refresh_token": "fake", "account_id": "acc-fake"},
                "last_refresh": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            f,
        )
    config = os.path.join(codex, "config.toml")
    with open(config) as f:
        rest = f.read()
    with open(config, "w") as f:
        f.write(f'chatgpt_base_url = "{origin}/backend-api/"\n' + rest)


@pytest_twisted.ensureDeferred
async def test_codex_app_server_windows(rigs):
    """
    After a codex run, SheLLM's probe starts the real C{codex app-server},
    which reads the ChatGPT usage endpoint (here the fake) for
    C{account/rateLimits/read}: the weekly window, sent as the primary one,
    is classified by its duration, and at 97% codex is skipped.
    """
    rig = rigs("codex")
    resets_at = int(time.time()) + 86400
    rig.script(
        usage={
            "plan_type": "plus",
            "rate_limit": {
                "allowed": True,
                "limit_reached": False,
                "primary_window": {
                    "used_percent": 97,
                    "limit_window_seconds": 604800,
                    "reset_after_seconds": 86400,
                    "reset_at": resets_at,
                },
                "secondary_window": None,
            },
            "credits": None,
        }
    )
    chatgpt_login(rig.home, rig.fake.origin)
    daemon = await rig.daemon(SHELLM_CODEX_QUOTA_INTERVAL=300)
    body = {"model": "codex", "prompt": "hi", "fallback": False}
    status, answer, _ = await complete(daemon, body)
    assert status == 200, answer

    async def probed():
        codex = (await quota_of(daemon))["providers"]["codex"]
        return codex if codex["windows"] else None

    codex = await eventually(probed, timeout=30)
    assert codex, "the probe reported nothing"
    [weekly] = codex["windows"]
    assert (weekly["kind"], weekly["used"], weekly["resets_at"], weekly["source"]) == (
        "seven_day",
        0.97,
        resets_at,
        "app-server",
    )
    assert codex["state"] == "exhausted"
    assert any(r.path.endswith("/wham/usage") for r in rig.fake.requests)
    calls = len(rig.fake.api_requests())
    status, error, _ = await complete(daemon, body)
    assert (status, error["error"]) == (429, "quota_exhausted")
    assert len(rig.fake.api_requests()) == calls


@pytest_twisted.ensureDeferred
async def test_gemini_daily_quota(rigs):
    """
    gemini 0.61 turns a 429 C{RESOURCE_EXHAUSTED} whose C{QuotaFailure}
    names a per-day quota into "You have exhausted your daily quota on this
    model.": 429 C{quota_exhausted} until midnight Pacific time.
    """
    rig = rigs("gemini")
    rig.script(
        fail_status=429,
        fail_body={
            "error": {
                "code": 429,
                "message": "You exceeded your current quota. Quota exceeded for metric: "
                "generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 250",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "quotaValue": "250"}
                        ],
                    },
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "43s"},
                ],
            }
        },
    )
    daemon = await rig.daemon()
    body = {"model": "gemini-flash", "prompt": "hi", "fallback": False}
    status, error, _ = await complete(daemon, body)
    assert (status, error["error"]) == (429, "quota_exhausted"), error
    assert 0 < error["retry_after"] <= 25 * 3600
    gemini = (await quota_of(daemon))["providers"]["gemini"]
    assert [(w["kind"], w["status"], w["source"], w["model"]) for w in gemini["windows"]] == [
        ("daily", "rejected", "error", "flash")
    ]
    # Per model: gemini as a whole is only in warning.
    assert gemini["state"] == "warning"
