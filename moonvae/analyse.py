"""`moonvae analyse`: measure the registered models, check the study's findings, write one report.

Loads each model (by default `models:/moonvae-{vae,cvae}@champion`), evaluates it
on its own test split and on fresh draws (`evaluate`), draws the study's figures
(`plots`), checks the nine findings against the tuning studies (`findings`), and
logs it all to one MLflow run named `analyse`: metrics, `report.html` and the
findings as CSV.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from moonvae import data as moons
from moonvae import evaluate, findings, plots, report, search, tracking
from moonvae.config import DataConfig, RunConfig
from moonvae.models import VAE, LatentBank, traversal_latents
from moonvae.train import evaluate as loss_terms

KINDS = ("vae", "cvae")
DEFAULT_MODELS = {kind: f"models:/moonvae-{kind}@champion" for kind in KINDS}
GRID_SIZES = (100, 1000, 10000)  # the study's data figure
GRID_NOISES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
TRAVERSAL_STEPS = 10
TRAVERSAL_DIMS = 8  # dimensions drawn per traversal: those whose sweep moves the output most
CURVE_METRICS = ("train_loss", "val_mse", "val_kl")
UMAP_NEIGHBOURS, UMAP_MIN_DIST = 15, 0.1  # as in the study


class AnalyseError(RuntimeError):
    """Something the user can fix (a model that cannot be loaded, a wrong kind); the message says what."""


@dataclass
class Subject:
    """One model under analysis, with the data it was trained on."""

    kind: str
    reference: str  # what the user gave: a model URI or a run id
    network: VAE
    config: RunConfig
    bank: LatentBank  # q(z|x) of the training split, stored with the model
    data: moons.MoonsData
    run_id: str | None  # the run that logged the model, for its training curves


@dataclass
class Analysis:
    metrics: dict[str, float] = field(default_factory=dict)
    figures: list[report.Figure] = field(default_factory=list)
    findings: list[findings.Finding] = field(default_factory=list)


def load_subject(kind: str, reference: str, cache_dir: Path = moons.DEFAULT_CACHE_DIR) -> Subject:
    """Load a logged model and rebuild its data split; refuse a model of the other kind."""
    try:
        python_model, run_id = tracking.load_python_model(reference)
    except Exception as error:  # MLflow raises several types for a URI that resolves to nothing
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AnalyseError(f"cannot load the {kind} model {reference!r}: {message}") from error
    network, config = python_model.network, python_model.config
    if config.model.model != kind:
        raise AnalyseError(f"{reference!r} is a {config.model.model} model, not a {kind}")
    return Subject(
        kind, reference, network.eval(), config, python_model.bank, moons.load(config.data, cache_dir), run_id
    )


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


def model_figures(subject: Subject, samples: evaluate.Samples, seed: int) -> tuple[list[report.Figure], dict]:
    """Samples and reconstructions, traversals in data space, and what UMAP needs for the latent figures."""
    name = subject.kind.upper()
    reference = samples.reference
    labels = reference.y.numpy()
    with torch.inference_mode():
        reconstruction = subject.network(reference.x, reference.y)[0].numpy()
    figures = [
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
    conditions: tuple[int | None, ...] = (0, 1) if subject.network.n_conditions else (None,)
    top, paths = traversal_paths(subject.network, subject.bank, conditions)
    train = subject.data.train
    figures.append(
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
            f"The {len(top)} dimensions (of {subject.bank.mean.shape[1]}) whose sweep moves the output most.",
        )
    )
    reducer = fit_umap(subject.bank.mean.numpy(), seed)
    first = next(iter(paths.values()))
    umap_paths = {dim: reducer.transform(latents) for dim, (latents, _) in first.items()}
    return figures, {"embedding": reducer.embedding_, "labels": train.y.numpy(), "paths": umap_paths}


def sample_quality_figure(metrics: Mapping[str, float], kinds: list[str]) -> report.Figure:
    mmd = {source: {kind: metrics[f"{kind}_{source}_mmd"] for kind in kinds} for source in ("prior", "posterior")} | {
        "real vs real (floor)": {kind: metrics[f"{kind}_mmd_floor"] for kind in kinds}
    }
    return report.Figure(
        "Sample quality: MMD to fresh real data",
        plots.grouped_bars(mmd, "Squared MMD (RBF, median-heuristic bandwidth) to fresh real data", "MMD^2"),
        "The floor is the same statistic between two independent real samples of the same size: "
        "a perfect model reaches it.",
    )


def analyse_models(
    subjects: list[Subject], mlflow_client: MlflowClient, n_eval: int, seed: int
) -> tuple[dict[str, float], list[report.Figure], dict[str, float]]:
    """Metrics (prefixed by model kind), figures, and the latent moon accuracy of each model."""
    metrics: dict[str, float] = {}
    figures: list[report.Figure] = []
    latents: dict[str, dict] = {}
    latent_accuracy: dict[str, float] = {}
    for subject in subjects:
        values, samples = evaluate.evaluate_model(
            subject.network, subject.bank, subject.data, subject.config.data, n_eval, seed
        )
        latent_accuracy[subject.kind] = evaluate.latent_moon_accuracy(subject.bank, seed)
        values["latent_moon_accuracy"] = latent_accuracy[subject.kind]
        metrics |= {f"{subject.kind}_{key}": value for key, value in values.items()}
        model_figs, latents[subject.kind] = model_figures(subject, samples, seed)
        figures += model_figs
    floors = {metrics[f"{s.kind}_mmd_floor"] for s in subjects}
    if len(floors) == 1:  # all models share one data generator: one floor for all
        metrics["mmd_floor"] = floors.pop()
    kinds = [s.kind for s in subjects]
    figures.append(sample_quality_figure(metrics, kinds))
    figures.append(
        report.Figure(
            "Latent space (UMAP of the training latents)",
            plots.paths_over_points(
                {kind.upper(): (v["embedding"], v["labels"], {}) for kind, v in latents.items()},
                "UMAP of the posterior means of the training points, coloured by moon",
            ),
        )
    )
    figures.append(
        report.Figure(
            "Latent traversals in UMAP space",
            plots.paths_over_points(
                {kind.upper(): (v["embedding"], v["labels"], v["paths"]) for kind, v in latents.items()},
                "The data-space traversals' latents, through the UMAP fitted on the training latents",
            ),
            "The traversal's latents do not depend on the label, so the CVAE has one panel.",
        )
    )
    histories = {
        f"{s.kind} ({s.run_id[:8]})": tracking.metric_histories(mlflow_client, s.run_id, CURVE_METRICS)
        for s in subjects
        if s.run_id
    }
    if any(histories.values()):
        figures.append(
            report.Figure("Training curves", plots.training_curves(histories, "Training curves of the models' runs"))
        )
    return metrics, figures, latent_accuracy


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


def study_figures(studies: Mapping[str, findings.StudyTable]) -> list[report.Figure]:
    """The evidence behind the findings, where the studies exist."""
    figures = []
    importances = {
        name: table.importances
        for name in (findings.study_name(m, "basic") for m in KINDS)
        if (table := studies.get(name)) is not None and table.importances
    }
    if importances:
        figures.append(
            report.Figure(
                "Parameter importances (basic studies)",
                plots.grouped_bars(importances, "fANOVA importance of each searched parameter", "importance"),
                "Findings 1-2: which parameters explain the best validation MSE.",
            )
        )
    basic = {
        name: trials
        for name, trials in _trials_of_space(studies, "basic").items()
        if {"decoder_hidden", "latent_dim"} <= set(trials.columns)
    }
    if basic:
        figures.append(
            report.Figure(
                "Best validation MSE by decoder width and latent size",
                plots.heatmaps(
                    {name: _pivot(trials, "decoder_hidden", "latent_dim") for name, trials in basic.items()},
                    "Median best validation MSE (basic studies)",
                    "decoder_hidden",
                    "latent_dim",
                    "MSE",
                ),
                "Finding 2: do both have to grow together?",
            )
        )
    data = _trials_of_space(studies, "data")
    if data:
        figures.append(
            report.Figure(
                "Best validation MSE across noise and size (data studies)",
                plots.heatmaps(
                    {name: _pivot(trials, "noise", "n_samples") for name, trials in data.items()},
                    "Best validation MSE (data studies)",
                    "noise",
                    "n_samples",
                    "MSE",
                ),
                "Findings 6-7.",
            )
        )
    probabilistic = _trials_of_space(studies, "probabilistic")
    for metric in ("value", "test_kl"):
        named = {
            name: (trials["eps_w"].to_numpy(), trials["beta"].to_numpy(), trials[metric].to_numpy())
            for name, trials in probabilistic.items()
            if metric in trials
        }
        if named:
            label = "best val MSE" if metric == "value" else "test KL"
            figures.append(
                report.Figure(
                    f"{label} across eps_w and beta (probabilistic studies)",
                    plots.log_scatter(named, f"{label} across eps_w and beta", "eps_w", "beta", label),
                    "Finding 8.",
                )
            )
    return figures


def _trials_of_space(studies: Mapping[str, findings.StudyTable], space: str) -> dict[str, pd.DataFrame]:
    """Each model's trials in `space`, by study name, for the studies that have any."""
    return {
        name: table.trials
        for name in (findings.study_name(model, space) for model in KINDS)
        if (table := studies.get(name)) is not None and not table.trials.empty
    }


def _pivot(trials: pd.DataFrame, columns: str, rows: str) -> tuple[list, list, np.ndarray]:
    table = trials.pivot_table(index=rows, columns=columns, values="value", aggfunc="median")
    return list(table.columns), list(table.index), table.to_numpy()


def default_storage() -> str | None:
    """The tuner's default Optuna storage if its file exists (reading must not create an empty database)."""
    url = search.default_storage()
    return url if Path(url.removeprefix("sqlite:///")).exists() else None


TRIAL_METRICS = ("test_mse", "test_kl", "best_val_mse")  # read from each trial's MLflow run


def add_run_metrics(trials: pd.DataFrame, mlflow_client: MlflowClient) -> pd.DataFrame:
    """Fill each trial's final metrics from its MLflow run (trials whose run is gone keep what they have)."""
    if search.RUN_ID_ATTR not in trials:
        return trials
    trials = trials.copy()
    for index, run_id in trials[search.RUN_ID_ATTR].items():
        metrics = tracking.run_metrics(mlflow_client, run_id) if isinstance(run_id, str) else {}
        for key in TRIAL_METRICS:
            if key in metrics:
                trials.loc[index, key] = metrics[key]
    return trials


def add_train_mse(trials: pd.DataFrame, cache_dir: Path = moons.DEFAULT_CACHE_DIR) -> pd.DataFrame:
    """Each trial's MSE on its own training split, from its logged model: over-fitting is test minus train."""
    if search.MODEL_ID_ATTR not in trials:
        return trials
    trials = trials.copy()
    for index, model_id in trials[search.MODEL_ID_ATTR].items():
        if not isinstance(model_id, str):
            continue
        try:
            python_model, _ = tracking.load_python_model(f"models:/{model_id}")
        except Exception:  # a deleted model: this trial simply has no train MSE
            continue
        split = moons.load(python_model.config.data, cache_dir).train
        trials.loc[index, "train_mse"] = loss_terms(python_model.network.eval(), split).mse.item()
    return trials


def load_studies(
    storage: str | None,
    prefix: str = "moonvae",
    mlflow_client: MlflowClient | None = None,
    cache_dir: Path = moons.DEFAULT_CACHE_DIR,
) -> dict[str, findings.StudyTable]:
    """The six studies that exist in `storage`: completed trials with their runs' metrics, fANOVA importances.

    With a client, each trial's test MSE/KL come from its MLflow run, and the data
    studies' trials get their training-split MSE from their logged models (finding 6).
    """
    if not storage:
        return {}
    names = {findings.study_name(model, space, prefix): (model, space) for model in KINDS for space in search.SPACES}
    tables = {}
    for name, (trials_list, importances) in search.read_studies(storage, list(names)).items():
        model, space = names[name]
        trials = findings.trials_frame(trials_list)
        if mlflow_client is not None:
            trials = add_run_metrics(trials, mlflow_client)
            if space == "data":
                trials = add_train_mse(trials, cache_dir)
        tables[findings.study_name(model, space)] = findings.StudyTable(trials, importances)
    return tables


def metrics_table(metrics: Mapping[str, float]) -> pd.DataFrame:
    """Flat: one row per logged metric, as in MLflow."""
    return pd.DataFrame({"metric": list(metrics), "value": [float(v) for v in metrics.values()]})


def metrics_by_model(metrics: Mapping[str, float]) -> pd.DataFrame:
    """One row per metric, one column per model, for reading side by side (shared metrics in every column)."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        kind, _, name = key.partition("_")
        if kind in KINDS:
            rows.setdefault(name, {})[kind] = float(value)
    for key, value in metrics.items():
        if key.partition("_")[0] not in KINDS:
            rows[key] = {kind: float(value) for kind in KINDS if any(k.startswith(f"{kind}_") for k in metrics)}
    frame = pd.DataFrame.from_dict(rows, orient="index").reset_index(names="metric")
    return frame.astype(object).where(frame.notna(), "")


INTRO = (
    "Metrics are computed on each model's own test split and on fresh draws from the data generator (seeds "
    "training never used). MMD: squared maximum mean discrepancy, RBF kernel with the median-heuristic bandwidth "
    "of the real points; mmd_floor is the same statistic between two independent real samples of the same size. "
    "C2ST: held-out accuracy of a k-NN classifier telling real from generated points (0.5 = indistinguishable). "
    "Conditional accuracy: share of CVAE samples drawn for moon k that a classifier trained on real data puts "
    "on moon k. 'prior' samples decode z ~ N(0, I); 'posterior' samples decode the aggregate posterior of the "
    "training points."
)


def load_subjects(references: Mapping[str, str], cache_dir: Path = moons.DEFAULT_CACHE_DIR) -> list[Subject]:
    """Every model to analyse ({kind: URI or run id}), loaded before any run starts so bad input leaves none."""
    return [load_subject(kind, reference, cache_dir) for kind, reference in references.items()]


def analyse(
    subjects: list[Subject],
    output: Path,
    *,
    mlflow_client: MlflowClient,
    run_id: str,
    storage: str | None = None,
    study_prefix: str = "moonvae",
    n_eval: int = evaluate.N_EVAL,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
) -> Analysis:
    """Analyse the loaded models, log to `run_id` and write the report to `output`."""
    logging.getLogger("numba").setLevel(logging.WARNING)
    tracking.log_params(
        mlflow_client, run_id, {**{s.kind: s.reference for s in subjects}, "n_eval": n_eval, "seed": seed}
    )
    tracking.set_tags(
        mlflow_client,
        run_id,
        {f"moonvae.{s.kind}_run_id": s.run_id for s in subjects if s.run_id},
    )
    progress("evaluating models, fitting UMAP")
    result = Analysis()
    result.figures.append(data_figure(seed))
    metrics, figures, latent_accuracy = analyse_models(subjects, mlflow_client, n_eval, seed)
    result.metrics, result.figures = metrics, result.figures + figures
    progress(f"reading studies from {storage}" if storage else "no Optuna storage: findings need `tune` first")
    studies = load_studies(storage, study_prefix, mlflow_client)
    result.findings = findings.all_findings(studies, latent_accuracy)
    result.figures += study_figures(studies)
    findings_table = findings.findings_frame(result.findings)
    tables = [
        report.Table("Metrics", metrics_by_model(result.metrics), "Logged to the run as <model>_<metric>."),
        report.Table(
            "The study's findings, checked",
            findings_table,
            f"Studies found: {', '.join(sorted(studies)) or 'none'}.",
        ),
    ]
    progress(f"writing {output}")
    report.write(output, "moonvae: analysis of the registered models", INTRO, tables, result.figures)
    with tracking.MetricBuffer(mlflow_client, run_id) as buffer:
        buffer.add(result.metrics)
    with tempfile.TemporaryDirectory() as tmp:  # artifact names fixed, whatever the user's --output
        shutil.copyfile(output, Path(tmp) / "report.html")
        findings_table.to_csv(Path(tmp) / "findings.csv", index=False)
        metrics_table(result.metrics).to_csv(Path(tmp) / "metrics.csv", index=False)
        for name in ("report.html", "findings.csv", "metrics.csv"):
            tracking.log_artifact(mlflow_client, run_id, Path(tmp) / name)
    return result
