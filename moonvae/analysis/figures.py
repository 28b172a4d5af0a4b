"""The analysis figures: the data, each model's samples, reconstructions and traversals, its latent space,
and the evidence of the studies. Models and tables in, `report.Figure`s out (drawn with `plots`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from moonvae.analysis import plots, report
from moonvae.config import MODELS, DataConfig, SpaceName
from moonvae.core import data as moons
from moonvae.core.data import Split
from moonvae.core.models import VAE, LatentBank, traversal_latents
from moonvae.sampling import sources
from moonvae.tuning.tables import StudyTable

GRID_SIZES = (100, 1000, 10000)  # the study's data figure
GRID_NOISES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
TRAVERSAL_STEPS = 10
TRAVERSAL_DIMS = 8  # dimensions drawn per traversal: those whose sweep moves the output most
UMAP_NEIGHBOURS, UMAP_MIN_DIST = 15, 0.1  # as in the study


def traversal_paths(
    network: VAE, bank: LatentBank, labels: tuple[int | None, ...], steps: int = TRAVERSAL_STEPS
) -> tuple[list[int], dict[int | None, dict[int, tuple[np.ndarray, np.ndarray]]]]:
    """The study's traversal for every latent dimension, decoded with each label.

    Returns the `TRAVERSAL_DIMS` dimensions whose sweep moves the decoded point
    furthest (summed over labels), and per label {dim: (latents, decoded points)}.
    """
    paths: dict[int | None, dict[int, tuple[np.ndarray, np.ndarray]]] = {label: {} for label in labels}
    length = np.zeros(bank.mean.shape[1])
    with torch.inference_mode():
        for dim in range(bank.mean.shape[1]):
            latents = traversal_latents(bank.mean, dim, steps)
            for label in labels:
                y = None if label is None else torch.full((steps,), label)
                points = network.decode(latents, y).numpy()
                paths[label][dim] = (latents.numpy(), points)
                length[dim] += np.linalg.norm(np.diff(points, axis=0), axis=1).sum()
    top = [int(dim) for dim in np.argsort(-length, kind="stable")[:TRAVERSAL_DIMS]]
    return top, {label: {dim: by_dim[dim] for dim in top} for label, by_dim in paths.items()}


def fit_umap(latents: np.ndarray, seed: int) -> Any:  # a umap.UMAP; imported late, it takes seconds
    """UMAP of the latent means as in the study; the first fit pays numba's JIT compilation (~10-20 s)."""
    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": determinism is the point
        reducer = umap.UMAP(n_neighbors=UMAP_NEIGHBOURS, min_dist=UMAP_MIN_DIST, random_state=seed)
        reducer.fit(latents)
    return reducer


def model_figures(
    kind: str, network: VAE, bank: LatentBank, train: Split, samples: sources.Samples, seed: int
) -> tuple[list[report.Figure], dict]:
    """Samples and reconstructions, traversals in data space, and what UMAP needs for the latent figures."""
    name = kind.upper()
    reference = samples.reference
    labels = reference.y.numpy()
    with torch.inference_mode():
        reconstruction = network(reference.x, reference.y)[0].numpy()
    drawn = [
        report.Figure(
            f"{name}: data, reconstructions and samples",
            plots.panels(
                {
                    "fresh data": (reference.x.numpy(), labels),
                    "reconstruction": (reconstruction, labels),
                    "prior samples": (samples.prior, labels),
                    "aggregate-posterior samples": (samples.posterior, labels),
                },
                f"{name}: fresh data, reconstructions, samples from the prior and from the aggregate posterior",
            ),
            "Colour is the moon of the data point, or the moon asked for (the VAE ignores it: its sample colours "
            "are the labels of the reference points, not the moon the sample lies on).",
        )
    ]
    conditions: tuple[int | None, ...] = (0, 1) if network.n_conditions else (None,)
    top, paths = traversal_paths(network, bank, conditions)
    drawn.append(
        report.Figure(
            f"{name}: latent traversals in data space",
            plots.paths_over_points(
                {
                    ("decoded" if label is None else f"decoded with label {label}"): (
                        train.x.numpy(),
                        train.y.numpy(),
                        {dim: points for dim, (_, points) in by_dim.items()},
                    )
                    for label, by_dim in paths.items()
                },
                f"{name}: each line sweeps one latent dimension from its min to its max "
                f"({TRAVERSAL_STEPS} steps) around the median latent",
            ),
            f"The {len(top)} dimensions (of {bank.mean.shape[1]}) whose sweep moves the output most.",
        )
    )
    reducer = fit_umap(bank.mean.numpy(), seed)
    first = next(iter(paths.values()))
    umap_paths = {dim: reducer.transform(latents) for dim, (latents, _) in first.items()}
    return drawn, {"embedding": reducer.embedding_, "labels": train.y.numpy(), "paths": umap_paths}


def sources_figure(ratios: Mapping[str, Mapping[str, float]]) -> report.Figure:
    """MMD ratio of each model (alias) and source: {source: {model: ratio}}, with an exact sampler's for scale."""
    return report.Figure(
        "Sample quality by source: MMD ratio",
        plots.grouped_bars(ratios, "Squared MMD to exact draws over an exact sampler's (log scale)", "MMD ratio", True),
        "1 is what an exact sampler scores (the floor); each bar is the mean over the full protocol's sets.",
    )


def source_samples_figure(model: str, samples: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> report.Figure:
    """One model's samples from each source, beside exact draws: {panel title: (points, moon labels)}."""
    return report.Figure(
        f"{model}: samples by source",
        plots.panels(dict(samples), f"{model}: exact draws and samples from each source"),
        "Colour is the moon asked for (the VAE's samples, blind to moons, are all in the first colour).",
    )


def data_figure(seed: int) -> report.Figure:
    datasets = {}
    for size in GRID_SIZES:
        for noise in GRID_NOISES:
            x, y = moons.generate(DataConfig(n_samples=size, noise=noise, data_seed=seed))
            datasets[(size, noise)] = (x, y)
    return report.Figure(
        "The data across sizes and noise",
        plots.data_grid(datasets, "make_moons across n_samples and noise"),
        "The study's data figure: the two moons at three sizes and six noise levels.",
    )


def study_figures(
    tables: Mapping[tuple[str, str], StudyTable], names: Mapping[tuple[str, str], str]
) -> list[report.Figure]:
    """The evidence behind the findings, where the studies exist; each panel is named after its study."""
    drawn = []
    importances = {
        names[key]: table.importances
        for key, table in tables.items()
        if key[1] in (SpaceName.BASIC, SpaceName.IMPORTANCE) and table.importances
    }
    if importances:
        drawn.append(
            report.Figure(
                "Parameter importances",
                plots.grouped_bars(importances, "fANOVA importance of each searched parameter", "importance"),
                "Findings 1-2: which parameters explain the best validation MSE (the importance study samples the "
                "space at random; the basic study's TPE concentrates near the best).",
            )
        )
    widths = {
        name: trials
        for name, trials in _trials_of_space(
            tables, names, (SpaceName.BASIC, SpaceName.IMPORTANCE, SpaceName.CAPACITY)
        ).items()
        if {"decoder_hidden", "latent_dim"} <= set(trials.columns)
    }
    if widths:
        title = "Best validation MSE by decoder width and latent size"
        drawn.append(_mse_heatmaps(title, widths, "decoder_hidden", "latent_dim", "Finding 2: grow together?"))
    data = _trials_of_space(tables, names, (SpaceName.DATA, SpaceName.DATA_SEEDS))
    if data:
        title = "Best validation MSE across noise and size (data studies)"
        drawn.append(_mse_heatmaps(title, data, "noise", "n_samples", "Findings 6-7."))
    probabilistic = _trials_of_space(tables, names, (SpaceName.PROBABILISTIC, SpaceName.PROBABILISTIC_SEEDS))
    for metric, label in (("value", "best val MSE"), ("mutual_info", "I(x; z), nats"), ("test_kl", "test KL")):
        named = {
            name: (trials["eps_w"].to_numpy(), trials["beta"].to_numpy(), trials[metric].to_numpy())
            for name, trials in probabilistic.items()
            if metric in trials
        }
        if named:
            drawn.append(
                report.Figure(
                    f"{label} across eps_w and beta (probabilistic studies)",
                    plots.log_scatter(named, f"{label} across eps_w and beta", "eps_w", "beta", label),
                    "Finding 8.",
                )
            )
    return drawn


def _trials_of_space(
    tables: Mapping[tuple[str, str], StudyTable], names: Mapping[tuple[str, str], str], spaces: tuple[str, ...]
) -> dict[str, pd.DataFrame]:
    """The trials of every study of these spaces that has any, by study name."""
    return {
        names[(model, space)]: table.trials
        for space in spaces
        for model in MODELS
        if (table := tables.get((model, space))) is not None and not table.trials.empty
    }


def _mse_heatmaps(title: str, trials: Mapping[str, pd.DataFrame], x: str, y: str, caption: str) -> report.Figure:
    """One heatmap per study of the median best validation MSE over two of its parameters."""
    pivots = {name: _pivot(table, x, y) for name, table in trials.items()}
    return report.Figure(title, plots.heatmaps(pivots, "Median best validation MSE", x, y, "MSE"), caption)


def _pivot(trials: pd.DataFrame, columns: str, rows: str) -> tuple[list, list, np.ndarray]:
    table = trials.pivot_table(index=rows, columns=columns, values="value", aggfunc="median")
    return list(table.columns), list(table.index), table.to_numpy()


def latent_figures(latents: Mapping[str, dict]) -> list[report.Figure]:
    """The UMAP of each model's training latents, bare and with the traversals drawn through it."""
    return [
        report.Figure(
            "Latent space (UMAP of the training latents)",
            plots.paths_over_points(
                {kind.upper(): (v["embedding"], v["labels"], {}) for kind, v in latents.items()},
                "UMAP of the posterior means of the training points, coloured by moon",
            ),
        ),
        report.Figure(
            "Latent traversals in UMAP space",
            plots.paths_over_points(
                {kind.upper(): (v["embedding"], v["labels"], v["paths"]) for kind, v in latents.items()},
                "The data-space traversals' latents, through the UMAP fitted on the training latents",
            ),
            "The traversal's latents do not depend on the label, so the CVAE has one panel.",
        ),
    ]


def training_curves_figure(histories: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]) -> report.Figure:
    return report.Figure("Training curves", plots.training_curves(histories, "Training curves of the models' runs"))
