"""The home page's reward-KL frontier, to explore: an SVG drawn from lesson 09's results table and written into the page
(nothing is loaded). A point per method at its KL from SFT and its gold reward, with their 95% intervals as bars;
pointing at a point (hovering, focusing or tapping it) reads out its method, values and intervals under the plot, and
a button per method hides or shows it (website/site.js). Lesson 09's figure, above it, adds best-of-n's exact curve.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.colors import to_hex
from matplotlib.ticker import MaxNLocator

from rrhf_lite.course.compare import with_intervals
from rrhf_lite.course.plots import method_colours

WIDTH, HEIGHT = 720, 400  # the drawing's units: it is scaled to the column's width
LEFT, RIGHT, TOP, BOTTOM = 60, 16, 16, 48  # margins for the ticks and the axes' names
BEST_OF_N = "#666666"  # grey, as the figure's best-of-n curve
PROMPT = "Point at a method for its values and 95% intervals; its button below hides or shows it."


def axis(values: np.ndarray, start: float, end: float) -> tuple[np.ndarray, Callable[[float], float]]:
    """Round ticks spanning ``values`` and the map from a value to its place between ``start`` and ``end``."""
    low, high = np.nanmin(values), np.nanmax(values)
    ticks = MaxNLocator(6).tick_values(low, high if high > low else low + 1)
    ticks = ticks[(ticks >= ticks[ticks <= low].max()) & (ticks <= ticks[ticks >= high].min())]  # no empty ticks

    def place(value: float) -> float:
        return round(start + (value - ticks[0]) / (ticks[-1] - ticks[0]) * (end - start), 1)

    return ticks, place


def frontier_svg(table: pd.DataFrame) -> str:
    """The frontier of ``table`` (results.csv, indexed by method) as HTML: the plot, the line that reads out a point,
    the methods' buttons. The gold reward where there is one, else the proxy reward (no judge)."""
    reward = "gold_reward" if table["gold_reward"].notna().any() else "proxy_reward"
    x_ticks, x = axis(np.r_[0.0, table[["kl", "kl_lo", "kl_hi"]].to_numpy().ravel()], LEFT, WIDTH - RIGHT)
    y_ticks, y = axis(table[[reward, f"{reward}_lo", f"{reward}_hi"]].to_numpy().ravel(), HEIGHT - BOTTOM, TOP)
    lines = [f'<line class="axis" x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}"/>',
             f'<line class="axis" x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{LEFT}" y2="{TOP}"/>']
    lines += [f'<text x="{x(t)}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{t:g}</text>' for t in x_ticks]
    lines += [f'<text x="{LEFT - 6}" y="{y(t) + 4}" text-anchor="end">{t:g}</text>' for t in y_ticks]
    lines += [f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" text-anchor="middle">KL from SFT (nats)</text>',
              f'<text transform="translate(14 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" text-anchor="middle">'
              f'{reward.replace("_", " ")}</text>']
    colours, shown = hex_colours(table.index), with_intervals(table)
    intervals, points, buttons = [], [], []  # the intervals under every point: a point is never hidden by a bar
    for name, row in table.iterrows():
        method, values = html.escape(name), shown.loc[name]  # each value with its interval, as the table shows it
        readout = html.escape(f"{name}: {reward.replace('_', ' ')} {values[reward]}, KL {values['kl']}, "
                              f"proxy reward {values['proxy_reward']}")
        intervals.append(f'<g data-method="{method}">{bars(row, reward, x, y)}</g>')
        points.append(f'<g class="method" data-method="{method}" data-readout="{readout}" tabindex="0">'
                      f"<title>{readout}</title>"
                      f'<circle cx="{x(row["kl"])}" cy="{y(row[reward])}" r="6" fill="{colours[name]}"/></g>')
        buttons.append(f'<button type="button" class="frontier-toggle" data-method="{method}" aria-pressed="true">'
                       f'<span style="background: {colours[name]}"></span>{method}</button>')
    return (f'<div class="frontier"><svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{reward} against KL '
            f'from SFT, one point per method">{"".join(lines + intervals + points)}</svg>'
            f'<p class="frontier-readout" aria-live="polite">{PROMPT}</p>'
            f'<div class="frontier-methods">{"".join(buttons)}</div></div>')


def bars(row: pd.Series, reward: str, x: Callable, y: Callable) -> str:
    """A method's 95% intervals as lines through its point: the reward's (up and down), the KL's (sideways); none
    where it has none (best-of-n's KL is a bound)."""
    lines = []
    if not np.isnan(row[f"{reward}_lo"]):
        lines.append((x(row["kl"]), y(row[f"{reward}_lo"]), x(row["kl"]), y(row[f"{reward}_hi"])))
    if not np.isnan(row["kl_lo"]):
        lines.append((x(row["kl_lo"]), y(row[reward]), x(row["kl_hi"]), y(row[reward])))
    return "".join(f'<line class="interval" x1="{a}" y1="{b}" x2="{c}" y2="{d}"/>' for a, b, c, d in lines)


def hex_colours(methods: pd.Index) -> dict[str, str]:
    """Each method's colour, as in lesson 09's figure (best-of-n in grey: the figure draws it as a curve)."""
    trained = method_colours(methods)
    return {name: to_hex(trained[name]) if name in trained else BEST_OF_N for name in methods}
