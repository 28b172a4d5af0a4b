"""What a finished study leaves on its MLflow run: best metrics and tags, every trial, Optuna's plots, the best model.

Called when a call on a study ends (complete, timed out or stopped), so a resumed
study's run always describes the whole study, not only the last call.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from moonvae import images, registry, tracking
from moonvae.studies import MODEL_ID_ATTR, RUN_ID_ATTR, Target
from moonvae.tracking import Client

NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI


@dataclass
class StudyResult:
    name: str
    model: str
    run_id: str
    counts: dict[str, int]  # trials by state name, over the whole study
    best_value: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    registered: tuple[str, str, str] | None  # (model name, version, alias)
    seconds: float


def summarise(study: optuna.Study, client: Client, run_id: str, target: Target, seconds: float) -> StudyResult:
    """Best params and metrics, a CSV of all trials and Optuna's plots on the study run; the best model registered."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(trial.state.name for trial in trials)
    metrics: dict[str, float] = {f"trials_{state.lower()}": counts[state] for state in ("COMPLETE", "PRUNED", "FAIL")}
    metrics["wall_seconds"] = seconds
    best = _best_trial(study)
    registered = None
    if best is not None:
        best_run_id = best.user_attrs[RUN_ID_ATTR]
        best_metrics = tracking.run_metrics(client, best_run_id)
        metrics["best_trial"] = best.number  # best_val_mse is a series: see convergence()
        metrics |= {f"best_{key}": value for key, value in best_metrics.items() if key.startswith("test_")}
        tracking.set_tags(client, run_id, {f"best.{key}": value for key, value in best.params.items()})
        tracking.set_tags(client, run_id, {"moonvae.best_run_id": best_run_id})
        summary = {"trial": best.number, "value": best.value, "params": best.params, "run_id": best_run_id}
        tracking.log_text(client, run_id, json.dumps(summary, indent=2), "best.json")
        registered = _register(client, target, best, best_metrics)
    with tracking.MetricBuffer(client, run_id) as buffer:
        buffer.add(metrics, step=len(trials))
    tracking.set_tag(client, run_id, NOTE_TAG, note(target, counts, best, registered))
    tracking.log_text(client, run_id, study.trials_dataframe().to_csv(index=False), "trials.csv")
    for artifact, png in _optuna_figures(study):
        tracking.log_png(client, run_id, png, f"plots/{artifact}.png")
    return StudyResult(
        name=target.name,
        model=target.model,
        run_id=run_id,
        counts=dict(counts),
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
        best_params=best.params if best else {},
        registered=registered,
        seconds=seconds,
    )


def convergence(study: optuna.Study, logged: set[int]) -> dict[int, float]:
    """The study's best value among trials numbered up to k, for each trial k not in `logged` yet.

    A step is given only once every trial up to it has finished, so its value never
    changes and the series is the same whatever order parallel workers finished in.
    """
    best, series = math.inf, {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state in (TrialState.RUNNING, TrialState.WAITING):
            break
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            best = min(best, trial.value)
        if trial.number not in logged and best < math.inf:
            series[trial.number] = best
    return series


def entry_metrics(result: StudyResult) -> dict[str, float]:
    """A study's result as metrics of the run that launched it (`vae_best_val_mse`, ...)."""
    values = {"trials_complete": result.counts.get("COMPLETE", 0), "wall_seconds": result.seconds}
    if result.best_value is not None:
        values["best_val_mse"] = result.best_value
    return {f"{result.model}_{key}": value for key, value in values.items()}


def note(target: Target, counts: Counter[str], best: FrozenTrial | None, registered: tuple | None) -> str:
    """The study run's description in the MLflow UI (markdown): what it found and how to load it."""
    held = ", ".join(f"{counts[state]} {state.lower()}" for state in ("COMPLETE", "PRUNED", "FAIL"))
    lines = [f"**{target.name}**: {target.model} over the {target.space} space; trials: {held}."]
    if best is not None:
        lines.append(
            f"Best: trial {best.number}, val_mse {best.value:.5g}, run `{best.user_attrs.get(RUN_ID_ATTR, '')}`, "
            + ", ".join(f"{key}={value}" for key, value in best.params.items())
            + "."
        )
    if registered:
        name, version, alias = registered
        lines.append(f'Registered as {name} version {version}: `mlflow.pyfunc.load_model("models:/{name}@{alias}")`')
    return "\n\n".join(lines)


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def _optuna_figures(study: optuna.Study) -> Iterator[tuple[str, bytes]]:
    """Optuna's plots that the study can draw, as PNG (importances need two complete trials, for instance).

    Optuna's matplotlib flavour, so they show in the UI offline; each figure is closed once drawn.
    """
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as visualization

    plots: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: visualization.plot_optimization_history(study),
        "param_importances": lambda: visualization.plot_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0)
        ),
        "parallel_coordinate": lambda: visualization.plot_parallel_coordinate(study),
        "slice": lambda: visualization.plot_slice(study),
    }
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
    name, alias = registry.model_name(target.model), registry.alias_for(target.space)
    tags = {"moonvae.study": target.name, "moonvae.trial": best.number, "moonvae.space": target.space}
    tags |= {key: value for key, value in best_metrics.items() if key.startswith(("best_val", "test_"))}
    version = tracking.register_once(client, model_id, name, alias, tags=tags, description=registry.DESCRIPTION)
    return name, version, alias
