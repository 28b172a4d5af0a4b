"""Small PNG figures of the moons and of what a model makes of them, drawn with matplotlib's Agg canvas.

PNG rather than plotly HTML: the MLflow UI shows an image offline, in its artifact
view and, for images logged per step, side by side across runs in its chart view.

Our figures are `matplotlib.figure.Figure`s on their own `FigureCanvasAgg`, never
pyplot's: no global state to disturb, nothing to close, one per trial thread. They
are drawn small, without ticks and without antialiasing: ticks and titles that lay
themselves out are most of a render's cost, and crisp dots compress to a third of
the bytes. Every panel shows one frame, the data's range, so panels, epochs and runs
compare by eye; a point beyond the frame is drawn on its edge rather than dropped.
Figures that a library draws through pyplot (Optuna's) go through `pyplot_png`, which
closes them.

Arrays and numbers in, pixels or PNG bytes out (no models, no MLflow).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

MOON_COLOURS = ("#1f77b4", "#ff7f0e")  # moon 0, moon 1, as plots.py colours them
NO_MOON = "#595959"  # points that belong to no moon: the VAE's samples, drawn blind to labels
COLOURS = (*MOON_COLOURS, NO_MOON)  # by a point's group: its moon, or NO_MOON_GROUP
NO_MOON_GROUP = len(MOON_COLOURS)
DPI = 72  # small images: a trial logs a dozen of them
PANEL_WIDTH = 2.4  # inches; the height follows the frame's aspect
MARKER_PIXELS = 2  # each point a square this wide
MARGIN = 0.08  # of the data's range, added to each side of the frame
TITLE_INCHES = 0.22  # room above the panels for their titles
PYPLOT_DPI = 90  # other libraries' figures, drawn once per study and full of text: larger than ours
MAX_POINTS = 1200  # per panel (the default training split); more would only blot a small panel and add bytes
Frame = tuple[float, float, float, float]  # x min, x max, y min, y max
Points = tuple[np.ndarray, np.ndarray | None]  # N x 2 coordinates, N moon labels (None: no moon)


def frame(x: np.ndarray) -> Frame:
    """The data's range with a margin: the one scale of every panel."""
    low, high = x.min(axis=0), x.max(axis=0)
    pad = MARGIN * np.maximum(high - low, 1e-6)
    return float(low[0] - pad[0]), float(high[0] + pad[0]), float(low[1] - pad[1]), float(high[1] + pad[1])


class Panels:
    """A row of scatter panels on one figure, built once and refilled: a redraw costs a render, not a new figure.

    Each colour is one marker line: Agg stamps those in half the time of a scatter with a colour per point.
    """

    def __init__(self, n_panels: int, limits: Frame) -> None:
        x_min, x_max, y_min, y_max = limits
        height = PANEL_WIDTH * np.clip((y_max - y_min) / (x_max - x_min), 0.4, 1.2)
        self.limits = limits
        self.figure = Figure(figsize=(PANEL_WIDTH * n_panels, height + TITLE_INCHES), dpi=DPI)
        FigureCanvasAgg(self.figure)
        self.figure.subplots_adjust(
            left=0.01, right=0.99, bottom=0.02, top=height / (height + TITLE_INCHES), wspace=0.05
        )
        self.titles, self.dots = [], []  # per panel: its title; its marker lines for moon 0, moon 1 and no moon
        for ax in self.figure.subplots(1, n_panels, squeeze=False)[0]:
            ax.set_xlim(x_min, x_max)
            ax.set_ylim(y_min, y_max)
            ax.set_xticks([])
            ax.set_yticks([])
            # a plain text, not set_title, which lays itself out anew on every render
            self.titles.append(ax.text(0.5, 1.01, "", fontsize=8, ha="center", va="bottom", transform=ax.transAxes))
            size = MARKER_PIXELS * 72 / DPI  # in points
            style = {"linestyle": "none", "marker": "s", "markersize": size, "markeredgewidth": 0, "clip_on": False}
            self.dots.append([ax.plot([], [], color=colour, antialiased=False, **style)[0] for colour in COLOURS])

    def draw(self, named: dict[str, Points]) -> np.ndarray:
        """The panels showing `named` (title -> points), as H x W x 3 uint8 pixels.

        At most MAX_POINTS points per panel, the first ones: the splits are shuffled.
        """
        x_min, x_max, y_min, y_max = self.limits
        for lines, title, (name, (x, labels)) in zip(self.dots, self.titles, named.items(), strict=True):
            x = np.clip(np.asarray(x, dtype=float)[:MAX_POINTS], (x_min, y_min), (x_max, y_max))
            group = np.full(len(x), NO_MOON_GROUP) if labels is None else np.asarray(labels)[:MAX_POINTS]
            for index, line in enumerate(lines):
                line.set_data(x[group == index, 0], x[group == index, 1])
            title.set_text(name)
        canvas = self.figure.canvas
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def png(pixels: np.ndarray) -> bytes:
    """H x W x 3 uint8 pixels as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    return buffer.getvalue()


def scatter_png(named: dict[str, Points], limits: Frame | None = None) -> bytes:
    """A one-off row of scatter panels, titled by the keys of `named`, as PNG bytes."""
    limits = limits or frame(np.concatenate([np.asarray(x) for x, _ in named.values()]))
    return png(Panels(len(named), limits).draw(named))


@contextmanager
def _closing_new_pyplot_figures() -> Iterator[None]:
    """Close every pyplot figure opened inside, also on error: pyplot keeps its figures until they are closed."""
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        yield
    finally:
        for number in set(plt.get_fignums()) - before:
            plt.close(number)


def pyplot_png(draw: Callable[[], Any], dpi: int = PYPLOT_DPI) -> bytes:
    """PNG bytes of what `draw` plots through pyplot (it returns an Axes or an array of them); its figures closed.

    For libraries that only draw through pyplot (Optuna's matplotlib plots), so a
    long study does not pile up figures.
    """
    with _closing_new_pyplot_figures():
        drawn = draw()
        figure = drawn.figure if hasattr(drawn, "figure") else np.ravel(drawn)[0].figure
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        return buffer.getvalue()
