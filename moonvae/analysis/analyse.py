"""`moonvae analyse`: measure the registered models, check the study's findings, write one report.

Loads each model (by default `models:/moonvae-{vae,cvae}@champion`), evaluates its
reconstructions on its own test split and on fresh draws (`reconstruction`) and its
samples from every source with the full protocol (`aliases`, `quality`), compares the
sources of every registered alias side by side, draws the study's figures (`figures`),
checks the nine findings against the tuning studies (`findings`), found by what they
are (model and space), whatever their names, and logs it all to one MLflow run named
`analyse`: metrics, `report.html`, the findings and the sources as CSV.
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

from moonvae import metrics
from moonvae.analysis import aliases, figures, findings, reconstruction, report
from moonvae.analysis.verdicts import Finding
from moonvae.config import MODELS, RunConfig, SpaceName
from moonvae.core import data as moons
from moonvae.core.models import VAE, LatentBank
from moonvae.core.train import loss_terms
from moonvae.sampling import quality
from moonvae.serving import loading
from moonvae.tracking import names, runs
from moonvae.tracking.runs import Client
from moonvae.tuning import studies
from moonvae.tuning.tables import StudyTable

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
    mixture: dict | None = None  # the latent mixture the model samples from (None: logged before mixtures)
    default_source: str = "posterior"  # what it samples from when asked for no source


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
    findings: list[Finding] = field(default_factory=list)
    studies: Studies = field(default_factory=Studies)


def load_subject(kind: str, reference: str, cache_dir: Path = moons.DEFAULT_CACHE_DIR) -> Subject:
    """Load a logged model and rebuild its data split; refuse a model of the other kind."""
    try:
        python_model, run_id = loading.load_python_model(reference)
    except Exception as error:  # MLflow raises several types for a URI that resolves to nothing
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AnalyseError(f"cannot load the {kind} model {reference!r}: {message}") from error
    network, config = python_model.network, python_model.config
    if config.model.model != kind:
        raise AnalyseError(f"{reference!r} is a {config.model.model} model, not a {kind}")
    data = moons.load(config.data, cache_dir)
    mixture, default = python_model.mixture, python_model.default_source
    return Subject(kind, reference, network.eval(), config, python_model.bank, data, run_id, mixture, default)


def load_subjects(references: Mapping[str, str], cache_dir: Path = moons.DEFAULT_CACHE_DIR) -> list[Subject]:
    """Every model to analyse ({kind: URI or run id}), loaded before any run starts so bad input leaves none."""
    return [load_subject(kind, reference, cache_dir) for kind, reference in references.items()]


@dataclass
class Measured:
    """What `analyse_models` found: metrics prefixed by model kind, figures, the per-fold latent moon
    accuracies (finding 9's interval) and each model's sources, surveyed (to compare with the registered ones)."""

    metrics: dict[str, float]
    figures: list[report.Figure]
    latent_accuracy: dict[str, np.ndarray]
    surveyed: list[aliases.Survey]


def analyse_models(
    subjects: list[Subject],
    mlflow_client: Client,
    n_eval: int,
    seed: int,
    cache_dir: Path = moons.DEFAULT_CACHE_DIR,
) -> Measured:
    """Each model's reconstructions and its samples from every source (the full protocol), with their figures."""
    values: dict[str, float] = {}
    drawn: list[report.Figure] = []
    latents: dict[str, dict] = {}
    latent_accuracy: dict[str, np.ndarray] = {}
    surveyed = []
    for subject in subjects:
        own, samples = reconstruction.evaluate_model(
            subject.network, subject.bank, subject.data, subject.config.data, n_eval, seed
        )
        latent_accuracy[subject.kind] = reconstruction.latent_moon_folds(subject.bank, seed)
        own["latent_moon_accuracy"] = float(latent_accuracy[subject.kind].mean())
        sampled = aliases.survey(
            subject.kind,
            subject.reference,
            subject.network,
            subject.bank,
            subject.mixture,
            subject.default_source,
            subject.config,
            subject.data.train.x,
            subject.run_id,
            seed=seed,
        )
        surveyed.append(sampled)
        own |= sampled.judgement.metrics()
        values |= {f"{subject.kind}_{key}": value for key, value in own.items()}
        model_figures, latents[subject.kind] = figures.model_figures(
            subject.kind, subject.network, subject.bank, subject.data.train, samples, seed
        )
        drawn += model_figures
    drawn += figures.latent_figures(latents)
    histories = {
        f"{s.kind} ({s.run_id[:8]})": runs.metric_histories(mlflow_client, s.run_id, CURVE_METRICS)
        for s in subjects
        if s.run_id
    }
    if any(histories.values()):
        drawn.append(figures.training_curves_figure(histories))
    return Measured(values, drawn, latent_accuracy, surveyed)


def compare_sources(
    subjects: list[Subject],
    measured: Measured,
    mlflow_client: Client,
    seed: int,
    cache_dir: Path = moons.DEFAULT_CACHE_DIR,
) -> tuple[dict[str, float], pd.DataFrame, list[report.Figure]]:
    """Every registered alias of the analysed kinds (and any analysed model that is none), source by source.

    Returns the alias metrics (`vae_generator_mixture_mmd_summary`, ...), the table (an exact
    sampler first) and the figures.
    """
    own = {entry.run_id: entry for entry in measured.surveyed if entry.run_id}
    kinds = [s.kind for s in subjects]
    entries = aliases.registered(mlflow_client, kinds, seed=seed, cache_dir=cache_dir, surveyed=own)
    found = {entry.run_id for entry in entries}
    entries += [entry for entry in measured.surveyed if entry.run_id not in found]
    trains = {subject.config.data.noise: subject.data.train.x.numpy() for subject in subjects}
    exact = {noise: aliases.exact_scores(noise, train_x, seed) for noise, train_x in trains.items()}
    return aliases.alias_metrics(entries), aliases.table(entries, exact), aliases.report_figures(entries)


def add_run_metrics(trials: pd.DataFrame, mlflow_client: Client) -> pd.DataFrame:
    """Fill each trial's final metrics from its MLflow run (trials whose run is gone keep what they have)."""
    if studies.RUN_ID_ATTR not in trials:
        return trials
    trials = trials.copy()
    for index, run_id in trials[studies.RUN_ID_ATTR].items():
        run_metrics = runs.run_metrics(mlflow_client, run_id) if isinstance(run_id, str) else {}
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
            python_model, _ = loading.load_python_model(f"models:/{model_id}")
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
            if space in (SpaceName.DATA, SpaceName.DATA_SEEDS):
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
    "Reconstruction metrics are computed on each model's own test split and on fresh draws from the data generator "
    f"(seeds training never used). Sample quality is judged against the distribution make_moons discretises, with "
    f"the full protocol ({quality.FULL_SETS} sets of {quality.N_POINTS} points, the first {quality.FULL_CHECK_SETS} "
    "for c2st, copying, spacing and on_moon; every score is the mean over its sets, with its standard error, _se), "
    "for each source a model samples from: 'prior' decodes z ~ N(0, I), "
    "'posterior' the aggregate posterior of the training points, 'mixture' a Gaussian mixture fitted to the "
    "training latents. mmd_wide, mmd_mid, mmd_fine: a set's squared MMD to the distribution itself (in closed "
    "form, RBF kernels of width the median distance between real points, 2 x noise and noise / 2) over what an "
    "exact sampler scores in expectation, 1 at best; mmd_summary: their geometric mean, what decisions compare. "
    "c2st: held-out accuracy of a k-NN classifier telling samples from exact draws (0.5 = indistinguishable). "
    "copying: median distance from a sample to its nearest training point over the same for exact draws (< 1: "
    "copies). spacing: median distance between nearest samples over exact draws' (< 1: clumps). on_moon (CVAE): "
    "share of samples the Bayes classifier puts on the requested moon (an exact sampler: its accuracy, 0.991 at "
    "noise 0.15). The default source is the one each model chose when it was logged, on other samples."
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
    cache_dir: Path = moons.DEFAULT_CACHE_DIR,
) -> Analysis:
    """Analyse the loaded models and the registered aliases' sources, log to `run_id`, write the report to `output`."""
    logging.getLogger("numba").setLevel(logging.WARNING)
    runs.log_params(mlflow_client, run_id, {**{s.kind: s.reference for s in subjects}, "n_eval": n_eval, "seed": seed})
    runs.set_tags(mlflow_client, run_id, {names.run_id_tag(s.kind): s.run_id for s in subjects if s.run_id})
    progress("evaluating models, judging their samples, fitting UMAP")
    result = Analysis()
    result.figures.append(figures.data_figure(seed))
    measured = analyse_models(subjects, mlflow_client, n_eval, seed, cache_dir)
    result.metrics, result.figures = dict(measured.metrics), result.figures + measured.figures
    progress("judging the sources of every registered alias")
    alias_values, sources_table, sources_figures = compare_sources(subjects, measured, mlflow_client, seed, cache_dir)
    result.figures += sources_figures
    progress(f"reading studies from {storage}" if storage else "no Optuna storage: findings need `tune` first")
    result.studies = load_studies(storage, mlflow_client) if storage else Studies()
    runs.set_tags(mlflow_client, run_id, {names.STUDIES_TAG: ",".join(sorted(result.studies.names.values()))})
    result.findings = findings.all_findings(result.studies.tables, measured.latent_accuracy)
    result.figures += figures.study_figures(result.studies.tables, result.studies.names)
    findings_table = findings.findings_frame(result.findings)
    tables = [
        report.Table("Metrics", metrics_by_model(result.metrics), "Logged to the run as <model>_<metric>."),
        report.Table(
            "Sampling sources of the registered models",
            sources_table,
            f"Each alias of {', '.join(f'moonvae-{s.kind}' for s in subjects)}, each source it holds, judged with "
            f"the full protocol (sets of {quality.N_POINTS} points behind the mmd scores, check_sets behind the "
            "others; _se: the standard error of the score before it); an exact sampler first. Logged as "
            "<model>_<alias>_<source>_<score>.",
        ),
        report.Table(
            "The study's findings, checked",
            findings_table,
            f"Studies read: {result.studies.cited() or 'none'}.",
        ),
    ]
    progress(f"writing {output}")
    report.write(output, "moonvae: analysis of the registered models", INTRO, tables, result.figures)
    result.metrics |= alias_values
    with runs.MetricBuffer(mlflow_client, run_id) as buffer:
        buffer.add(result.metrics)
    with tempfile.TemporaryDirectory() as tmp:  # artifact names fixed, whatever the user's --output
        shutil.copyfile(output, Path(tmp) / "report.html")
        findings_table.to_csv(Path(tmp) / "findings.csv", index=False)
        metrics_table(result.metrics).to_csv(Path(tmp) / "metrics.csv", index=False)
        sources_table.to_csv(Path(tmp) / "sources.csv", index=False)
        for name in ("report.html", "findings.csv", "metrics.csv", "sources.csv"):
            runs.log_artifact(mlflow_client, run_id, Path(tmp) / name)
    return result
