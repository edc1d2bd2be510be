"""Small charts drawn on the server as inline SVG: bars and lines, each point with its own tooltip.

No script and nothing from elsewhere (the pages' Content-Security-Policy
allows neither): a chart is markup, sized by its ``viewBox`` and stretched to
its box by CSS (``.chart``). Every bar or point carries a ``<title>``, which
browsers show on hover and screen readers read; the chart itself is an
``img`` with a label saying what it shows.

Example::

    bars([3, 0, 5], ["10:00", "10:05", "10:10"], label="invocations per 5 min", unit="invocations")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 360, 64


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"  # a cost of $0.000002 is not "0.0"


def _frame(label: str, body: list[str], top: float, unit: str, height: int) -> Markup:
    axis = f'<line x1="0" y1="{height - 0.5}" x2="{WIDTH}" y2="{height - 0.5}" class="axis"/>'
    ceiling = (f'<text x="2" y="9" class="scale">{escape(_number(top))} {escape(unit)}</text>'
               if top else "")
    return Markup(f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" preserveAspectRatio="none" role="img" '
                  f'aria-label="{escape(label)}">{axis}{"".join(body)}{ceiling}</svg>')


def bars(values: Sequence[float], labels: Sequence[str], *, label: str, unit: str = "", css: str = "bar",
         height: int = HEIGHT) -> Markup:
    """One bar per value (``labels[i]`` names its slot in the tooltip), scaled to the largest."""
    top = max(values, default=0) or 0
    width = WIDTH / max(len(values), 1)
    body = []
    for index, (value, name) in enumerate(zip(values, labels, strict=True)):
        if not value:
            continue
        h = max(1.0, (height - 12) * value / top)
        body.append(f'<rect x="{index * width + 1:.1f}" y="{height - h:.1f}" width="{max(width - 2, 1):.1f}" '
                    f'height="{h:.1f}" class="{escape(css)}"><title>{escape(_number(value))} {escape(unit)}, '
                    f'{escape(name)}</title></rect>')
    return _frame(label, body, top, unit, height)


def lines(series: Mapping[str, Sequence[float | None]], labels: Sequence[str], *, label: str, unit: str = "",
          height: int = HEIGHT) -> Markup:
    """One line per series (a gap where a value is None), all on the same scale; each point titled."""
    values = [v for points in series.values() for v in points if v is not None]
    top = max(values, default=0) or 0
    count = max((len(points) for points in series.values()), default=0)
    step = WIDTH / max(count, 1)
    body = []
    for number, (name, points) in enumerate(series.items()):
        run: list[str] = []
        dots: list[str] = []
        for index, value in enumerate(points):
            if value is None:
                if len(run) > 1:
                    body.append(f'<polyline points="{" ".join(run)}" class="line line-{number}"/>')
                run = []
                continue
            x = index * step + step / 2
            y = height - 1 - (height - 12) * (value / top if top else 0)
            run.append(f"{x:.1f},{y:.1f}")
            dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" class="dot line-{number}"><title>{escape(name)} '
                        f'{escape(_number(value))} {escape(unit)}, {escape(labels[index])}</title></circle>')
        if len(run) > 1:
            body.append(f'<polyline points="{" ".join(run)}" class="line line-{number}"/>')
        body.extend(dots)
    return _frame(label, body, top, unit, height)


__all__ = ["HEIGHT", "WIDTH", "bars", "lines"]
