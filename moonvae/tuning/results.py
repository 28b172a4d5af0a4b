"""What a finished study leaves on its MLflow run: best metrics and tags, every trial, Optuna's plots, the best model.

Called when a call on a study ends (complete, timed out or stopped), so a resumed
study's run always describes the whole study, not only the last call. A study with
several objectives (the generative one) has no single best trial: it leaves its Pareto
front (`pareto.csv`, `plots/pareto_front.png`, the tag `moonvae.pareto` on each trial's
run) and registers the front's trial that `generator_trial` picks.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from moonvae.sampling import quality
from moonvae.tracking import images, names, registry, runs
from moonvae.tracking.runs import Client
from moonvae.tuning.studies import MODEL_ID_ATTR, RUN_ID_ATTR, SOURCE_ATTR, Target

GENERATOR_MSE_FACTOR = 2.0  # the generator reconstructs within this factor of the study's best validation MSE,
# or at least this well: a 0.01 rms error, invisible against the data's noise (0.15) and range. Without it, a
# study whose best reconstruction is near 0 (tiny eps_w: 2e-7) admitted only near-deterministic autoencoders
GENERATOR_MSE_TOLERANCE = 1e-4
# with a calibrated decoder, the generator's held-out -ELBO is within this many nats per point of the study's best
GENERATOR_NATS = 0.05


def generator_trial(front: Sequence[tuple[int, float, float, float]], objective: str = "best_val_mse") -> int | None:
    """The generator among Pareto trials (number, first objective, MMD summary, its standard error): among the
    trials whose first objective is close enough to the best (which the front always holds), the best first
    objective of those whose summary is not clearly worse than the lowest (`quality.clearly_worse`).

    Close enough: a validation MSE within GENERATOR_MSE_FACTOR of the best or at most
    GENERATOR_MSE_TOLERANCE; a held-out negative ELBO (`val_nelbo`, nats per point, on a log
    scale and of either sign) within GENERATOR_NATS of the best. A sampler that fits the data
    badly is not what users want from a VAE, however good its samples; within the bound, sample
    quality decides where it can (summaries whose difference is inside their uncertainty are not
    told apart), and the first objective where it cannot. Ties go to the earlier trial.
    """
    if not front:
        return None
    best = min(first for _, first, _, _ in front)
    bound = (
        best + GENERATOR_NATS if objective == "val_nelbo" else max(GENERATOR_MSE_FACTOR * best, GENERATOR_MSE_TOLERANCE)
    )
    eligible = [trial for trial in front if trial[1] <= bound]
    _, _, lowest, lowest_error = min(eligible, key=lambda trial: trial[2])
    tied = [trial for trial in eligible if not quality.clearly_worse(trial[2], trial[3], lowest, lowest_error)]
    return min(tied, key=lambda trial: (trial[1], trial[0]))[0]


@dataclass
class StudyResult:
    name: str
    model: str
    run_id: str
    counts: dict[str, int]  # trials by state name, over the whole study
    best_value: float | None  # the best trial's first objective (validation MSE, or -ELBO with a calibrated decoder)
    best_trial: int | None  # the best trial; of a multi-objective study, the one registered
    best_params: dict[str, Any]
    registered: tuple[str, str, str] | None  # (model name, version, alias)
    seconds: float
    best_values: dict[str, float] = field(default_factory=dict)  # the best trial's objectives by name
    pareto: list[int] = field(default_factory=list)  # trial numbers on the Pareto front (several objectives)
    summary_error: float = math.nan  # the standard error of the best trial's mmd_summary, where it has one


def summarise(study: optuna.Study, client: Client, run_id: str, target: Target, seconds: float) -> StudyResult:
    """Best params and metrics, a CSV of all trials and Optuna's plots on the study run; the best model registered."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(trial.state.name for trial in trials)
    metrics: dict[str, float] = {f"trials_{state.lower()}": counts[state] for state in ("COMPLETE", "PRUNED", "FAIL")}
    metrics["wall_seconds"] = seconds
    front = pareto_front(study) if len(target.objectives) > 1 else []
    best = _best_trial(study, front, target.objectives[0])
    values = dict(zip(target.objectives, best.values, strict=True)) if best else {}
    registered = None
    if best is not None:
        best_run_id = best.user_attrs[RUN_ID_ATTR]
        best_metrics = runs.run_metrics(client, best_run_id)
        metrics["best_trial"] = best.number  # best_val_mse is a series: see convergence()
        metrics |= {f"best_{key}": value for key, value in best_metrics.items() if key.startswith("test_")}
        runs.set_tags(client, run_id, {f"best.{key}": value for key, value in best.params.items()})
        runs.set_tags(client, run_id, {names.BEST_RUN_TAG: best_run_id})
        summary = {"trial": best.number, "value": best.values[0], "params": best.params, "run_id": best_run_id}
        if front:
            rule = generator_rule(target.objectives[0])
            summary |= {"values": values, "mmd_summary_se": summary_error(best), "rule": rule}
            summary["source"] = best.user_attrs.get(SOURCE_ATTR)
        runs.log_text(client, run_id, json.dumps(summary, indent=2), "best.json")
        registered = _register(client, target, best, best_metrics)
    if len(target.objectives) > 1:
        _log_front(client, run_id, study, target, front, best)
    with runs.MetricBuffer(client, run_id) as buffer:
        buffer.add(metrics, step=len(trials))
    runs.set_tag(client, run_id, names.NOTE_TAG, note(target, counts, best, registered, front))
    runs.log_text(client, run_id, study.trials_dataframe().to_csv(index=False), "trials.csv")
    for artifact, png in _optuna_figures(study, target.objectives):
        runs.log_png(client, run_id, png, f"plots/{artifact}.png")
    return StudyResult(
        name=target.name,
        model=target.model,
        run_id=run_id,
        counts=dict(counts),
        best_value=best.values[0] if best else None,
        best_trial=best.number if best else None,
        best_params=best.params if best else {},
        registered=registered,
        seconds=seconds,
        best_values=values,
        pareto=[trial.number for trial in front],
        summary_error=summary_error(best) if best else math.nan,
    )


def short(objective: str) -> str:
    """An objective's name without `best_`: `best_val_mse` -> `val_mse`, as the trial and best-so-far series use it."""
    return objective.removeprefix("best_")


def trial_metrics(objectives: tuple[str, ...], values: list[float]) -> dict[str, float]:
    """A finished trial's objectives as the study run's series: `trial_val_mse`, `trial_mmd_summary`."""
    return {f"trial_{short(name)}": value for name, value in zip(objectives, values, strict=True)}


def values_text(objectives: tuple[str, ...], values: list[float], summary_error: float = math.nan) -> str:
    """`val_mse 0.0021, mmd_summary 3.712 +- 0.18`: objectives by name, the MMD summary with its error if known."""
    texts = [f"{short(name)} {value:.5g}" for name, value in zip(objectives, values, strict=True)]
    if "mmd_summary" in objectives and not math.isnan(summary_error):
        texts[objectives.index("mmd_summary")] += f" +- {summary_error:.2g}"
    return ", ".join(texts)


def best_so_far(study: optuna.Study) -> dict[str, str]:
    """The progress bar's note: the best value, or the Pareto front's size (several objectives)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {}
    if len(study.directions) > 1:
        return {"pareto": str(len(dominant(complete)))}
    return {"best": f"{min(trial.values[0] for trial in complete):.5f}"}


def dominates(other: list[float], values: list[float]) -> bool:
    """Whether `other` is no worse in every objective (all minimised) and differs: Optuna's Pareto dominance."""
    return all(o <= v for o, v in zip(other, values, strict=True)) and other != values


def dominant(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials no other trial dominates: the Pareto front, as Optuna's."""
    return [trial for trial in trials if not any(dominates(other.values, trial.values) for other in trials)]


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The study's Pareto front (Optuna's `best_trials`), by trial number."""
    return sorted(study.best_trials, key=lambda trial: trial.number)


def generator_rule(objective: str = "best_val_mse") -> str:
    close = (
        f"whose val_nelbo is within {GENERATOR_NATS:g} nats per point of the study's best"
        if objective == "val_nelbo"
        else f"whose best_val_mse is within {GENERATOR_MSE_FACTOR:g}x the study's best or at most "
        f"{GENERATOR_MSE_TOLERANCE:g}"
    )
    return (
        f"the Pareto trial with the lowest {short(objective)} among those whose mmd_summary is not above the lowest by "
        f"more than {quality.SIGNIFICANCE:g} standard errors of their difference, of the trials {close}"
    )


def convergence(study: optuna.Study, logged: set[int], objectives: tuple[str, ...]) -> dict[int, dict[str, float]]:
    """For each trial k not in `logged` yet: the best of each objective among trials numbered up to k
    (`best_val_mse`, `best_mmd_summary`) and, with several objectives, the size of their Pareto front.

    A step is given only once every trial up to it has finished, so its values never
    change and the series is the same whatever order parallel workers finished in.
    """
    complete: list[FrozenTrial] = []
    series: dict[int, dict[str, float]] = {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state in (TrialState.RUNNING, TrialState.WAITING):
            break
        if trial.state == TrialState.COMPLETE and trial.values:
            complete.append(trial)
        if trial.number in logged or not complete:
            continue
        best = {f"best_{short(name)}": min(t.values[i] for t in complete) for i, name in enumerate(objectives)}
        if len(objectives) > 1:
            best["pareto_trials"] = len(dominant(complete))
        series[trial.number] = best
    return series


def entry_metrics(result: StudyResult) -> dict[str, float]:
    """A study's result as metrics of the run that launched it (`vae_best_val_mse`, ...)."""
    values = {"trials_complete": result.counts.get("COMPLETE", 0), "wall_seconds": result.seconds}
    values |= {f"best_{short(name)}": value for name, value in result.best_values.items()}
    if "mmd_summary" in result.best_values:
        values["best_mmd_summary_se"] = result.summary_error
    return {f"{result.model}_{key}": value for key, value in values.items()}


def note(
    target: Target,
    counts: Counter[str],
    best: FrozenTrial | None,
    registered: tuple | None,
    front: Sequence[FrozenTrial] = (),
) -> str:
    """The study run's description in the MLflow UI (markdown): what it found and how to load it."""
    held = ", ".join(f"{counts[state]} {state.lower()}" for state in ("COMPLETE", "PRUNED", "FAIL"))
    lines = [f"**{target.name}**: {target.model} over the {target.space} space; trials: {held}."]
    if front:
        lines.append(
            f"Pareto front ({', '.join(target.objectives)}): {len(front)} trials, "
            + ", ".join(str(trial.number) for trial in front)
            + f" (`pareto.csv`, tag `{names.PARETO_TAG}`). The generator is {generator_rule(target.objectives[0])}."
        )
    if best is not None:
        source = best.user_attrs.get(SOURCE_ATTR)
        lines.append(
            f"{'Generator' if front else 'Best'}: trial {best.number}, "
            + values_text(target.objectives, best.values, summary_error(best))
            + (f" (source {source})" if front and source else "")
            + f", run `{best.user_attrs.get(RUN_ID_ATTR, '')}`, "
            + ", ".join(f"{key}={value}" for key, value in best.params.items())
            + "."
        )
    if registered:
        name, version, alias = registered
        lines.append(f'Registered as {name} version {version}: `mlflow.pyfunc.load_model("models:/{name}@{alias}")`')
    return "\n\n".join(lines)


def _best_trial(study: optuna.Study, front: list[FrozenTrial], objective: str) -> FrozenTrial | None:
    """The best trial; with several objectives, the Pareto trial the generator rule picks."""
    if len(study.directions) > 1:
        chosen = generator_trial(
            [(trial.number, *trial.values[:2], summary_error(trial)) for trial in front], objective
        )
        return next((trial for trial in front if trial.number == chosen), None)
    try:
        return study.best_trial
    except ValueError:
        return None


def summary_error(trial: FrozenTrial) -> float:
    """The standard error of a trial's MMD summary (NaN for trials of studies older than it)."""
    return trial.user_attrs.get("mmd_summary_se", math.nan)


def _log_front(
    client: Client,
    run_id: str,
    study: optuna.Study,
    target: Target,
    front: list[FrozenTrial],
    chosen: FrozenTrial | None,
) -> None:
    """`pareto.csv` (the front, by validation MSE) and the tag `moonvae.pareto` on every complete trial's run.

    Every complete trial is tagged, true or false, because a resumed study's front moves.
    """
    on_front = {trial.number for trial in front}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get(RUN_ID_ATTR):
            runs.set_tag(client, trial.user_attrs[RUN_ID_ATTR], names.PARETO_TAG, str(trial.number in on_front).lower())
    rows = [
        {
            "trial": trial.number,
            **dict(zip(target.objectives, trial.values, strict=True)),
            "mmd_summary_se": summary_error(trial),
            "source": trial.user_attrs.get(SOURCE_ATTR, ""),
            "generator": chosen is not None and trial.number == chosen.number,
            "run_id": trial.user_attrs.get(RUN_ID_ATTR, ""),
            **trial.params,
        }
        for trial in sorted(front, key=lambda trial: trial.values)
    ]
    runs.log_text(client, run_id, pd.DataFrame(rows).to_csv(index=False), "pareto.csv")


def _optuna_figures(study: optuna.Study, objectives: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    """Optuna's plots that the study can draw, as PNG (importances need two complete trials, for instance).

    Optuna's matplotlib flavour, so they show in the UI offline; each figure is closed once drawn.
    With several objectives: the Pareto front, importances for each objective, and each one's history.
    Importances by PED-ANOVA (what sets the best tenth of trials apart), in milliseconds where
    fANOVA's forest took 1.6 s of a 100-trial study's end; `analyse` quotes fANOVA's (studies.importances).
    """
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as visualization

    importances = lambda: visualization.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())  # noqa: E731
    plots: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: visualization.plot_optimization_history(study),
        "param_importances": importances,
        "parallel_coordinate": lambda: visualization.plot_parallel_coordinate(study),
        "slice": lambda: visualization.plot_slice(study),
    }
    if len(objectives) > 1:
        plots = {
            "pareto_front": lambda: visualization.plot_pareto_front(study, target_names=list(objectives)),
            "param_importances": importances,
        }
        for index, name in enumerate(objectives):
            plots[f"optimization_history_{short(name)}"] = lambda i=index, n=name: (
                visualization.plot_optimization_history(study, target=lambda t: t.values[i], target_name=n)
            )
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    for name, draw in plots.items():
        if complete < (2 if name == "param_importances" else 1):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib plots are experimental, and say so every time
                png = images.pyplot_png(draw)
        except (ValueError, RuntimeError):  # e.g. every trial has the same params: nothing to rank
            continue
        yield name, png


def _register(
    client: Client, target: Target, best: FrozenTrial, best_metrics: dict[str, float]
) -> tuple[str, str, str] | None:
    """The best trial's model as a version of moonvae-{model} with the space's alias (reused if already registered)."""
    model_id = best.user_attrs.get(MODEL_ID_ATTR)
    if not model_id:
        return None
    name, alias = names.model_name(target.model), names.alias_for(target.space)
    tags = {names.STUDY_TAG: target.name, names.TRIAL_TAG: best.number, names.SPACE_TAG: target.space}
    kept = ("best_val", "best_sigma_x", "val_nelbo", "test_", "mmd_summary")
    tags |= {key: value for key, value in best_metrics.items() if key.startswith(kept)}
    if SOURCE_ATTR in best.user_attrs:
        tags[names.SAMPLING_SOURCE_TAG] = best.user_attrs[SOURCE_ATTR]
    version = registry.register_once(client, model_id, name, alias, tags=tags)
    return name, version, alias
