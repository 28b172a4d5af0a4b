"""Figures, the studies' evidence among them, and the self-contained report, down to rendering it in Chromium."""

import re

import numpy as np
import pandas as pd
import pytest
from browser import dump_dom
from designed import agreeing

from moonvae.analysis import figures, plots, report
from moonvae.config import SpaceName
from moonvae.tuning.tables import StudyTable


@pytest.fixture
def moons():
    from sklearn.datasets import make_moons

    return make_moons(200, noise=0.1, random_state=0)


def test_panels_put_each_moon_in_its_own_trace(moons):
    x, y = moons
    figure = plots.panels({"data": (x, y), "copy": (x, y)}, "title")
    assert len(figure.data) == 4
    assert sum(len(trace.x) for trace in figure.data[:2]) == 200
    assert np.array_equal(figure.data[1].x, x[y == 1, 0])
    assert [trace.showlegend for trace in figure.data] == [True, True, False, False]
    assert figure.layout.xaxis2.matches == "x"  # one scale: samples compare with the data by eye


def test_data_grid_has_a_panel_per_size_and_noise(moons):
    x, y = moons
    grid = {(size, noise): (x[:size], y[:size]) for size in (50, 200) for noise in (0.0, 0.1, 0.2)}
    figure = plots.data_grid(grid, "grid")
    assert len(figure.data) == 12
    titles = [annotation.text for annotation in figure.layout.annotations]
    assert titles[0] == "n=50, noise=0" and titles[-1] == "n=200, noise=0.2"


def test_paths_over_points_draws_one_line_per_dimension(moons):
    x, y = moons
    paths = {3: np.zeros((10, 2)), 7: np.ones((10, 2))}
    figure = plots.paths_over_points({"label 0": (x, y, paths), "label 1": (x, y, paths)}, "traversal")
    lines = [trace for trace in figure.data if trace.mode == "lines+markers"]
    assert [trace.name for trace in lines] == ["z3", "z7", "z3", "z7"]
    assert len(lines[0].x) == 10


def test_training_curves_and_studies_figures():
    steps = np.arange(5)
    curves = plots.training_curves(
        {"vae": {"val_mse": (steps, 1 / (steps + 1))}, "cvae": {"val_mse": (steps, 2 / (steps + 1))}}, "curves"
    )
    assert [trace.name for trace in curves.data] == ["vae", "cvae"]
    assert curves.layout.yaxis.type == "log"
    bars = plots.grouped_bars({"vae": {"lr": 0.1, "latent_dim": 0.6}}, "importances", "importance")
    assert list(bars.data[0].x) == ["lr", "latent_dim"]
    heat = plots.heatmaps({"vae": ([0.0, 0.1], [200, 2000], np.array([[1.0, 2.0], [3.0, 4.0]]))}, "t", "n", "s", "mse")
    assert heat.data[0].text[1][0] == "3"
    scatter = plots.log_scatter({"vae": (np.ones(3), np.ones(3), np.array([1e-3, 1e-2, 1e-1]))}, "t", "a", "b", "mse")
    assert list(scatter.data[0].marker.color) == pytest.approx([-3, -2, -1])


def test_study_figures_draw_each_studys_evidence_in_a_panel_named_after_it():
    tables = agreeing()
    tables[("cvae", SpaceName.DATA)] = StudyTable(tables[("cvae", SpaceName.DATA_SEEDS)].trials.query("seed == 1"))
    study_names = {(model, space): f"{model} {space}" for model, space in tables}
    drawn = {figure.title: figure.figure for figure in figures.study_figures(tables, study_names)}
    assert list(drawn) == [
        "Parameter importances",
        "Best validation MSE by decoder width and latent size",
        "Best validation MSE across noise and size (data studies)",
        "best val MSE across eps_w and beta (probabilistic studies)",
        "I(x; z), nats across eps_w and beta (probabilistic studies)",
    ]  # no test KL in these tables: no figure for it

    def panels(title):
        return [annotation.text for annotation in drawn[title].layout.annotations]

    assert [bars.name for bars in drawn["Parameter importances"].data] == ["vae importance", "cvae importance"]
    assert panels("Best validation MSE by decoder width and latent size") == [
        "vae importance", "cvae importance", "vae capacity"
    ]  # fmt: skip
    capacity = drawn["Best validation MSE by decoder width and latent size"].data[2]
    assert list(capacity.x) == list(capacity.y) == ["2", "4", "8", "32", "128"]  # the grid's widths, in order
    median = tables[("vae", SpaceName.CAPACITY)].trials.query("decoder_hidden == 2 and latent_dim == 128")["value"]
    assert capacity.z[-1][0] == pytest.approx(median.median())  # z[latent][decoder]: the median over the rest
    data = drawn["Best validation MSE across noise and size (data studies)"]
    assert [annotation.text for annotation in data.layout.annotations] == [
        "cvae data", "vae data-seeds", "cvae data-seeds"
    ]  # fmt: skip
    assert panels("I(x; z), nats across eps_w and beta (probabilistic studies)") == [
        "vae probabilistic-seeds", "cvae probabilistic-seeds"
    ]  # fmt: skip
    assert all(len(trace.x) == 60 for trace in drawn["best val MSE across eps_w and beta (probabilistic studies)"].data)


def test_study_figures_draw_nothing_without_studies():
    assert figures.study_figures({}, {}) == []


def small_report(moons, tmp_path):
    x, y = moons
    drawn = [
        report.Figure("data", plots.panels({"data": (x, y)}, "data"), "the moons"),
        report.Figure("grid", plots.data_grid({(100, 0.1): (x[:100], y[:100]), (200, 0.1): (x, y)}, "grid")),
    ]
    table = report.Table("metrics", pd.DataFrame({"metric": ["vae_test_mse", "<b>"], "value": [0.01234567, 2.0]}))
    return report.write(tmp_path / "out" / "report.html", "Report", "intro", [table], drawn)


def test_report_is_self_contained(moons, tmp_path):
    path = small_report(moons, tmp_path)
    document = path.read_text()
    assert document.count("<script") == 2 + 2 + 1  # error hook, plotly.js, two specs, the render loop
    assert document.count("Plotly=") + document.count("plotly.js v") >= 1  # plotly.js itself is inline
    assert not re.search(r"<script[^>]+src=", document)  # nothing loaded from elsewhere
    assert "&lt;b&gt;" in document and "0.01235" in document
    assert 'data-expected="2"' in document


def test_report_renders_in_chromium(moons, tmp_path):
    dom, log = dump_dom(small_report(moons, tmp_path))
    assert re.search(r'data-rendered="2"', dom) and re.search(r'data-errors="0"', dom)
    assert dom.count('class="main-svg"') >= 2
    assert "2 of 2 figures rendered" in dom
    assert "Uncaught" not in log


def test_browser_check_sees_a_broken_figure(moons, tmp_path):
    path = small_report(moons, tmp_path)
    path.write_text(path.read_text().replace('id="figure-1-spec">{', 'id="figure-1-spec">{oops', 1))
    dom, _ = dump_dom(path)
    assert 'data-rendered="1"' in dom and 'data-errors="1"' in dom
    assert 'class="failed"' in dom
