"""The original study's nine findings, checked against our own studies and champions.

Each check states its evidence as numbers and gives a verdict: reproduced, not
reproduced, or not enough data. The rules are fixed in advance (thresholds below)
so the verdict follows from the numbers, whichever way they fall.

Input is plain data: one `StudyTable` per study (its completed trials as a
DataFrame with the searched params, `value` = best validation MSE, and any numeric
metrics the trial recorded such as `test_mse` and `test_kl`; and the parameter
importances), plus the champions' latent moon accuracies. No Optuna, no MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

REPRODUCED, NOT_REPRODUCED, NOT_ENOUGH = "reproduced", "not reproduced", "not enough data"
MIN_TRIALS = 20  # fewer completed trials give importances and correlations too noisy to judge
MIN_GROUP = 3  # trials needed on each side of a comparison
MINOR_IMPORTANCE = 0.25  # lr + batch_size below this share of the importance "matter little"
SIGNIFICANCE = 0.05
COLLAPSE_KL = 0.01  # per-element KL below this: the latent carries (almost) nothing ...
COLLAPSE_MSE = 0.1  # ... while the reconstruction error is this poor (data variance is about 0.5)
WELL = 2.0  # "reconstructs well": best validation MSE within this factor of the study's best
CLEAR_SEPARATION = 0.9  # latent moon accuracy above which the moons are separated


@dataclass(frozen=True)
class StudyTable:
    trials: pd.DataFrame  # completed trials: params, value, recorded metrics
    importances: dict[str, float] = field(default_factory=dict)  # param -> share of the variance explained


@dataclass(frozen=True)
class Finding:
    number: int
    claim: str
    evidence: str
    verdict: str


def trials_frame(trials: list[object]) -> pd.DataFrame:
    """Completed trials (Optuna `FrozenTrial`s or alike) as rows: params, `value`, plain user attributes."""
    rows = []
    for trial in trials:
        if getattr(trial.state, "name", str(trial.state)) != "COMPLETE" or trial.value is None:
            continue
        metrics = {key: value for key, value in trial.user_attrs.items() if isinstance(value, (int, float, str))}
        rows.append({**metrics, **trial.params, "value": float(trial.value), "number": trial.number})
    frame = pd.DataFrame(rows)
    params = {name for trial in trials for name in trial.params}
    for column in params & set(frame.columns):  # widths stored as strings ("8") compare as numbers
        converted = pd.to_numeric(frame[column], errors="coerce")
        if converted.notna().all():
            frame[column] = converted
    return frame


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _count(mask: pd.Series) -> str:
    """`k of n (p%)` for a boolean series."""
    return f"{int(mask.sum())} of {len(mask)} ({mask.mean():.0%})" if len(mask) else "0 of 0"


def _enough(table: StudyTable | None, minimum: int = MIN_TRIALS) -> bool:
    return table is not None and len(table.trials) >= minimum


def _missing(name: str, table: StudyTable | None) -> str:
    return f"{name}: {0 if table is None else len(table.trials)} completed trials (need {MIN_TRIALS})"


def collapsed(frame: pd.DataFrame) -> pd.Series:
    """Posterior collapse, operationally: the latent carries almost nothing and reconstructions are poor."""
    return (frame["test_kl"] < COLLAPSE_KL) & (frame["test_mse"] > COLLAPSE_MSE)


def lr_and_batch_size(studies: Mapping[tuple[str, str], StudyTable]) -> Finding:
    claim = "Learning rate and batch size matter little."
    evidence, verdicts = [], []
    for model in ("vae", "cvae"):
        table = studies.get((model, "basic"))
        if not _enough(table) or not table.importances:
            evidence.append(_missing(f"{model} basic", table))
            continue
        share = table.importances.get("lr", 0.0) + table.importances.get("batch_size", 0.0)
        evidence.append(
            f"{model} basic ({len(table.trials)} trials): importance lr {_fmt(table.importances.get('lr', 0.0))}"
            f" + batch_size {_fmt(table.importances.get('batch_size', 0.0))} = {_fmt(share)} of 1"
        )
        verdicts.append(share < MINOR_IMPORTANCE)
    verdict = NOT_ENOUGH if not verdicts else REPRODUCED if all(verdicts) else NOT_REPRODUCED
    return Finding(1, claim, f"{'; '.join(evidence)} (threshold {MINOR_IMPORTANCE})", verdict)


def decoder_and_latent(studies: Mapping[tuple[str, str], StudyTable]) -> Finding:
    claim = "Decoder width and latent size matter most; both must grow together."
    table = studies.get(("vae", "basic"))
    if not _enough(table) or not table.importances:
        return Finding(2, claim, _missing("vae basic", table), NOT_ENOUGH)
    ranked = sorted(table.importances, key=table.importances.get, reverse=True)
    top_two = set(ranked[:2]) == {"decoder_hidden", "latent_dim"}
    trials = table.trials
    big_decoder, big_latent = trials["decoder_hidden"] >= 32, trials["latent_dim"] >= 32
    groups = {
        "both >= 32": trials[big_decoder & big_latent]["value"],
        "decoder only": trials[big_decoder & ~big_latent]["value"],
        "latent only": trials[~big_decoder & big_latent]["value"],
    }
    medians = ", ".join(f"{name} {_fmt(v.median()) if len(v) else '-'} (n={len(v)})" for name, v in groups.items())
    evidence = (
        f"vae basic importances: {', '.join(f'{p} {_fmt(table.importances[p])}' for p in ranked)}; "
        f"median best val MSE: {medians}"
    )
    if any(len(values) < MIN_GROUP for values in groups.values()):
        return Finding(2, claim, evidence + f" (each group needs {MIN_GROUP} trials)", NOT_ENOUGH)
    together = groups["both >= 32"].median() < min(groups["decoder only"].median(), groups["latent only"].median())
    return Finding(2, claim, evidence, REPRODUCED if top_two and together else NOT_REPRODUCED)


def _compare(worse: pd.Series, better: pd.Series) -> tuple[bool, float]:
    """Is `worse` larger than `better` (one-sided Mann-Whitney U), and the p-value."""
    p_value = float(stats.mannwhitneyu(worse, better, alternative="greater").pvalue)
    return p_value < SIGNIFICANCE, p_value


def wide_encoder(studies: Mapping[tuple[str, str], StudyTable]) -> Finding:
    claim = "An encoder wider than 8 makes the VAE worse."
    table = studies.get(("vae", "basic"))
    if not _enough(table):
        return Finding(3, claim, _missing("vae basic", table), NOT_ENOUGH)
    trials = table.trials
    wide, narrow = trials[trials["encoder_hidden"] > 8]["value"], trials[trials["encoder_hidden"] <= 8]["value"]
    evidence = (
        f"vae basic median best val MSE: encoder > 8 {_fmt(wide.median()) if len(wide) else '-'} (n={len(wide)}), "
        f"<= 8 {_fmt(narrow.median()) if len(narrow) else '-'} (n={len(narrow)}); "
        f"best trial's encoder {int(trials.loc[trials['value'].idxmin(), 'encoder_hidden'])}"
    )
    if min(len(wide), len(narrow)) < MIN_GROUP:
        return Finding(3, claim, evidence, NOT_ENOUGH)
    worse, p_value = _compare(wide, narrow)
    return Finding(
        3, claim, f"{evidence}; one-sided Mann-Whitney p={_fmt(p_value)}", REPRODUCED if worse else NOT_REPRODUCED
    )


def tiny_networks(studies: Mapping[tuple[str, str], StudyTable]) -> Finding:
    claim = "A tiny encoder and decoder give posterior collapse (smooth latent, poor reconstruction)."
    table = studies.get(("vae", "basic"))
    if not _enough(table):
        return Finding(4, claim, _missing("vae basic", table), NOT_ENOUGH)
    trials = table.trials
    if not {"test_kl", "test_mse"} <= set(trials.columns):
        return Finding(4, claim, "the trials recorded no test_kl/test_mse", NOT_ENOUGH)
    tiny = (trials["encoder_hidden"] <= 4) & (trials["decoder_hidden"] <= 4)
    share_tiny = collapsed(trials[tiny]).mean() if tiny.any() else float("nan")
    share_rest = collapsed(trials[~tiny]).mean()
    evidence = (
        f"vae basic, collapsed (test_kl < {COLLAPSE_KL} and test_mse > {COLLAPSE_MSE}): "
        f"{_count(collapsed(trials[tiny]))} trials with encoder and decoder <= 4, "
        f"{_count(collapsed(trials[~tiny]))} others"
    )
    if tiny.sum() < MIN_GROUP:
        return Finding(4, claim, evidence, NOT_ENOUGH)
    return Finding(4, claim, evidence, REPRODUCED if share_tiny >= 0.5 and share_tiny > share_rest else NOT_REPRODUCED)


def cvae_robust(studies: Mapping[tuple[str, str], StudyTable]) -> Finding:
    claim = "The CVAE reconstructs well across a wide range of hyperparameters."
    tables = {model: studies.get((model, "basic")) for model in ("vae", "cvae")}
    if not all(_enough(table) for table in tables.values()):
        return Finding(5, claim, "; ".join(_missing(f"{m} basic", t) for m, t in tables.items()), NOT_ENOUGH)
    within = {model: table.trials["value"] <= WELL * table.trials["value"].min() for model, table in tables.items()}
    shares = {model: float(mask.mean()) for model, mask in within.items()}
    evidence = "; ".join(
        f"{model} basic: {_count(mask)} trials within {WELL:g}x of the study's best best-val-MSE "
        f"(median {_fmt(tables[model].trials['value'].median())})"
        for model, mask in within.items()
    )
    wider = shares["cvae"] > shares["vae"]
    lower = tables["cvae"].trials["value"].median() < tables["vae"].trials["value"].median()
    return Finding(5, claim, evidence, REPRODUCED if wider and lower else NOT_REPRODUCED)


def _mean_log_by(trials: pd.DataFrame, column: str, metric: str = "value") -> pd.Series:
    return np.log10(trials[metric]).groupby(trials[column]).mean()


def data_size_and_noise(studies: Mapping[tuple[str, str], StudyTable]) -> Finding:
    claim = "More data: less over-fitting; the CVAE's error depends on noise, hardly on size."
    table = studies.get(("cvae", "data"))
    if table is None or table.trials.empty or table.trials["n_samples"].nunique() < 2:
        return Finding(6, claim, _missing("cvae data", table), NOT_ENOUGH)
    by_noise = _mean_log_by(table.trials, "noise")
    by_size = _mean_log_by(table.trials, "n_samples")
    noise_range, size_range = float(np.ptp(by_noise)), float(np.ptp(by_size))
    evidence = (
        f"cvae data ({len(table.trials)} trials): mean log10 best val MSE spans {_fmt(noise_range)} across noise, "
        f"{_fmt(size_range)} across size"
    )
    overfit = ""
    vae = studies.get(("vae", "data"))
    frames = [t.trials for t in (vae, table) if t is not None and {"train_mse", "test_mse"} <= set(t.trials.columns)]
    if frames:
        trials = pd.concat(frames)
        gap = (trials["test_mse"] - trials["train_mse"]).groupby(trials["n_samples"]).mean()
        overfit = "; test - train MSE by size: " + ", ".join(f"{int(n)}: {_fmt(g)}" for n, g in gap.items())
        shrinks = bool(np.all(np.diff(gap.to_numpy()) < 0))
    else:
        overfit = "; over-fitting not measured (the trials recorded no train_mse): verdict on the noise/size half"
        shrinks = True
    noise_dominates = noise_range > 3 * size_range
    return Finding(6, claim, evidence + overfit, REPRODUCED if noise_dominates and shrinks else NOT_REPRODUCED)


def zero_noise(studies: Mapping[tuple[str, str], StudyTable]) -> Finding:
    claim = "Noise 0 is modelled worse than small noise."
    evidence, verdicts = [], []
    for model in ("vae", "cvae"):
        table = studies.get((model, "data"))
        if table is None or table.trials.empty:
            evidence.append(_missing(f"{model} data", table))
            continue
        trials = table.trials
        noises = sorted(n for n in trials["noise"].unique() if n > 0)
        if not (trials["noise"] == 0).any() or not noises:
            evidence.append(f"{model} data: no trials at noise 0 and at a small noise")
            continue
        small = noises[0]
        zero_by_size = trials[trials["noise"] == 0].groupby("n_samples")["value"].mean()
        small_by_size = trials[trials["noise"] == small].groupby("n_samples")["value"].mean()
        sizes = zero_by_size.index.intersection(small_by_size.index)
        worse = int((zero_by_size[sizes] > small_by_size[sizes]).sum())
        evidence.append(
            f"{model} data: best val MSE at noise 0 above noise {small:g} for {worse} of {len(sizes)} sizes "
            f"({', '.join(f'n={int(s)}: {_fmt(zero_by_size[s])} vs {_fmt(small_by_size[s])}' for s in sizes)})"
        )
        verdicts.append(worse > len(sizes) / 2)
    verdict = NOT_ENOUGH if not verdicts else REPRODUCED if all(verdicts) else NOT_REPRODUCED
    return Finding(7, claim, "; ".join(evidence), verdict)


def eps_w_and_beta(studies: Mapping[tuple[str, str], StudyTable]) -> Finding:
    claim = "eps_w = 1 collapses the posterior; smaller eps_w and beta sharpen reconstructions, less smooth latent."
    evidence, verdicts = [], []
    for model in ("vae", "cvae"):
        table = studies.get((model, "probabilistic"))
        if not _enough(table):
            evidence.append(_missing(f"{model} probabilistic", table))
            continue
        trials = table.trials
        rho_eps = stats.spearmanr(trials["eps_w"], trials["value"])
        rho_beta = stats.spearmanr(trials["beta"], trials["value"])
        sharper = all(r.statistic > 0 and r.pvalue < SIGNIFICANCE for r in (rho_eps, rho_beta))
        text = (
            f"{model} probabilistic ({len(trials)} trials): Spearman(best val MSE, eps_w) {_fmt(rho_eps.statistic)} "
            f"(p={_fmt(rho_eps.pvalue)}), (MSE, beta) {_fmt(rho_beta.statistic)} (p={_fmt(rho_beta.pvalue)})"
        )
        if {"test_kl", "test_mse"} <= set(trials.columns):
            high = trials[trials["eps_w"] >= 0.5]
            collapse_share = float(collapsed(high).mean()) if len(high) else float("nan")
            rho_kl = stats.spearmanr(trials["eps_w"] * trials["beta"], trials["test_kl"])
            text += (
                f"; collapsed (test_kl < {COLLAPSE_KL}, test_mse > {COLLAPSE_MSE}): {_count(collapsed(high))} "
                f"trials with eps_w >= 0.5; Spearman(test KL, eps_w*beta) {_fmt(rho_kl.statistic)} "
                f"(p={_fmt(rho_kl.pvalue)})"
            )
            smoother = rho_kl.statistic < 0 and rho_kl.pvalue < SIGNIFICANCE  # less KL pressure, more KL
            verdicts.append(sharper and smoother and len(high) >= MIN_GROUP and collapse_share >= 0.5)
        else:
            text += "; no test_kl recorded, collapse not measured"
            verdicts.append(sharper)
        evidence.append(text)
    verdict = NOT_ENOUGH if not verdicts else REPRODUCED if all(verdicts) else NOT_REPRODUCED
    return Finding(8, claim, "; ".join(evidence), verdict)


def latent_separation(latent_accuracy: Mapping[str, float]) -> Finding:
    claim = "The VAE latent space separates the moons; the CVAE latent space overlaps them."
    if not {"vae", "cvae"} <= set(latent_accuracy):
        return Finding(9, claim, "needs both champions", NOT_ENOUGH)
    vae, cvae = latent_accuracy["vae"], latent_accuracy["cvae"]
    evidence = (
        f"moon predicted from the champions' training latents (k-NN, 5-fold): VAE accuracy {_fmt(vae)}, "
        f"CVAE {_fmt(cvae)} (0.5 = fully overlapping)"
    )
    return Finding(9, claim, evidence, REPRODUCED if vae >= CLEAR_SEPARATION and cvae < vae - 0.1 else NOT_REPRODUCED)


CHECKS: tuple[Callable[[Mapping[tuple[str, str], StudyTable]], Finding], ...] = (
    lr_and_batch_size,
    decoder_and_latent,
    wide_encoder,
    tiny_networks,
    cvae_robust,
    data_size_and_noise,
    zero_noise,
    eps_w_and_beta,
)


def all_findings(studies: Mapping[tuple[str, str], StudyTable], latent_accuracy: Mapping[str, float]) -> list[Finding]:
    return [check(studies) for check in CHECKS] + [latent_separation(latent_accuracy)]


def findings_frame(findings: list[Finding]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "#": [f.number for f in findings],
            "finding": [f.claim for f in findings],
            "evidence from our runs": [f.evidence for f in findings],
            "verdict": [f.verdict for f in findings],
        }
    )
