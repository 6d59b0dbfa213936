"""
Charts drawn on the server as SVG: bars per time bucket, stacked by series,
each bar with its exact values in a C{<title>} (shown on hover and read by
screen readers), and the same numbers as a table beside the picture.
Pure functions from numbers to L{twisted.web.template} tags, so the values
are escaped like any other text.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import frozen
from twisted.web.template import Tag, tags

WIDTH = 600
HEIGHT = 160
#: Room left of the bars for the scale, and below them for the labels.
LEFT = 36
BOTTOM = 18
TOP = 8


@frozen
class Series:
    """
    One stacked layer: its name, its CSS class (the colour, from the
    dashboard's style sheet), and a value per bucket.
    """

    name: str
    css: str
    values: tuple[float, ...]


def nice_ceiling(value: float) -> float:
    """
    The scale's top: 1, 2 or 5 times a power of ten, at least C{value}.
    """
    if value <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= value:
        power *= 10
    while power > value:
        power /= 10
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}".rstrip("0").rstrip(".")


def _svg(name: str, **attributes: str) -> Tag:
    tag = Tag(name)
    for key, value in attributes.items():
        tag.attributes[key.rstrip("_").replace("_", "-")] = value
    return tag


def bar_chart(title: str, labels: Sequence[str], series: Sequence[Series], every: int = 1) -> Tag:
    """
    A stacked bar chart of C{series} over the buckets C{labels}, with every
    C{every}-th label written under its bar; and its table.
    """
    count = len(labels)
    totals = [sum(s.values[i] for s in series) for i in range(count)]
    top = nice_ceiling(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(count, 1)
    bar_w = max(slot * 0.8, 1.0)
    svg = _svg(
        "svg",
        xmlns="http://www.w3.org/2000/svg",
        viewBox=f"0 0 {WIDTH} {HEIGHT}",
        role="img",
        class_="chart",
    )
    svg(_svg("title")(title))
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + plot_h * (1 - fraction)
        svg(_svg("line", x1=str(LEFT), x2=str(WIDTH), y1=f"{y:.1f}", y2=f"{y:.1f}", class_="grid"))
        svg(_svg("text", x=str(LEFT - 4), y=f"{y + 4:.1f}", class_="scale")(_number(top * fraction)))
    for i, label in enumerate(labels):
        x = LEFT + i * slot + (slot - bar_w) / 2
        group = _svg("g", class_="bar")
        parts = ", ".join(f"{s.name} {_number(s.values[i])}" for s in series)
        group(_svg("title")(f"{label}: {parts}"))
        base = float(TOP + plot_h)
        for s in series:
            height = plot_h * s.values[i] / top
            if height <= 0:
                continue
            base -= height
            group(
                _svg("rect", x=f"{x:.1f}", y=f"{base:.1f}", width=f"{bar_w:.1f}", height=f"{height:.1f}", class_=s.css)
            )
        # An invisible full-height target, so an empty bucket has a hover too.
        group(_svg("rect", x=f"{x:.1f}", y=str(TOP), width=f"{bar_w:.1f}", height=f"{plot_h:.1f}", class_="hit"))
        svg(group)
        if i % every == 0:
            svg(_svg("text", x=f"{x + bar_w / 2:.1f}", y=str(HEIGHT - 4), class_="label")(label))
    return tags.figure(class_="chart")(
        svg,
        tags.figcaption(title),
        tags.details(tags.summary("Table"), table(["bucket", *[s.name for s in series]], _rows(labels, series))),
    )


def _rows(labels: Sequence[str], series: Sequence[Series]) -> list[list[str]]:
    return [[label, *[_number(s.values[i]) for s in series]] for i, label in enumerate(labels)]


def share_bars(title: str, items: Sequence[tuple[str, float]], unit: str = "") -> Tag:
    """
    Horizontal bars for a few named amounts (errors by code, tokens by
    provider), each labelled with its exact value.
    """
    top = max((value for _, value in items), default=0) or 1
    row_h = 22
    height = max(row_h * len(items), row_h)
    svg = _svg(
        "svg", xmlns="http://www.w3.org/2000/svg", viewBox=f"0 0 {WIDTH} {height}", role="img", class_="chart shares"
    )
    svg(_svg("title")(title))
    for i, (name, value) in enumerate(items):
        y = i * row_h
        width = (WIDTH - 200) * value / top
        group = _svg("g", class_="bar")
        group(_svg("title")(f"{name}: {_number(value)}{unit}"))
        group(_svg("text", x="0", y=str(y + 15), class_="name")(name[:24]))
        group(_svg("rect", x="150", y=str(y + 3), width=f"{max(width, 1):.1f}", height=str(row_h - 6), class_="s1"))
        group(_svg("text", x=f"{150 + width + 4:.1f}", y=str(y + 15), class_="value")(_number(value) + unit))
        svg(group)
    if not items:
        svg(_svg("text", x="0", y="15", class_="name")("nothing yet"))
    return tags.figure(class_="chart")(svg, tags.figcaption(title))


def table(head: Sequence[str], rows: Sequence[Sequence[object]], caption: str | None = None) -> Tag:
    """
    A plain data table; numbers right-aligned by the style sheet.
    """
    result = tags.table()
    if caption:
        result(tags.caption(caption))
    result(tags.thead(tags.tr(*[tags.th(scope="col")(h) for h in head])))
    body = tags.tbody()
    for row in rows:
        body(tags.tr(*[tags.td(cell if isinstance(cell, Tag) else str(cell)) for cell in row]))
    return result(body)
