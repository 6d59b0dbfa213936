"""
Reading request headers: as bytes, decoded here and only here.

Twisted's C{Request.getHeader(str)} decodes the value as strict UTF-8 and
raises on anything else, so one stray byte (C{X-Request-Id: \\xff}) used to
turn any request into an HTML 500.  Everything in SheLLM reads headers
through these functions instead: ordinary headers are decoded leniently
(undecodable bytes become U+FFFD, which no valid value contains), the
credentials strictly (an unreadable key is refused, never guessed at), and
a credential header sent twice is refused rather than silently taking the
last one.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from shellm.errors import InvalidRequest
from shellm.routing.auth import AuthRequired, token_from_headers

#: The headers that may carry a client key.
CREDENTIAL_HEADERS = (b"authorization", b"x-api-key")


def header(request: IRequest, name: bytes) -> str | None:
    """
    The last value of header C{name}, decoded as UTF-8 with undecodable
    bytes replaced; L{None} when it is absent.  Never raises.
    """
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    return values[-1].decode("utf-8", "replace")


def _credential(request: IRequest, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    shown = name.decode("ascii").title()
    if len(values) > 1:
        raise InvalidRequest(f"send one {shown} header, not {len(values)}")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise AuthRequired(f"the {shown} header is not valid UTF-8") from None


def presented_token(request: IRequest) -> str | None:
    """
    The key a request presents (C{Authorization: Bearer} first, then
    C{x-api-key}), or L{None}.

    @raise InvalidRequest: if either header is sent more than once (400).
    @raise AuthRequired: if either is not valid UTF-8 (401).
    """
    authorization, api_key = (_credential(request, name) for name in CREDENTIAL_HEADERS)
    return token_from_headers(authorization, api_key)
