"""The registered models' sampling sources, side by side: what `analyse` reports about generation.

Every alias of moonvae-vae and moonvae-cvae (champion, generator, best-*) is loaded
and each source its model holds judged with the full protocol (quality.FULL_SETS sets
of 2000 points) on references drawn from analyse's seed, not the validation seed the
runs chose on. Aliases on one version are judged once. Beside them, an exact sampler
at each noise level: what ideal scores.
"""

from __future__ import annotations

import math
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
from moonvae.sampling import quality, sources
from moonvae.sampling.sources import Judgement
from moonvae.serving import loading
from moonvae.tracking import names, registry
from moonvae.tracking.runs import Client

FIGURE_POINTS = 1000  # samples per source in a figure: enough to see the shape, light in the report
EXACT = "exact sampler"  # the reference row's model


@dataclass
class Judged:
    """One model's sources, judged with the full protocol, and samples of each for its figure."""

    kind: str
    label: str  # how the report names it: its aliases (`vae@champion,generator`) or the reference given
    run_id: str | None
    noise: float
    default_source: str  # what the model samples from when asked for no source: chosen when it was logged
    judgement: Judgement
    samples: dict[str, tuple[np.ndarray, np.ndarray]]  # panel title -> points, requested moons


def judge(
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
    cache_dir: Path,
) -> Judged:
    """Every source the model holds, judged with FULL_SETS sets on references from `seed`, and drawn for a figure."""
    noise = config.data.noise
    judgement = sources.judge_sources(
        network, bank, mixture, train_x, noise, sets=quality.FULL_SETS, seed=seed, floor_cache=cache_dir
    )
    draws = quality.generator(quality.SAMPLE_STREAM, seed)
    exact, labels = quality.exact_moons(FIGURE_POINTS, noise, draws)
    requested = labels if network.n_conditions else None
    shown = labels.numpy() if network.n_conditions else np.zeros(FIGURE_POINTS, dtype=int)
    samples = {"exact draws": (exact.numpy(), labels.numpy())}
    for source, sample in sources.samplers(network, bank, mixture).items():
        samples[source] = (sample(FIGURE_POINTS, draws, requested), shown)
    return Judged(kind, label, run_id, noise, default_source, judgement, samples)


def registered(
    mlflow_client: Client,
    kinds: list[str],
    *,
    seed: int,
    cache_dir: Path = moons.DEFAULT_CACHE_DIR,
    judged: Mapping[str, Judged] | None = None,
) -> list[Judged]:
    """Every registered alias of the kinds' models, judged; a model already in `judged` (by run id) is reused."""
    found = []
    for kind in kinds:
        name = names.model_name(kind)
        by_version: dict[str, list[str]] = {}
        for alias, version in registry.registered_aliases(mlflow_client, name).items():
            by_version.setdefault(version, []).append(alias)
        for aliases in by_version.values():
            label = f"{kind}@{','.join(aliases)}"
            python_model, run_id = loading.load_python_model(names.model_uri(kind, aliases[0]))
            if judged and run_id in judged:
                found.append(replace(judged[run_id], label=label))
                continue
            config = python_model.config
            train = moons.load(config.data, cache_dir).train
            mixture = python_model.mixture  # None in models logged before mixtures
            found.append(
                judge(
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
                    cache_dir=cache_dir,
                )
            )
    return found


def exact_scores(noise: float, train_x: np.ndarray, seed: int, cache_dir: Path) -> dict[str, float]:
    """An exact sampler's scores with the full protocol: about 1, 0.5, 1, 1 and the Bayes on-moon accuracy."""
    sampler = quality.exact_sampler(noise)
    return quality.judge(
        sampler, train_x, noise, sets=quality.FULL_SETS, seed=seed, conditional=True, floor_cache=cache_dir
    )


def alias_metrics(entries: list[Judged]) -> dict[str, float]:
    """`<kind>_<alias>_<source>_<score>` for every alias: the MLflow compare view lines them up."""
    values = {}
    for entry in entries:
        for alias in entry.label.partition("@")[2].split(","):
            values |= {f"{entry.kind}_{alias}_{key}": value for key, value in entry.judgement.metrics().items()}
    return values


def table(entries: list[Judged], exact: Mapping[float, dict[str, float]]) -> pd.DataFrame:
    """One row per model and source (the model's default marked), an exact sampler's first; mmd_ratio with its error."""
    rows = [_row(EXACT, f"exact draws (noise {noise:g})", scores, False) for noise, scores in exact.items()]
    for entry in entries:
        for source, scores in entry.judgement.scores.items():
            rows.append(_row(entry.label, source, scores, source == entry.default_source))
    return pd.DataFrame(rows)


def _row(model: str, source: str, scores: dict[str, float], default: bool) -> dict[str, object]:
    error = scores["mmd_ratio_std"] / math.sqrt(quality.FULL_SETS)
    return {
        "model": model,
        "source": source,
        "default": "yes" if default else "",
        "mmd_ratio": scores["mmd_ratio"],
        "+-": error,
        "c2st": scores["c2st"],
        "copying": scores["copying"],
        "spacing": scores["spacing"],
        "on_moon": scores.get("on_moon", ""),  # conditional samplers only
    }


def report_figures(entries: list[Judged]) -> list[report.Figure]:
    """The MMD ratio of every model and source, and each model's samples by source."""
    ratios: dict[str, dict[str, float]] = {}
    for entry in entries:
        for source, scores in entry.judgement.scores.items():
            ratios.setdefault(source, {})[entry.label] = scores["mmd_ratio"]
    drawn = [figures.sources_figure(ratios)] if ratios else []
    return drawn + [figures.source_samples_figure(entry.label, entry.samples) for entry in entries]
