"""`moonvae analyse`: measure the registered models, check the study's findings, write one report.

Loads each model (by default `models:/moonvae-{vae,cvae}@champion`), evaluates it
on its own test split and on fresh draws (`evaluate`), draws the study's figures
(`figures`), checks the nine findings against the tuning studies (`findings`),
found by what they are (model and space), whatever their names, and logs it all
to one MLflow run named `analyse`: metrics, `report.html` and the findings as CSV.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from moonvae import data as moons
from moonvae import evaluate, figures, findings, metrics, report, studies, tracking
from moonvae.config import MODELS, RunConfig
from moonvae.findings import StudyTable
from moonvae.models import VAE, LatentBank
from moonvae.tracking import Client
from moonvae.train import evaluate as loss_terms

CURVE_METRICS = ("train_loss", "val_mse", "val_kl")
TRIAL_METRICS = ("test_mse", "test_kl", "best_val_mse", "train_mse", "active_units", "mutual_info")  # from runs


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
class Studies:
    """The studies the analysis read, by (model, space): their tables, and the names to cite them by."""

    tables: dict[tuple[str, str], StudyTable] = field(default_factory=dict)
    names: dict[tuple[str, str], str] = field(default_factory=dict)

    def cited(self) -> str:
        return ", ".join(
            f"{self.names[key]} ({key[0]} {key[1]}, {len(self.tables[key].trials)} complete trials)"
            for key in sorted(self.tables)
        )


@dataclass
class Analysis:
    metrics: dict[str, float] = field(default_factory=dict)
    figures: list[report.Figure] = field(default_factory=list)
    findings: list[findings.Finding] = field(default_factory=list)
    studies: Studies = field(default_factory=Studies)


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


def load_subjects(references: Mapping[str, str], cache_dir: Path = moons.DEFAULT_CACHE_DIR) -> list[Subject]:
    """Every model to analyse ({kind: URI or run id}), loaded before any run starts so bad input leaves none."""
    return [load_subject(kind, reference, cache_dir) for kind, reference in references.items()]


def analyse_models(
    subjects: list[Subject], mlflow_client: Client, n_eval: int, seed: int
) -> tuple[dict[str, float], list[report.Figure], dict[str, np.ndarray]]:
    """Metrics (prefixed by model kind), figures, and the per-fold latent moon accuracies of each model."""
    values: dict[str, float] = {}
    drawn: list[report.Figure] = []
    latents: dict[str, dict] = {}
    latent_accuracy: dict[str, np.ndarray] = {}  # per-fold, for finding 9's interval
    for subject in subjects:
        own, samples = evaluate.evaluate_model(
            subject.network, subject.bank, subject.data, subject.config.data, n_eval, seed
        )
        latent_accuracy[subject.kind] = evaluate.latent_moon_folds(subject.bank, seed)
        own["latent_moon_accuracy"] = float(latent_accuracy[subject.kind].mean())
        values |= {f"{subject.kind}_{key}": value for key, value in own.items()}
        model_figures, latents[subject.kind] = figures.model_figures(
            subject.kind, subject.network, subject.bank, subject.data.train, samples, seed
        )
        drawn += model_figures
    floors = {values[f"{s.kind}_mmd_floor"] for s in subjects}
    if len(floors) == 1:  # all models share one data generator: one floor for all
        values["mmd_floor"] = floors.pop()
    drawn.append(figures.sample_quality_figure(values, [s.kind for s in subjects]))
    drawn += figures.latent_figures(latents)
    histories = {
        f"{s.kind} ({s.run_id[:8]})": tracking.metric_histories(mlflow_client, s.run_id, CURVE_METRICS)
        for s in subjects
        if s.run_id
    }
    if any(histories.values()):
        drawn.append(figures.training_curves_figure(histories))
    return values, drawn, latent_accuracy


def add_run_metrics(trials: pd.DataFrame, mlflow_client: Client) -> pd.DataFrame:
    """Fill each trial's final metrics from its MLflow run (trials whose run is gone keep what they have)."""
    if studies.RUN_ID_ATTR not in trials:
        return trials
    trials = trials.copy()
    for index, run_id in trials[studies.RUN_ID_ATTR].items():
        run_metrics = tracking.run_metrics(mlflow_client, run_id) if isinstance(run_id, str) else {}
        for key in TRIAL_METRICS:
            if key in run_metrics:
                trials.loc[index, key] = run_metrics[key]
    return trials


def add_train_mse(trials: pd.DataFrame, cache_dir: Path = moons.DEFAULT_CACHE_DIR) -> pd.DataFrame:
    """Each trial's MSE on its own training split, from its logged model where the trial did not record it."""
    if studies.MODEL_ID_ATTR not in trials:
        return trials
    trials = trials.copy()
    recorded = trials["train_mse"] if "train_mse" in trials else pd.Series(float("nan"), index=trials.index)
    for index, model_id in trials[studies.MODEL_ID_ATTR].items():
        if not isinstance(model_id, str) or pd.notna(recorded[index]):
            continue
        try:
            python_model, _ = tracking.load_python_model(f"models:/{model_id}")
        except Exception:  # a deleted model: this trial simply has no train MSE
            continue
        split = moons.load(python_model.config.data, cache_dir).train
        trials.loc[index, "train_mse"] = loss_terms(python_model.network.eval(), split).mse.item()
    return trials


def load_studies(
    storage: str, mlflow_client: Client | None = None, cache_dir: Path = moons.DEFAULT_CACHE_DIR
) -> Studies:
    """The moonvae studies in `storage`, one per model and space, with their trials' metrics.

    With a client, each trial's test MSE/KL come from its MLflow run, and the data
    studies' trials get their training-split MSE from their logged models (finding 6).
    """
    found = Studies()
    for (model, space), (name, table) in studies.read_tables(storage).items():
        trials = table.trials
        if mlflow_client is not None:
            trials = add_run_metrics(trials, mlflow_client)
            if space in ("data", "data-seeds"):
                trials = add_train_mse(trials, cache_dir)
        found.tables[(model, space)] = StudyTable(trials, table.importances)
        found.names[(model, space)] = name
    return found


def metrics_table(values: Mapping[str, float]) -> pd.DataFrame:
    """Flat: one row per logged metric, as in MLflow."""
    return pd.DataFrame({"metric": list(values), "value": [float(v) for v in values.values()]})


def metrics_by_model(values: Mapping[str, float]) -> pd.DataFrame:
    """One row per metric, one column per model, for reading side by side (shared metrics in every column)."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        kind, _, name = key.partition("_")
        if kind in MODELS:
            rows.setdefault(name, {})[kind] = float(value)
    for key, value in values.items():
        if key.partition("_")[0] not in MODELS:
            rows[key] = {kind: float(value) for kind in MODELS if any(k.startswith(f"{kind}_") for k in values)}
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


def analyse(
    subjects: list[Subject],
    output: Path,
    *,
    mlflow_client: Client,
    run_id: str,
    storage: str | None = None,
    n_eval: int = metrics.N_EVAL,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
) -> Analysis:
    """Analyse the loaded models, log to `run_id` and write the report to `output`."""
    logging.getLogger("numba").setLevel(logging.WARNING)
    tracking.log_params(
        mlflow_client, run_id, {**{s.kind: s.reference for s in subjects}, "n_eval": n_eval, "seed": seed}
    )
    tracking.set_tags(mlflow_client, run_id, {f"moonvae.{s.kind}_run_id": s.run_id for s in subjects if s.run_id})
    progress("evaluating models, fitting UMAP")
    result = Analysis()
    result.figures.append(figures.data_figure(seed))
    values, model_figures, latent_accuracy = analyse_models(subjects, mlflow_client, n_eval, seed)
    result.metrics, result.figures = values, result.figures + model_figures
    progress(f"reading studies from {storage}" if storage else "no Optuna storage: findings need `tune` first")
    result.studies = load_studies(storage, mlflow_client) if storage else Studies()
    tracking.set_tags(mlflow_client, run_id, {"moonvae.studies": ",".join(sorted(result.studies.names.values()))})
    result.findings = findings.all_findings(result.studies.tables, latent_accuracy)
    result.figures += figures.study_figures(result.studies.tables, result.studies.names)
    findings_table = findings.findings_frame(result.findings)
    tables = [
        report.Table("Metrics", metrics_by_model(result.metrics), "Logged to the run as <model>_<metric>."),
        report.Table(
            "The study's findings, checked",
            findings_table,
            f"Studies read: {result.studies.cited() or 'none'}.",
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
