"""One tracked training run: data, model, loop, test metrics, plots and the logged model.

Shared by `moonvae train` (one run) and the tuner (one nested run per trial).
It calls `tracking` and `pyfunc` for everything MLflow, and never the MLflow API itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from moonvae import data as moons
from moonvae import latent_stats, plots, pyfunc, tracking
from moonvae.config import RunConfig
from moonvae.models import VAE, LossTerms, build_model, latent_bank
from moonvae.tracking import Client, ModelInfo
from moonvae.train import EpochCallback, EpochMetrics, TrainResult, evaluate, fit

SAMPLE_SEED = 0  # prior samples in the logged plot


@dataclass
class Outcome:
    network: VAE
    result: TrainResult
    test: LossTerms
    data: moons.MoonsData
    model_info: ModelInfo | None
    train_mse: float = float("nan")  # on the training split: over-fitting is test_mse minus this
    usage: dict[str, float] = field(default_factory=dict)  # active units and I(x; z): how much latent is used

    def final_metrics(self) -> dict[str, float]:
        return {
            "best_val_mse": self.result.best_val_mse,
            "best_epoch": self.result.best_epoch,
            "epochs": len(self.result.history),
            "test_mse": self.test.mse.item(),
            "test_kl": self.test.kl.item(),
            "test_loss": self.test.loss.item(),
            "train_mse": self.train_mse,
            **self.usage,
        }


def prior_samples(network: VAE, labels: torch.Tensor, seed: int = SAMPLE_SEED) -> np.ndarray:
    """One prior sample per label (the VAE ignores the labels)."""
    return network.sample(len(labels), labels, torch.Generator().manual_seed(seed)).numpy()


def log_plots(mlflow_client: Client, run_id: str, network: VAE, data: moons.MoonsData) -> None:
    test = data.test
    with torch.inference_mode():
        reconstruction = network(test.x, test.y)[0].numpy()
    labels = test.y.numpy()
    tracking.log_figure(
        mlflow_client,
        run_id,
        plots.panels({"train data": (data.train.x.numpy(), data.train.y.numpy())}, "Training data"),
        "plots/data.html",
    )
    tracking.log_figure(
        mlflow_client,
        run_id,
        plots.panels(
            {
                "test data": (test.x.numpy(), labels),
                "reconstruction": (reconstruction, labels),
                "prior samples": (prior_samples(network, test.y), labels),
            },
            f"{network.config.model.upper()}: test data, reconstructions and samples",
        ),
        "plots/reconstruction.html",
    )


def run_training(
    config: RunConfig,
    mlflow_client: Client,
    run_id: str,
    *,
    on_epoch: EpochCallback | None = None,
    log_model: bool = True,
    cache_dir: Path = moons.DEFAULT_CACHE_DIR,
) -> Outcome:
    """Train `config` and log params, data, per-epoch and final metrics, plots and the model to `run_id`.

    Epoch metrics are flushed even when `on_epoch` raises (a pruned trial keeps its curves).
    """
    data = moons.load(config.data, cache_dir)
    tracking.log_params(mlflow_client, run_id, config.params())
    with np.load(data.path) as arrays:
        tracking.log_dataset(mlflow_client, run_id, arrays["X"], arrays["y"], data.path)
    network = build_model(config.model, config.train.seed)
    with tracking.MetricBuffer(mlflow_client, run_id) as buffer:

        def log_epoch(metrics: EpochMetrics) -> None:
            buffer.add(metrics.as_dict(), step=metrics.epoch)
            if on_epoch is not None:
                on_epoch(metrics)

        result = fit(network, data.train, data.val, config.train, on_epoch=log_epoch)
        test = evaluate(network, data.test)
        bank = latent_bank(network, data.train.x, data.train.y)
        usage = latent_stats.latent_usage(bank.mean, bank.logvar, eps_w=config.model.eps_w)
        train_mse = evaluate(network, data.train).mse.item()
        outcome = Outcome(network, result, test, data, model_info=None, train_mse=train_mse, usage=usage)
        buffer.add(outcome.final_metrics())
    log_plots(mlflow_client, run_id, network, data)
    if log_model:
        outcome.model_info = pyfunc.log_model(run_id, network, config, data.train)
    return outcome
