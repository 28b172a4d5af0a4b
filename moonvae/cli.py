"""The `moonvae` command: parses and validates options, then calls the library.

Option names mirror the MLproject parameters (`--latent-dim` for `-P latent_dim=`).
Every user error ends in one line on stderr and exit code 2; no run is left RUNNING.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from mlflow.entities import RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from moonvae import tracking
from moonvae.analyse import DEFAULT_MODELS, AnalyseError, default_storage, load_subjects
from moonvae.analyse import analyse as run_analysis
from moonvae.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig
from moonvae.evaluate import N_EVAL
from moonvae.train import EpochMetrics, TrainingDiverged

EPOCH_LINE_EVERY = 25  # print one console line per this many epochs
CHAMPION = "champion"  # the alias users load: models:/NAME@champion


class OneLineErrors(click.Group):
    """Print usage errors as one line (`moonvae: error: ...`) instead of click's usage block."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.Abort:
            click.echo("moonvae: aborted", err=True)
            sys.exit(130)
        except click.ClickException as error:
            fail(error.format_message(), code=error.exit_code)


def fail(message: str, code: int = 2) -> None:
    """Report a user error in one line, marking an `mlflow run` run FAILED so none stays RUNNING."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        tracking.end_run(tracking.client(), run_id, RunStatus.FAILED, message)
    click.echo(f"moonvae: error: {message}", err=True)
    sys.exit(code)


def _defaults(part: type) -> dict[str, Any]:
    return {name: field.default for name, field in part.__dataclass_fields__.items()}


DATA, MODEL, TRAIN = _defaults(DataConfig), _defaults(ModelConfig), _defaults(TrainConfig)


def training_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The training parameters every entry point accepts, with the study's defaults."""
    options = [
        click.option("--model", type=str, default="vae", show_default=True, help="vae or cvae"),
        click.option("--n-samples", type=int, default=DATA["n_samples"], show_default=True),
        click.option("--noise", type=float, default=DATA["noise"], show_default=True),
        click.option("--data-seed", type=int, default=DATA["data_seed"], show_default=True),
        click.option("--batch-size", type=int, default=TRAIN["batch_size"], show_default=True),
        click.option("--lr", type=float, default=TRAIN["lr"], show_default=True),
        click.option("--encoder-hidden", type=str, default="8", show_default=True, help="width, or widths as 16,8"),
        click.option("--decoder-hidden", type=str, default="128", show_default=True, help="width, or widths as 64,128"),
        click.option("--latent-dim", type=int, default=MODEL["latent_dim"], show_default=True),
        click.option("--beta", type=float, default=MODEL["beta"], show_default=True, help="KL weight"),
        click.option(
            "--eps-w", type=float, default=MODEL["eps_w"], show_default=True, help="reparameterisation noise weight"
        ),
        click.option("--max-epochs", type=int, default=TRAIN["max_epochs"], show_default=True),
        click.option(
            "--patience", type=int, default=TRAIN["patience"], show_default=True, help="early stopping, epochs"
        ),
        click.option("--seed", type=int, default=TRAIN["seed"], show_default=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def run_config(values: dict[str, Any]) -> RunConfig:
    """Validated config from CLI values, or a one-line error naming the parameter."""
    try:
        return RunConfig.from_flat(values).validate()
    except ConfigError as error:
        fail(str(error))
        raise  # unreachable: fail exits


def print_epoch(metrics: EpochMetrics) -> None:
    if metrics.epoch % EPOCH_LINE_EVERY == 0:
        click.echo(
            f"epoch {metrics.epoch:4d}  train_loss {metrics.train_loss:.5f}  val_mse {metrics.val_mse:.5f}  "
            f"val_kl {metrics.val_kl:.5f}  lr {metrics.lr:.0e}"
        )


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train, tune and analyse a VAE and a CVAE on the two-moons data, tracked with MLflow."""


def registered_model_name(name: str) -> str:
    """A registry name usable in `models:/NAME@champion`, or a one-line error."""
    if not name.strip() or any(char in name for char in "/:@"):
        fail(f"register must be a model name without '/', ':' or '@', got {name!r}")
    return name


@main.command()
@training_options
@click.option(
    "--register",
    default="",
    metavar="NAME",
    help="register the model as a new version of NAME with alias champion (empty: do not register)",
)
def train(register: str, **values: Any) -> None:
    """Train one model and log it as an MLflow run (params, per-epoch metrics, plots, model)."""
    from moonvae.experiment import run_training

    config = run_config(values)
    name = registered_model_name(register) if register else None
    mlflow_client = tracking.client()
    resume = os.environ.get("MLFLOW_RUN_ID")
    try:
        with tracking.run(mlflow_client, f"train-{config.model.model}", resume_run_id=resume) as run_id:
            click.echo(f"run {run_id} on {tracking.tracking_uri()}")
            outcome = run_training(config, mlflow_client, run_id, on_epoch=print_epoch)
            if name:
                version = tracking.register_model(mlflow_client, outcome.model_info, name, alias=CHAMPION)
    except TrainingDiverged as error:
        fail(str(error), code=1)
    metrics = outcome.final_metrics()
    click.echo(
        f"done: {metrics['epochs']} epochs, best val_mse {metrics['best_val_mse']:.5f} "
        f"(epoch {metrics['best_epoch']}), test_mse {metrics['test_mse']:.5f}, test_kl {metrics['test_kl']:.5f}"
    )
    if name:
        click.echo(f"registered {name} version {version}: load it with models:/{name}@{CHAMPION}")


def _not_yet(name: str) -> Callable[..., None]:
    def command(**_: Any) -> None:
        fail(f"'{name}' is not yet available", code=1)

    return command


main.command(name="tune", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})(_not_yet("tune"))


@main.command()
@click.option("--vae", default=DEFAULT_MODELS["vae"], show_default=True, help="VAE model URI or run id; 'none' skips")
@click.option(
    "--cvae", default=DEFAULT_MODELS["cvae"], show_default=True, help="CVAE model URI or run id; 'none' skips"
)
@click.option("--output", type=click.Path(dir_okay=False), default="report.html", show_default=True)
@click.option("--n-eval", type=int, default=N_EVAL, show_default=True, help="points per sample for the metrics")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the samples, classifiers and UMAP")
@click.option("--storage", default="", help="Optuna storage of the studies [default: optuna.db beside mlflow.db]")
@click.option("--study-prefix", default="moonvae", show_default=True, help="studies are PREFIX-{vae,cvae}-{space}")
def analyse(vae: str, cvae: str, output: str, n_eval: int, seed: int, storage: str, study_prefix: str) -> None:
    """Measure the registered models, check the study's findings, write report.html; one MLflow run `analyse`."""
    references = {kind: ref for kind, ref in (("vae", vae), ("cvae", cvae)) if ref.strip().lower() != "none"}
    if not references:
        fail("nothing to analyse: both --vae and --cvae are 'none'")
    if n_eval < 100:
        fail(f"n_eval must be an integer >= 100, got {n_eval}")
    if seed < 0:
        fail(f"seed must be an integer >= 0, got {seed}")
    mlflow_client = tracking.client()
    try:
        subjects = load_subjects(references)
    except AnalyseError as error:
        fail(str(error))
    resume = os.environ.get("MLFLOW_RUN_ID")
    with tracking.run(mlflow_client, "analyse", resume_run_id=resume, tags={MLFLOW_RUN_NAME: "analyse"}) as run_id:
        click.echo(f"run {run_id} on {tracking.tracking_uri()}")
        result = run_analysis(
            subjects,
            Path(output),
            mlflow_client=mlflow_client,
            run_id=run_id,
            storage=storage or default_storage(),
            study_prefix=study_prefix,
            n_eval=n_eval,
            seed=seed,
            progress=click.echo,
        )
    for finding in result.findings:
        click.echo(f"finding {finding.number}: {finding.verdict}")
    click.echo(f"done: {len(result.metrics)} metrics, {len(result.figures)} figures in {output}")
