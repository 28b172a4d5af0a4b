"""The registered models' sampling sources, side by side: what `analyse` reports about generation.

Every alias of moonvae-vae and moonvae-cvae (champion, generator, best-*) is loaded
and each source its model holds judged with the full protocol (quality.FULL_SETS sets
of 2000 points, C2ST, copying, spacing and on-moon on the first FULL_CHECK_SETS) on
samples and references drawn from analyse's seed, not the validation seed the runs
chose on. Aliases on one version are surveyed once. Beside
them, an exact sampler at each noise level: what ideal scores. Every score comes with
its standard error over the sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from moonvae.analysis import figures, report
from moonvae.config import RunConfig
from moonvae.core import data as moons
from moonvae.core.models import VAE, LatentBank
from moonvae.sampling import distribution, quality, sources
from moonvae.sampling.sources import Judgement
from moonvae.serving import loading
from moonvae.tracking import names, registry
from moonvae.tracking.runs import Client

FIGURE_POINTS = 1000  # samples per source in a figure: enough to see the shape, light in the report
EXACT = "exact sampler"  # the reference row's model


@dataclass
class Survey:
    """One model's sources, judged with the full protocol, and samples of each for its figure."""

    kind: str
    label: str  # how the report names it: its aliases (`vae@champion,generator`) or the reference given
    run_id: str | None
    noise: float
    default_source: str  # what the model samples from when asked for no source: chosen when it was logged
    judgement: Judgement
    samples: dict[str, tuple[np.ndarray, np.ndarray]]  # panel title -> points, requested moons


def survey(
    kind: str,
    label: str,
    network: VAE,
    bank: LatentBank,
    mixture: dict[str, torch.Tensor] | None,
    default_source: str,
    config: RunConfig,
    train_x: torch.Tensor,
    run_id: str | None,
    *,
    seed: int,
) -> Survey:
    """Every source the model holds, judged with FULL_SETS sets on references from `seed`, and drawn for a figure."""
    noise = config.data.noise
    options = dict(sets=quality.FULL_SETS, check_sets=quality.FULL_CHECK_SETS, seed=seed, target_error=None)
    judgement = sources.judge_sources(network, bank, mixture, train_x, noise, **options)
    draws = distribution.rng(quality.SAMPLE_STREAM, seed)
    exact, labels = distribution.exact_moons(FIGURE_POINTS, noise, draws)
    requested = labels if network.n_conditions else None
    shown = labels.numpy() if network.n_conditions else np.zeros(FIGURE_POINTS, dtype=int)
    samples = {"exact draws": (exact.numpy(), labels.numpy())}
    for source, sample in sources.samplers(network, bank, mixture).items():
        samples[source] = (sample(FIGURE_POINTS, draws, requested), shown)
    return Survey(kind, label, run_id, noise, default_source, judgement, samples)


def registered(
    mlflow_client: Client,
    kinds: list[str],
    *,
    seed: int,
    cache_dir: Path = moons.DEFAULT_CACHE_DIR,
    surveyed: Mapping[str, Survey] | None = None,
) -> list[Survey]:
    """Every registered alias of the kinds' models, surveyed; a model already in `surveyed` (by run id) is reused."""
    found = []
    for kind in kinds:
        name = names.model_name(kind)
        by_version: dict[str, list[str]] = {}
        for alias, version in registry.registered_aliases(mlflow_client, name).items():
            by_version.setdefault(version, []).append(alias)
        for aliases in by_version.values():
            label = f"{kind}@{','.join(aliases)}"
            python_model, run_id = loading.load_python_model(names.model_uri(kind, aliases[0]))
            if surveyed and run_id in surveyed:
                found.append(replace(surveyed[run_id], label=label))
                continue
            config = python_model.config
            train = moons.load(config.data, cache_dir).train
            mixture = python_model.mixture  # None in models logged before mixtures
            found.append(
                survey(
                    kind,
                    label,
                    python_model.network.eval(),
                    python_model.bank,
                    mixture,
                    python_model.default_source,
                    config,
                    train.x,
                    run_id,
                    seed=seed,
                )
            )
    return found


def exact_scores(noise: float, train_x: np.ndarray, seed: int) -> dict[str, float]:
    """An exact sampler's scores with the full protocol: about 1, 0.5, 1, 1 and the Bayes on-moon accuracy."""
    sampler = quality.exact_sampler(noise)
    options = dict(sets=quality.FULL_SETS, check_sets=quality.FULL_CHECK_SETS, seed=seed, conditional=True)
    return quality.judge(sampler, train_x, noise, **options)


def alias_metrics(entries: list[Survey]) -> dict[str, float]:
    """`<kind>_<alias>_<source>_<score>` for every alias: the MLflow compare view lines them up."""
    values = {}
    for entry in entries:
        for alias in entry.label.partition("@")[2].split(","):
            values |= {f"{entry.kind}_{alias}_{key}": value for key, value in entry.judgement.metrics().items()}
    return values


def table(entries: list[Survey], exact: Mapping[float, dict[str, float]]) -> pd.DataFrame:
    """One row per model and source (the model's default marked), an exact sampler's first; every score with its
    standard error (`_se`) and the sets behind them."""
    rows = [_row(EXACT, f"exact draws (noise {noise:g})", scores, False) for noise, scores in exact.items()]
    for entry in entries:
        for source, scores in entry.judgement.scores.items():
            rows.append(_row(entry.label, source, scores, source == entry.default_source))
    return pd.DataFrame(rows)


def _row(model: str, source: str, scores: dict[str, float], default: bool) -> dict[str, object]:
    row: dict[str, object] = {"model": model, "source": source, "default": "yes" if default else ""}
    row["sets"], row["check_sets"] = scores["sets"], scores["check_sets"]
    for score in quality.SCORES:  # on_moon: conditional samplers only
        row[score], row[f"{score}_se"] = scores.get(score, ""), scores.get(f"{score}_se", "")
    return row


def report_figures(entries: list[Survey]) -> list[report.Figure]:
    """The MMD summary of every model and source, with its standard error, and each model's samples by source."""
    summaries: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, float]] = {}
    for entry in entries:
        for source, scores in entry.judgement.scores.items():
            summaries.setdefault(source, {})[entry.label] = scores["mmd_summary"]
            errors.setdefault(source, {})[entry.label] = scores["mmd_summary_se"]
    drawn = [figures.sources_figure(summaries, errors)] if summaries else []
    return drawn + [figures.source_samples_figure(entry.label, entry.samples) for entry in entries]
