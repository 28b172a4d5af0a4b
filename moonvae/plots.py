"""Plotly figures of points in the plane, coloured by moon."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

MOON_COLOURS = ("#1f77b4", "#ff7f0e")  # moon 0, moon 1


def moon_traces(x: np.ndarray, labels: np.ndarray, show_legend: bool = True) -> list[go.Scattergl]:
    """One scatter trace per moon, so the legend toggles them."""
    return [
        go.Scattergl(
            x=x[labels == moon, 0],
            y=x[labels == moon, 1],
            mode="markers",
            marker={"size": 4, "color": MOON_COLOURS[moon], "opacity": 0.7},
            name=f"moon {moon}",
            legendgroup=f"moon {moon}",
            showlegend=show_legend,
        )
        for moon in (0, 1)
    ]


def panels(named_points: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> go.Figure:
    """Side-by-side scatter panels sharing axes: e.g. data | reconstruction | samples."""
    figure = make_subplots(
        rows=1, cols=len(named_points), subplot_titles=list(named_points), shared_xaxes=True, shared_yaxes=True
    )
    for col, (x, labels) in enumerate(named_points.values(), start=1):
        for trace in moon_traces(np.asarray(x), np.asarray(labels), show_legend=col == 1):
            figure.add_trace(trace, row=1, col=col)
    figure.update_layout(title=title, height=400, width=380 * len(named_points), template="plotly_white")
    return figure
