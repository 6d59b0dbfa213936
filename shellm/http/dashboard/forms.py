"""
What a dashboard request carries: the posted form (read from the body once)
and the query string, and the filters parsed from them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlencode

from twisted.web.iweb import IRequest

from shellm.errors import InvalidRequest
from shellm.http.headers import header


def posted_form(request: IRequest) -> dict[str, list[str]]:
    """
    A posted form's fields (read from the body once; the site hands it over
    unparsed).
    """
    form: dict[str, list[str]] | None = getattr(request, "dashboard_form", None)
    if form is None:
        form = {}
        kind = (header(request, b"content-type") or "").split(";")[0].strip().lower()
        if request.method == b"POST" and kind == "application/x-www-form-urlencoded":
            content = request.content
            content.seek(0)
            form = parse_qs(content.read().decode("utf-8", "replace"), keep_blank_values=True)
        request.dashboard_form = form  # type: ignore[attr-defined]
    return form


def arg(request: IRequest, name: str) -> str | None:
    """
    A field of the posted form, else of the query string.
    """
    posted = posted_form(request).get(name)
    if posted:
        return posted[0]
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def peer(request: IRequest) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", "?"))


def time_arg(name: str, value: str) -> float | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name}: not a date and time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def status_arg(value: str) -> int | None:
    if not value:
        return None
    if not value.isdigit() or len(value) != 3:
        raise InvalidRequest("status: must be an HTTP status code")
    return int(value)


def query(given: dict[str, str], **more: str) -> str:
    return urlencode({**{k: v for k, v in given.items() if v}, **more})
