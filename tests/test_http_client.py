"""
The treq client SheLLM talks to HTTP providers with: what it sends is what
treq would send for the same URL given as text.
"""

from __future__ import annotations

import pytest
import treq.client
from twisted.internet.defer import Deferred
from twisted.web.iweb import IAgent
from zope.interface import implementer

from shellm.providers.http_client import NoCookies, ReadyURL

pytestmark = pytest.mark.timeout(10)


@implementer(IAgent)
class Recording:
    def __init__(self):
        self.uris: list[bytes] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.uris.append(uri)
        return Deferred()


def sent(url) -> bytes:
    agent = Recording()
    treq.client.HTTPClient(agent, cookiejar=NoCookies()).get(url, allow_redirects=False)
    return agent.uris[0]


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:9000/v1/chat/completions",
        "https://api.cerebras.ai/v1/models",
        "http://bücher.example:8080/v1/chat/completions",
        "http://127.0.0.1:8080/v1/a b?x=ü",
    ],
)
def test_a_ready_url_is_sent_as_treq_sends_its_text(text):
    """
    Encoded once, the URL treq puts on the wire is byte for byte the one it
    makes from the text on every request (IDNA host, percent-encoding).
    """
    assert sent(ReadyURL.ready(text)) == sent(text)


def test_a_changed_copy_is_encoded_again():
    """
    A copy made with C{replace} (treq does that to add query parameters)
    is not taken for already encoded.
    """
    ready = ReadyURL.ready("http://127.0.0.1/v1/models")
    changed = ready.replace(path=("v1", "möd"))
    assert sent(changed) == b"http://127.0.0.1/v1/m%C3%B6d"
    assert ready.to_text(with_password=True) == "http://127.0.0.1/v1/models"
