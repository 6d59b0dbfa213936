"""
What the fake HTTP servers share (C{fake_openai_server.py} here, the vendor
fakes of C{tests/e2e/fakes/}): a quiet site around one render method, the
vendors' reason phrases, a request's headers and JSON body.  The answer's
text helpers are the fake CLIs' own (L{tests.fakes.engine}).
"""

from __future__ import annotations

import json

from twisted.web import http, resource, server

from tests.fakes.engine import DEFAULT_TEXT, json_bytes, split_text

__all__ = ["DEFAULT_TEXT", "json_bytes", "split_text", "set_status", "headers_of", "json_body", "quiet_site"]

#: Reason phrases Twisted does not know.
REASONS = {429: b"Too Many Requests", 529: b"Overloaded"}


def set_status(request, status: int) -> None:
    request.setResponseCode(status, REASONS.get(status) or http.RESPONSES.get(status, b"Error"))


def headers_of(request) -> dict[str, str]:
    """
    The request's headers, names in lower case, repeated values joined.
    """
    return {
        name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
        for name, values in request.requestHeaders.getAllRawHeaders()
    }


def json_body(raw: bytes):
    """
    The parsed JSON body, or L{None} when there is none or it is not JSON.
    """
    try:
        return json.loads(raw) if raw else None
    except ValueError:  # UnicodeDecodeError too
        return None


class _Leaf(resource.Resource):
    isLeaf = True

    def __init__(self, render):
        super().__init__()
        self._render = render

    def render(self, request):
        return self._render(request)


def quiet_site(render) -> server.Site:
    """
    A site that answers every path with C{render(request)}, without an access
    log or tracebacks in bodies.
    """
    site = server.Site(_Leaf(render))
    site.log = lambda request: None
    site.displayTracebacks = False
    return site
