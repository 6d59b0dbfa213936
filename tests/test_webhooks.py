"""
Webhook SSRF protection: which addresses a callback may reach, checked
when connecting (after resolving), and what a refused delivery looks like.
"""

from __future__ import annotations

import base64
import ipaddress

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import succeed

from shellm.http.webhooks import AllowList, WebhookSender, check_url, refusal
from tests.daemon import eventually
from tests.test_jobs import make_setup, started

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
NOTHING = AllowList.parse("")

pytestmark = pytest.mark.timeout(60)

REFUSED = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",  # CGNAT
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "::1",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1, which Python calls global
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1, which Python calls global
    "2002:a00:1::",  # 6to4 of 10.0.0.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused_in_every_form(address):
    """
    Loopback, private, link-local, CGNAT, multicast and reserved addresses
    are refused, and so are IPv4 ones inside IPv6 (mapped, NAT64, 6to4).
    """
    assert refusal(ipaddress.ip_address(address), NOTHING) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "64:ff9b::5db8:d70e"])
def test_public_addresses_pass(address):
    """
    Public addresses (and NAT64 of a public IPv4) may be called.
    """
    assert refusal(ipaddress.ip_address(address), NOTHING) is None


def test_the_allow_list_lets_named_networks_through():
    """
    SHELLM_WEBHOOK_ALLOW admits its networks (also when embedded in IPv6)
    and nothing more.
    """
    allow = AllowList.parse("127.0.0.0/8, 10.0.0.5 hooks.internal")
    assert refusal(ipaddress.ip_address("127.0.0.1"), allow) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allow) is None
    assert refusal(ipaddress.ip_address("10.0.0.5"), allow) is None
    assert refusal(ipaddress.ip_address("10.0.0.6"), allow) is not None
    assert allow.allows_host("Hooks.Internal.")
    with pytest.raises(ValueError):
        AllowList.parse("10.0.0.0/33")


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/", "file:///etc/passwd", "https://user:pw@example.com/", "https:///path", "http://x:99999/", 7],
)
def test_callback_urls_are_checked_when_given(url):
    """
    A callback URL must be http(s), name a host and carry no credentials.
    """
    with pytest.raises(ValueError):
        check_url(url)


def _resolver(answers: dict[str, list[str]], asked: list[str]):
    def resolve(host, port):
        asked.append(host)
        return succeed(answers[host])

    return resolve


@pytest_twisted.ensureDeferred
async def test_a_literal_loopback_callback_is_refused_without_the_allow_list():
    """
    http://127.0.0.1/ fails the attempt with the reason; nothing connects.
    """
    sender = WebhookSender(reactor, SECRET, NOTHING, resolve=_resolver({}, []))
    outcome = await sender.send("http://127.0.0.1:9/hook", "msg_1", b"{}")
    assert outcome.status_code is None and outcome.refused
    assert "refused" in outcome.error and "127.0.0.1" in outcome.error


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("address", ["10.0.0.7", "::ffff:10.0.0.7", "64:ff9b::a00:7", "2002:a00:7::"])
async def test_a_name_resolving_to_a_private_address_is_refused_at_connect_time(address):
    """
    A host name is resolved when connecting, and refused if any address it
    resolves to is not public, in any of its IPv6 forms.
    """
    asked: list[str] = []
    sender = WebhookSender(
        reactor, SECRET, NOTHING, resolve=_resolver({"rebind.example": ["93.184.215.14", address]}, asked)
    )
    outcome = await sender.send("https://rebind.example/hook", "msg_1", b"{}")
    assert asked == ["rebind.example"]
    assert outcome.status_code is None and outcome.refused and "refused" in outcome.error


@pytest_twisted.ensureDeferred
async def test_a_refused_callback_fails_the_delivery_with_its_reason(db_setting):
    """
    A job whose callback host resolves to 10.x still succeeds; its delivery
    fails at once with the reason on the job, counted as refused.
    """
    made = await make_setup(db_setting, allow=NOTHING, resolve=_resolver({"hooks.example": ["10.9.8.7"]}, []))
    try:
        response = await made.post(
            "/jobs", {"model": "claude", "prompt": "hi", "callback_url": "https://hooks.example/x"}
        )
        assert response.code == 202
        job_id = (await response.json())["id"]
        (await started(made)).succeed()
        job = await made.job_reaches(job_id, lambda j: j["deliveries"] and j["deliveries"][0]["state"] != "pending")
        assert job["status"] == "succeeded"
        delivery = job["deliveries"][0]
        assert delivery["state"] == "failed"
        assert "10.9.8.7" in delivery["attempts"][0]["error"]
        assert await eventually(
            lambda: b'shellm_webhook_deliveries_total{outcome="refused"} 1.0' in made.gw.api.metrics.render()
        )
    finally:
        made.runner.stop()
        await made.store.close()
