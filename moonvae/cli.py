"""The `moonvae` command and the MLproject's entry points: parse and validate options, then call the library.

Option names mirror the MLproject parameters (`--latent-dim` for `-P latent_dim=`);
`entrypoints/*.py` run these same commands. Every user error ends in one line on
stderr and exit code 2, and no run is left RUNNING. Only click and the configs are
imported up front: torch, MLflow, Optuna and the analysis stack load inside the
command that needs them, so `--help` and a typo answer at once.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from moonvae.config import (
    LIKELIHOODS,
    MODELS,
    N_TRIALS,
    PRIORS,
    TRIALS_AT_ONCE,
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    SpaceName,
    TrainConfig,
)
from moonvae.metrics import N_EVAL
from moonvae.tracking import names

EPOCH_LINE_EVERY = 25  # print one console line per this many epochs
CONTEXT = {"help_option_names": ["-h", "--help"]}


class OneLineErrors:
    """Print usage errors as one line (`moonvae: error: ...`) instead of click's usage block."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.Abort:  # Ctrl-C, or SIGTERM in `tune` (moonvae.tuning.signals): exit code 128 + the signal
            from moonvae.tuning import signals

            stopped_by = signals.stopped_by() or signal.SIGINT
            click.echo(f"moonvae: {'terminated' if stopped_by == signal.SIGTERM else 'aborted'}", err=True)
            sys.exit(128 + stopped_by)
        except click.ClickException as error:
            fail(error.format_message(), code=error.exit_code)


class Command(OneLineErrors, click.Command):
    pass


class Group(OneLineErrors, click.Group):
    pass


def fail(message: str, code: int = 2) -> None:
    """Report a user error in one line, marking an `mlflow run` run FAILED so none stays RUNNING."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        from moonvae.tracking import runs

        runs.end_run(runs.client(), run_id, runs.FAILED, message)
    click.echo(f"moonvae: error: {message}", err=True)
    sys.exit(code)


def _defaults(part: type) -> dict[str, Any]:
    values = {name: field.default for name, field in part.__dataclass_fields__.items()}
    return {key: ",".join(map(str, value)) if isinstance(value, tuple) else value for key, value in values.items()}


DATA, MODEL, TRAIN = _defaults(DataConfig), _defaults(ModelConfig), _defaults(TrainConfig)


# (name, type, default, help) of every training parameter, under its MLproject name; defaults from config.py
TRAINING_PARAMETERS: list[tuple[str, type, Any, str | None]] = [
    ("model", str, MODEL["model"], " or ".join(MODELS)),
    ("n_samples", int, DATA["n_samples"], None),
    ("noise", float, DATA["noise"], None),
    ("data_seed", int, DATA["data_seed"], None),
    ("batch_size", int, TRAIN["batch_size"], None),
    ("lr", float, TRAIN["lr"], None),
    ("encoder_hidden", str, MODEL["encoder_hidden"], "width, or widths as 16,8"),
    ("decoder_hidden", str, MODEL["decoder_hidden"], "width, or widths as 64,128"),
    ("latent_dim", int, MODEL["latent_dim"], None),
    ("beta", float, MODEL["beta"], "KL weight"),
    ("eps_w", float, MODEL["eps_w"], "reparameterisation noise weight"),
    ("likelihood", str, MODEL["likelihood"], f"{' or '.join(LIKELIHOODS)}: gaussian learns sigma_x, samples add it"),
    ("prior", str, MODEL["prior"], f"{' or '.join(PRIORS)}: vamp, a VampPrior of learned pseudo-inputs"),
    ("pseudo_inputs", int, MODEL["pseudo_inputs"], "the VampPrior's components"),
    ("max_epochs", int, TRAIN["max_epochs"], None),
    ("patience", int, TRAIN["patience"], "early stopping, epochs"),
    ("seed", int, TRAIN["seed"], None),
]


def training_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The training parameters every entry point accepts, with the study's defaults."""
    for name, kind, default, help_text in reversed(TRAINING_PARAMETERS):
        flag = "--" + name.replace("_", "-")
        func = click.option(flag, type=kind, default=default, show_default=True, help=help_text)(func)
    return func


def fixed_training_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The training parameters as optional values fixed for every trial (all but model).

    Each also answers to its MLproject spelling (`--max_epochs`): `mlflow run` passes
    parameters the entry point does not declare as `--name value`.
    """
    for name, kind, default, help_text in reversed(TRAINING_PARAMETERS):
        if name == "model":
            continue
        flags = ["--" + name.replace("_", "-")] + (["--" + name] if "_" in name else [])
        text = f"fixed for every trial (default {default})" + (f"; {help_text}" if help_text else "")
        func = click.option(*flags, name, type=kind, default=None, help=text)(func)
    return func


def run_config(values: dict[str, Any]) -> RunConfig:
    """Validated config from CLI values, or a one-line error naming the parameter."""
    try:
        return RunConfig.from_flat(values).validate()
    except ConfigError as error:
        fail(str(error))
        raise  # unreachable: fail exits


def print_epoch(metrics: Any) -> None:  # a train.EpochMetrics
    if metrics.epoch % EPOCH_LINE_EVERY == 0:
        sigma_x = "" if metrics.sigma_x is None else f"  sigma_x {metrics.sigma_x:.4f}"
        click.echo(
            f"epoch {metrics.epoch:4d}  train_loss {metrics.train_loss:.5f}  val_mse {metrics.val_mse:.5f}  "
            f"val_kl {metrics.val_kl:.5f}  lr {metrics.lr:.0e}{sigma_x}"
        )


@click.command(cls=Command, context_settings=CONTEXT)
@training_options
@click.option(
    "--register",
    default="",
    metavar="NAME",
    help=f"register the model as a new version of NAME with alias {names.CHAMPION} (empty: do not register)",
)
def train(register: str, **values: Any) -> None:
    """Train one model and log it as an MLflow run (params, per-epoch metrics, plots, model)."""
    config = run_config(values)
    if register and not names.valid_name(register):
        fail(f"register must be a model name without '/', ':' or '@', got {register!r}")
    from moonvae.core.train import TrainingDiverged, one_torch_thread
    from moonvae.tracking import registry, runs
    from moonvae.tracking.experiment import run_training

    mlflow_client = runs.client()
    resume = os.environ.get("MLFLOW_RUN_ID")
    try:
        with (
            one_torch_thread(),
            runs.run(
                mlflow_client, f"train-{config.model.model}", resume_run_id=resume, tags={names.KIND_TAG: "train"}
            ) as run_id,
        ):
            click.echo(f"run {run_id} on {runs.tracking_uri()}")
            outcome = run_training(config, mlflow_client, run_id, on_epoch=print_epoch)
            if register:
                version = registry.register_model(mlflow_client, outcome.model_info, register)
    except TrainingDiverged as error:
        fail(str(error), code=1)
    metrics = outcome.final_metrics()
    calibrated = (
        f", sigma_x {metrics['best_sigma_x']:.4f}, test -ELBO {metrics['test_nelbo']:.4f} nats per point"
        if "best_sigma_x" in metrics
        else ""
    )
    click.echo(
        f"done: {metrics['epochs']} epochs, best val_mse {metrics['best_val_mse']:.5f} "
        f"(epoch {metrics['best_epoch']}), test_mse {metrics['test_mse']:.5f}, test_kl {metrics['test_kl']:.5f}"
        f"{calibrated}"
    )
    click.echo(outcome.judgement.note())
    if register:
        click.echo(f"registered {register} version {version}: load it with models:/{register}@{names.CHAMPION}")


@click.command(cls=Command, context_settings=CONTEXT)
@click.option("--model", default="both", show_default=True, help=f"{', '.join(MODELS)}, or both (one study each)")
@click.option(
    "--space",
    default=SpaceName.BASIC.value,
    show_default=True,
    help=f"{', '.join(SpaceName)} (docs/tuning.md says what each searches)",
)
@click.option(
    "--n-trials", "--n_trials", "n_trials", type=int, default=N_TRIALS, show_default=True, help="trials per study"
)
@click.option(
    "--study-name", "--study_name", "study_name", default="auto", show_default=True, help="auto: moonvae-MODEL-SPACE"
)
@click.option("--storage", default="auto", show_default=True, help="Optuna RDB URL; auto: optuna.db beside mlflow.db")
@click.option(
    "--workers", type=int, default=1, show_default=True, help="worker processes (Ray tasks with --ray-address)"
)
@click.option("--n-jobs", "--n_jobs", "n_jobs", type=int, default=1, show_default=True, help="threads in each worker")
@click.option(
    "--trials-at-once",
    "--trials_at_once",
    "trials_at_once",
    type=int,
    default=TRIALS_AT_ONCE,
    show_default=True,
    help="trials each worker trains together as one vectorised model",
)
@click.option(
    "--ray-address",
    "--ray_address",
    "ray_address",
    default="",
    help="run the workers on this Ray cluster: auto, HOST:PORT or ray://HOST:10001 [default: this machine]",
)
@click.option("--timeout", type=float, default=0, show_default=True, help="seconds, then no new trial starts; 0: none")
@click.option(
    "--pruner",
    default="auto",
    show_default=True,
    help="auto (median for basic, none otherwise), median, hyperband, none",
)
@fixed_training_options
def tune(
    model: str,
    space: str,
    n_trials: int,
    study_name: str,
    storage: str,
    workers: int,
    n_jobs: int,
    trials_at_once: int,
    ray_address: str,
    timeout: float,
    pruner: str,
    **fixed: Any,
) -> None:
    """Tune with Optuna: a study per model, each trial a nested MLflow run, the best model registered.

    SIGTERM stops it as Ctrl-C does: every worker ends its trial's run KILLED, the trial FAIL.
    """
    if timeout < 0:
        fail(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    if workers < 1:
        fail(f"workers must be an integer >= 1, got {workers!r}")
    from moonvae.tracking import runs
    from moonvae.tuning import asking, cluster, executor, results, search, signals, studies, trials

    if os.environ.get("MLFLOW_RUN_ID") and studies.has_password(storage):
        fail(
            "the storage URL holds a password, and mlflow run stores -P values as run params in clear: "
            "leave it out and set PGPASSWORD or ~/.pgpass"
        )
    with ExitStack() as call:
        try:
            runner = call.enter_context(cluster.connect(ray_address.strip()))
            plan = search.plan(
                model,
                space,
                n_trials,
                study_base=None if study_name == "auto" else study_name,
                storage=None if storage == "auto" else storage,
                n_jobs=n_jobs,
                timeout=timeout or None,
                pruner=pruner,
                fixed={key: value for key, value in fixed.items() if value is not None},
                workers=workers,
                trials_at_once=trials_at_once,
                runner=runner,
            )
        except ConfigError as error:
            fail(str(error))
        call.enter_context(signals.stop_on_signals())  # after connecting: Ray sets its own SIGTERM handler
        click.echo(f"tracking {runs.tracking_uri()}, studies in {studies.redact(plan.storage_url)}")
        if workers > 1 or ray_address.strip():
            click.echo(f"workers: {runner.describe(workers)}")
        try:
            finished = search.run(plan, runs.client(), entry_run_id=os.environ.get("MLFLOW_RUN_ID"))
        except (trials.TooManyFailures, executor.WorkerLost, asking.WaitedTooLong, studies.StorageLost) as error:
            fail(str(error), code=1)
        except ConfigError as error:  # a worker that does not see the study's services
            fail(str(error))
        if signals.stopped_by():  # a signal came while the last study was being summarised
            raise KeyboardInterrupt
    for result in finished:
        held = ", ".join(f"{count} {state.lower()}" for state, count in sorted(result.counts.items()))
        if result.best_value is None:
            best = "no complete trial"
        elif result.pareto:
            objectives, values = tuple(result.best_values), list(result.best_values.values())
            best = f"Pareto front of {len(result.pareto)}; generator trial {result.best_trial}: " + results.values_text(
                objectives, values, result.summary_error
            )
        else:
            best = f"best val_mse {result.best_value:.5f} (trial {result.best_trial})"
        click.echo(f"{result.name}: {held}; {best}; run {result.run_id}; {result.seconds:.0f} s")
        if result.registered:
            name, version, alias = result.registered
            click.echo(f"  registered {name} version {version} as @{alias}: models:/{name}@{alias}")


@click.command(cls=Command, context_settings=CONTEXT)
@click.option("--vae", default=names.model_uri("vae"), show_default=True, help="model URI or run id; 'none' skips")
@click.option("--cvae", default=names.model_uri("cvae"), show_default=True, help="model URI or run id; 'none' skips")
@click.option("--output", type=click.Path(dir_okay=False), default="report.html", show_default=True)
@click.option("--n-eval", type=int, default=N_EVAL, show_default=True, help="points per sample for the metrics")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the samples, classifiers and UMAP")
@click.option("--storage", default="", help="Optuna storage of the studies [default: optuna.db beside mlflow.db]")
def analyse(vae: str, cvae: str, output: str, n_eval: int, seed: int, storage: str) -> None:
    """Measure the registered models, check the study's findings, write report.html; one MLflow run `analyse`."""
    references = {kind: ref for kind, ref in (("vae", vae), ("cvae", cvae)) if ref.strip().lower() != "none"}
    if not references:
        fail("nothing to analyse: both --vae and --cvae are 'none'")
    if n_eval < 100:
        fail(f"n_eval must be an integer >= 100, got {n_eval}")
    if seed < 0:
        fail(f"seed must be an integer >= 0, got {seed}")
    from moonvae.analysis.analyse import AnalyseError, load_subjects
    from moonvae.analysis.analyse import analyse as run_analysis
    from moonvae.tracking import runs
    from moonvae.tuning import studies

    mlflow_client = runs.client()
    try:
        subjects = load_subjects(references)
    except AnalyseError as error:
        fail(str(error))
    resume = os.environ.get("MLFLOW_RUN_ID")
    with runs.run(mlflow_client, "analyse", resume_run_id=resume, tags={names.KIND_TAG: "analyse"}) as run_id:
        click.echo(f"run {run_id} on {runs.tracking_uri()}")
        result = run_analysis(
            subjects,
            Path(output),
            mlflow_client=mlflow_client,
            run_id=run_id,
            storage=storage or studies.existing_default_storage(),
            n_eval=n_eval,
            seed=seed,
            progress=click.echo,
        )
    click.echo(f"studies read: {result.studies.cited() or 'none'}")
    for finding in result.findings:
        click.echo(f"finding {finding.number}: {finding.verdict}")
    click.echo(f"done: {len(result.metrics)} metrics, {len(result.figures)} figures in {output}")


@click.group(cls=Group, context_settings=CONTEXT)
def main() -> None:
    """Train, tune and analyse a VAE and a CVAE on the two-moons data, tracked with MLflow."""


for command in (train, tune, analyse):
    main.add_command(command)
