"""Plotly figures of the moons, the models' outputs, their latent spaces and the studies.

Scatter plots are SVG (`go.Scatter`), not WebGL: a page can hold only a few WebGL
contexts, and headless or GPU-less browsers may have none, so a report with many
WebGL figures renders blank panels. These are figures of at most a few tens of
thousands of points, which SVG draws in well under a second.

Every function takes plain arrays and numbers (no models, no MLflow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

MOON_COLOURS = ("#1f77b4", "#ff7f0e")  # moon 0, moon 1
PATH_COLOURS = qualitative.Dark24
TEMPLATE = "plotly_white"


def moon_traces(x: np.ndarray, labels: np.ndarray, show_legend: bool = True, size: float = 4) -> list[go.Scatter]:
    """One scatter trace per moon, so the legend toggles them."""
    return [
        go.Scatter(
            x=x[labels == moon, 0],
            y=x[labels == moon, 1],
            mode="markers",
            marker={"size": size, "color": MOON_COLOURS[moon], "opacity": 0.7},
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
    figure.update_xaxes(matches="x")  # one scale for all panels, so samples compare with the data by eye
    figure.update_layout(title=title, height=400, width=380 * len(named_points), template=TEMPLATE)
    return figure


def data_grid(datasets: Mapping[tuple[int, float], tuple[np.ndarray, np.ndarray]], title: str) -> go.Figure:
    """The moons for every (size, noise): one row per size, one column per noise."""
    sizes = sorted({size for size, _ in datasets})
    noises = sorted({noise for _, noise in datasets})
    figure = make_subplots(
        rows=len(sizes),
        cols=len(noises),
        subplot_titles=[f"n={size}, noise={noise:g}" for size in sizes for noise in noises],
        horizontal_spacing=0.02,
        vertical_spacing=0.06,
    )
    for row, size in enumerate(sizes, start=1):
        for col, noise in enumerate(noises, start=1):
            x, labels = datasets[(size, noise)]
            marker_size = 4 if size <= 1000 else 2
            for trace in moon_traces(x, labels, show_legend=row == col == 1, size=marker_size):
                figure.add_trace(trace, row=row, col=col)
    figure.update_xaxes(showticklabels=False)
    figure.update_yaxes(showticklabels=False)
    figure.update_layout(title=title, height=230 * len(sizes), width=230 * len(noises), template=TEMPLATE)
    return figure


def _path_traces(paths: Mapping[int, np.ndarray], show_legend: bool = True) -> list[go.Scatter]:
    return [
        go.Scatter(
            x=points[:, 0],
            y=points[:, 1],
            mode="lines+markers",
            marker={"size": 6, "color": PATH_COLOURS[index % len(PATH_COLOURS)]},
            line={"width": 2, "color": PATH_COLOURS[index % len(PATH_COLOURS)]},
            name=f"z{dim}",
            legendgroup=f"z{dim}",
            showlegend=show_legend,
        )
        for index, (dim, points) in enumerate(paths.items())
    ]


def paths_over_points(
    named: Mapping[str, tuple[np.ndarray, np.ndarray, Mapping[int, np.ndarray]]], title: str
) -> go.Figure:
    """Panels of points coloured by moon, each with paths drawn over them (latent traversals).

    `named` maps a panel title to (points, labels, {latent dim: path as steps x 2}).
    """
    figure = make_subplots(rows=1, cols=len(named), subplot_titles=list(named), shared_yaxes=True)
    for col, (points, labels, paths) in enumerate(named.values(), start=1):
        for trace in moon_traces(np.asarray(points), np.asarray(labels), show_legend=col == 1, size=3):
            trace.marker.opacity = 0.25
            figure.add_trace(trace, row=1, col=col)
        for trace in _path_traces(paths, show_legend=col == 1):
            figure.add_trace(trace, row=1, col=col)
    figure.update_layout(title=title, height=450, width=450 * len(named) + 150, template=TEMPLATE)
    return figure


def training_curves(histories: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], title: str) -> go.Figure:
    """Per-epoch metrics of several runs: one panel per metric, one line per run, log y.

    `histories` maps a run's name to {metric: (steps, values)}.
    """
    metrics = sorted({metric for history in histories.values() for metric in history})
    figure = make_subplots(rows=1, cols=max(1, len(metrics)), subplot_titles=metrics)
    for index, (run, history) in enumerate(histories.items()):
        colour = PATH_COLOURS[index % len(PATH_COLOURS)]
        for col, metric in enumerate(metrics, start=1):
            if metric not in history:
                continue
            steps, values = history[metric]
            figure.add_trace(
                go.Scatter(
                    x=steps,
                    y=values,
                    mode="lines",
                    name=run,
                    legendgroup=run,
                    showlegend=col == 1,
                    line={"color": colour},
                ),
                row=1,
                col=col,
            )
    figure.update_yaxes(type="log")
    figure.update_xaxes(title_text="epoch")
    figure.update_layout(title=title, height=400, width=max(500, 360 * len(metrics)), template=TEMPLATE)
    return figure


def grouped_bars(
    groups: Mapping[str, Mapping[str, float]],
    title: str,
    y_title: str,
    log_y: bool = False,
    errors: Mapping[str, Mapping[str, float]] | None = None,
) -> go.Figure:
    """One bar per (category, group): e.g. parameter importances per study; `log_y` for values spanning decades;
    `errors` (shaped as `groups`): standard errors, drawn two either side."""
    figure = go.Figure(
        [
            go.Bar(
                x=list(values),
                y=list(values.values()),
                name=group,
                error_y=dict(type="data", array=[2 * errors[group][x] for x in values]) if errors else None,
            )
            for group, values in groups.items()
        ]
    )
    figure.update_layout(title=title, barmode="group", yaxis_title=y_title, height=420, width=800, template=TEMPLATE)
    if log_y:
        figure.update_yaxes(type="log")
    return figure


def _side_by_side(
    panels: list[tuple[str, go.BaseTraceType]], title: str, x_title: str, y_title: str, axis_type: str
) -> go.Figure:
    """One panel per (title, trace), sharing axis titles and axis type, in a row."""
    figure = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[name for name, _ in panels], horizontal_spacing=0.12
    )
    for col, (_, trace) in enumerate(panels, start=1):
        figure.add_trace(trace, row=1, col=col)
        figure.update_xaxes(title_text=x_title, type=axis_type, row=1, col=col)
        figure.update_yaxes(title_text=y_title, type=axis_type, row=1, col=col)
    figure.update_layout(title=title, height=420, width=max(520, 480 * len(panels)), template=TEMPLATE)
    return figure


def _colourbar_x(col: int, n_panels: int) -> float:
    """Each panel's colour bar at its right edge."""
    return col / n_panels - 0.02


def heatmaps(
    named: Mapping[str, tuple[Sequence[object], Sequence[object], np.ndarray]],
    title: str,
    x_title: str,
    y_title: str,
    colour_title: str,
) -> go.Figure:
    """Side-by-side heatmaps with the values written in the cells; `named` maps a title to (x, y, z[y, x])."""
    panels = [
        (
            name,
            go.Heatmap(
                x=[str(v) for v in x],
                y=[str(v) for v in y],
                z=z,
                text=[[f"{value:.3g}" for value in row] for row in z],
                texttemplate="%{text}",
                colorscale="Viridis",
                colorbar={"title": {"text": colour_title}, "x": _colourbar_x(col, len(named)), "len": 0.9},
            ),
        )
        for col, (name, (x, y, z)) in enumerate(named.items(), start=1)
    ]
    return _side_by_side(panels, title, x_title, y_title, "category")


def log_scatter(
    named: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    title: str,
    x_title: str,
    y_title: str,
    colour_title: str,
) -> go.Figure:
    """Side-by-side log-log scatter panels coloured by a third value on a log scale (e.g. eps_w x beta -> MSE)."""
    panels = []
    for col, (name, (x, y, value)) in enumerate(named.items(), start=1):
        value = np.asarray(value, dtype=float)
        marker = {
            "size": 9,
            "color": np.log10(np.maximum(value, 1e-12)),
            "colorscale": "Viridis",
            "colorbar": {"title": {"text": f"log10 {colour_title}"}, "x": _colourbar_x(col, len(named))},
        }
        text = [f"{colour_title} {v:.3g}" for v in value]
        panels.append((name, go.Scatter(x=x, y=y, mode="markers", marker=marker, text=text, showlegend=False)))
    return _side_by_side(panels, title, x_title, y_title, "log")
