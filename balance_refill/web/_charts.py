"""Charts as server-rendered SVG: no JavaScript, nothing fetched, every label escaped."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 220
RIGHT, TOP, BOTTOM = 12, 12, 34
CHAR_WIDTH = 7.5  # an upper bound of one character's width at the labels' 12px


def number(value: float) -> str:
    """Credits for people: thousands separated, fractions kept exactly."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return f"{int(value):,}"
    return f"{value:,}"


def _scale(low: float, high: float) -> tuple[float, float]:
    if high <= low:
        high = low + 1
    return low, high


def axis_label(value: float) -> str:
    """A value label: whole numbers above 100, two decimals below."""
    return number(round(value) if abs(value) >= 100 else round(value, 2))


def left_margin(*labels: str) -> float:
    """Room for the longest value label, so no label is clipped at the left edge."""
    return 10 + CHAR_WIDTH * max([len(x) for x in labels] + [3])


def _frame(title: str, body: str, y_low: float, y_high: float, left: float) -> Markup:
    """The SVG element with its title, a zero/low line and top/bottom value labels."""
    plot_h = HEIGHT - TOP - BOTTOM
    axis = (
        f'<line x1="{left}" y1="{TOP}" x2="{left}" y2="{TOP + plot_h}" class="axis"/>'
        f'<line x1="{left}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" class="axis"/>'
        f'<text x="{left - 6}" y="{TOP + 4}" class="lbl end">{escape(axis_label(y_high))}</text>'
        f'<text x="{left - 6}" y="{TOP + plot_h}" class="lbl end">{escape(axis_label(y_low))}</text>'
    )
    return Markup(  # noqa: S704 - every interpolated value is escaped or a number
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" class="chart" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>{axis}{body}</svg>'
    )


def spend_bars(history: Sequence[float], current: float) -> Markup:
    """Credits spent per period: the stored history (oldest first) and the current one."""
    values = [*history, current]
    labels = [f"-{len(history) - i}" for i in range(len(history))] + ["now"]
    high = max([*values, 1])
    _, high = _scale(0, high)
    left = left_margin(axis_label(high), axis_label(0))
    plot_w = WIDTH - left - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    slot = plot_w / len(values)
    bar = slot * 0.6
    parts = []
    for i, (value, label) in enumerate(zip(values, labels, strict=True)):
        h = plot_h * max(value, 0) / high
        x = left + i * slot + (slot - bar) / 2
        y = TOP + plot_h - h
        cls = "bar now" if label == "now" else "bar"
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" class="{cls}">'
            f"<title>{escape(label)}: {escape(number(value))} credits</title></rect>"
            f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - 14}" class="lbl mid">{escape(label)}</text>'
        )
    return _frame("Credits spent per period, oldest first", "".join(parts), 0, high, left)


def balance_line(points: Sequence[tuple[datetime, float]], title: str) -> Markup:
    """The balance over time, oldest first, as a step line."""
    if not points:
        return Markup("")
    times = [p[0].timestamp() for p in points]
    values = [p[1] for p in points]
    t0, t1 = _scale(min(times), max(times))
    low, high = _scale(min([*values, 0]), max(values))
    left = left_margin(axis_label(high), axis_label(low))
    plot_w = WIDTH - left - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM

    def xy(t: float, v: float) -> tuple[float, float]:
        return left + plot_w * (t - t0) / (t1 - t0), TOP + plot_h * (1 - (v - low) / (high - low))

    path: list[str] = []
    dots: list[str] = []
    for i, (t, v) in enumerate(zip(times, values, strict=True)):
        x, y = xy(t, v)
        if i == 0:
            path.append(f"M{x:.1f},{y:.1f}")
        else:
            path.append(f"H{x:.1f}V{y:.1f}")
        dots.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="dot">'
            f"<title>{escape(points[i][0].strftime('%Y-%m-%d %H:%M'))}: "
            f"{escape(number(v))}</title></circle>"
        )
    first = points[0][0].strftime("%b %d")
    last = points[-1][0].strftime("%b %d")
    labels = (
        f'<text x="{left}" y="{HEIGHT - 14}" class="lbl">{escape(first)}</text>'
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 14}" class="lbl end">{escape(last)}</text>'
    )
    body = f'<path d="{"".join(path)}" class="line"/>' + "".join(dots) + labels
    return _frame(title, body, low, high, left)
