"""
The dashboard's building blocks: the page layout (C{templates/page.xml}
filled by L{Page}), the forms' hidden CSRF field and one-button forms, and
the small pieces the pages share (cards, states, times, key fields).
Everything is a L{twisted.web.template} tag, so every value is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from twisted.python.filepath import FilePath
from twisted.web.iweb import IRequest
from twisted.web.template import Element, Tag, XMLFile, renderer, tags

from shellm.http.dashboard.session import DashboardSession
from shellm.state.keys import KeyRecord

HERE = FilePath(__file__).parent()
NAV = (
    ("overview", "Overview", "/dashboard/"),
    ("requests", "Requests", "/dashboard/requests"),
    ("keys", "Keys", "/dashboard/keys"),
    ("jobs", "Jobs", "/dashboard/jobs"),
    ("sessions", "Sessions", "/dashboard/sessions"),
    ("templates", "Templates", "/dashboard/templates"),
)


def when(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return datetime.fromtimestamp(float(seconds), UTC).strftime("%Y-%m-%d %H:%M:%S")


def money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.4f}"


def size(count: int) -> str:
    """
    A number of bytes as people read it (binary units).
    """
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count:,} bytes" if unit == "bytes" else f"{value:,.1f} {unit}".replace(".0 ", " ")
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class Page(Element):
    """
    One page in the layout (C{templates/page.xml}).
    """

    loader = XMLFile(HERE.child("templates").child("page.xml"))

    def __init__(
        self,
        title: str,
        content: Tag | Sequence[Tag],
        current: str | None = None,
        session: DashboardSession | None = None,
        notice: str | None = None,
        error: bool = False,
    ):
        super().__init__()
        self._title = title
        self._content = content
        self._current = current
        self._session = session
        self._notice = notice
        self._error = error

    @renderer
    def page(self, request: IRequest | None, tag: Tag) -> Tag:
        return tag.fillSlots(title=self._title)

    @renderer
    def nav(self, request: IRequest | None, tag: Tag) -> Tag | str:
        if self._session is None:
            return ""
        items = tags.ul()
        for name, label, href in NAV:
            link = tags.a(href=href)(label)
            if name == self._current:
                link.attributes["aria-current"] = "page"
            items(tags.li(link))
        return tag(items)

    @renderer
    def logout(self, request: IRequest | None, tag: Tag) -> Tag | str:
        if self._session is None:
            return ""
        return tag(csrf_field(self._session), tags.button(type="submit")("Log out"))

    @renderer
    def notice(self, request: IRequest | None, tag: Tag) -> Tag | str:
        if not self._notice:
            return ""
        return tags.p(class_="notice error" if self._error else "notice", role="alert" if self._error else "status")(
            self._notice
        )

    @renderer
    def content(self, request: IRequest | None, tag: Tag) -> Tag | Sequence[Tag]:
        return self._content


def csrf_field(session: DashboardSession) -> Tag:
    return tags.input(type="hidden", name="csrf", value=session.csrf)


def post_button(session: DashboardSession, action: str, label: str, danger: bool = False, **fields: str) -> Tag:
    form = tags.form(method="post", action=action, class_="inline")(csrf_field(session))
    for name, value in fields.items():
        form(tags.input(type="hidden", name=name, value=value))
    button = tags.button(type="submit")(label)
    if danger:
        button.attributes["class"] = "danger"
    return form(button)


def card(value: str, what: str) -> Tag:
    return tags.div(class_="card")(tags.div(class_="value")(value), tags.div(class_="what")(what))


def state(text: str, good: bool | None) -> Tag:
    css = "state-ok" if good else "state-warn" if good is None else "state-bad"
    return tags.span(class_=css)(text)


def option(value: str, label: str, chosen: str) -> Tag:
    option = tags.option(value=value)(label)
    if value == chosen:
        option.attributes["selected"] = "selected"
    return option


def by_name(item: tuple[str, str]) -> str:
    return item[1]


def key_label(key: str | None, names: dict[str, str]) -> str:
    if key is None:
        return "—"
    if key.startswith("client:"):
        return key[len("client:") :]
    return names.get(key, key)


def brief(value: Any) -> str:
    text = value if isinstance(value, str) else "—" if value is None else str(value)
    return text if len(text) <= 300 else text[:300] + "…"


def key_inputs(record: KeyRecord | None) -> list[Tag]:
    def field(label: str, name: str, value: object, **extra: str) -> Tag:
        return tags.label(label, tags.input(name=name, value="" if value is None else str(value), **extra))

    return [
        field("Name", "name", record.name if record else "", required="required", maxlength="100"),
        field(
            "Models (space-separated; empty for every model)",
            "models",
            " ".join(record.models) if record and record.models else "",
        ),
        field("Requests per minute", "rpm", record.rpm if record else 10, inputmode="numeric"),
        field(
            "Daily tokens (empty: no limit)",
            "daily_tokens",
            record.daily_tokens if record else None,
            inputmode="numeric",
        ),
        field(
            "Monthly tokens (empty: no limit)",
            "monthly_tokens",
            record.monthly_tokens if record else None,
            inputmode="numeric",
        ),
        field("Note", "note", record.note if record else "", maxlength="1000"),
    ]
