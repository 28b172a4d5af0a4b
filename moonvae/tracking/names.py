"""The names users and the MLflow UI read: run and model-version tags, registered model names and aliases.

`models:/moonvae-{kind}@champion` is the best reconstruction of the basic search;
`models:/moonvae-{kind}@generator` the best sampler of the generative search (the rule:
`tuning.results.generator_trial`). Studies that change the data or the loss have their
own alias, so a model trained on other data never silently becomes the default.
Pure naming: no MLflow here, so the CLI can name defaults without importing it.
"""

from __future__ import annotations

from moonvae.config import SpaceName

# ---- tags on runs (and the same keys on model versions) ----
KIND_TAG = "moonvae.kind"  # train, tune, study, trial or analyse: the UI filters trials out by it
KINDS = ("train", "tune", "study", "trial", "analyse")
MODEL_TAG = "moonvae.model"  # vae or cvae
SPACE_TAG = "moonvae.space"  # the search a study, trial or registered version belongs to
STUDY_TAG = "moonvae.study"  # the Optuna study's name, on its study run, its trials and its registered version
TRIAL_TAG = "moonvae.trial"  # the Optuna trial number, on the trial's run and its registered version
TRIAL_STATE_TAG = "moonvae.trial_state"  # how Optuna ended the trial: COMPLETE, PRUNED or FAIL
N_TRIALS_TAG = "moonvae.n_trials"  # the trials a study was asked to hold
SAMPLING_SOURCE_TAG = "moonvae.sampling_source"  # where the logged model draws latents when asked for no source
PARETO_TAG = "moonvae.pareto"  # true on the runs of the trials on a multi-objective study's Pareto front
BEST_RUN_TAG = "moonvae.best_run_id"  # on a study run: its best (or generator) trial's run
STUDY_RUNS_TAG = "moonvae.study_runs"  # on the entry run of model=both: the study runs it started or resumed
STUDIES_TAG = "moonvae.studies"  # on an analyse run: the studies its findings read
STATUS_REASON_TAG = "moonvae.status_reason"  # why a run did not finish
VERSION_TAG = "moonvae.version"  # the package version that ran
GIT_DIRTY_TAG = "moonvae.git_dirty"  # whether the checkout that ran had uncommitted changes
NOTE_TAG = "mlflow.note.content"  # MLflow's: the run's description in the UI
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow's: model training rather than GenAI traces


def run_id_tag(kind: str) -> str:
    """On an analyse run: the run that logged the analysed model of `kind` (`moonvae.vae_run_id`)."""
    return f"moonvae.{kind}_run_id"


# ---- registered models ----
CHAMPION = "champion"  # the alias users load: the basic search's best model
GENERATOR = "generator"  # the generative search's best sampler among its good reconstructions


def model_name(kind: str) -> str:
    """The registered model a study of `kind` (vae or cvae) adds its best version to."""
    return f"moonvae-{kind}"


def alias_for(space: str) -> str:
    """`champion` for the basic space, `generator` for the generative one; the others change the data or the
    loss, so their best gets its own alias."""
    return {SpaceName.BASIC: CHAMPION, SpaceName.GENERATIVE: GENERATOR}.get(space, f"best-{space}")


def model_uri(kind: str, alias: str = CHAMPION) -> str:
    return f"models:/{model_name(kind)}@{alias}"


def valid_name(name: str) -> bool:
    """Usable in `models:/NAME@alias`: not empty, no '/', ':' or '@'."""
    return bool(name.strip()) and not any(char in name for char in "/:@")
