"""One tracked training run: data, model, loop, test metrics, sample quality, images and the logged model.

Shared by `moonvae train` (one run) and the tuner (one nested run per trial).
It calls `tracking` and `pyfunc` for everything MLflow, and never the MLflow API itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from moonvae.config import RunConfig
from moonvae.core import data as moons
from moonvae.core import latent_stats
from moonvae.core.models import VAE, LatentBank, LossTerms, build_model, latent_bank
from moonvae.core.train import EpochCallback, EpochMetrics, TrainResult, fit, loss_terms, negative_elbo
from moonvae.sampling import sources
from moonvae.sampling.sources import Judgement
from moonvae.sampling.sources import draw as draw_samples
from moonvae.tracking import images, names, runs
from moonvae.tracking.registry import ModelInfo
from moonvae.tracking.runs import Client

SAMPLE_SEED = 0  # the same noise in every snapshot, so snapshots differ only by the model
SNAPSHOT_EPOCHS = frozenset({0, 9, 99, 999})  # after 1, 10, 100 and 1000 epochs: a few images, even in log time


@dataclass
class Outcome:
    network: VAE
    result: TrainResult
    test: LossTerms
    data: moons.MoonsData
    model_info: ModelInfo | None
    train_mse: float = float("nan")  # on the training split: over-fitting is test_mse minus this
    usage: dict[str, float] = field(default_factory=dict)  # active units and I(x; z): how much latent is used
    mixture: dict[str, torch.Tensor] | None = None  # the latent mixture, a sampling source the logged model holds
    judgement: Judgement | None = None  # every source's sample quality, and the default source
    calibration: dict[str, float] = field(default_factory=dict)  # Gaussian likelihood: sigma_x and the -ELBOs
    bank: LatentBank | None = None  # the training split's latents: usage is read off them, the judgement samples them

    @classmethod
    def measure(cls, network: VAE, result: TrainResult, data: moons.MoonsData) -> Outcome:
        """The trained network's test and train error and how much of its latent it uses; `judge` then judges its
        samples, in full or screened."""
        bank = latent_bank(network, data.train.x, data.train.y)
        usage = latent_stats.latent_usage(bank.mean, bank.logvar, eps_w=network.config.eps_w)
        train_mse = loss_terms(network, data.train).mse.item()
        calibration = {}
        if network.sigma_x is not None:
            calibration = {
                "best_sigma_x": network.sigma_x,
                "val_nelbo": negative_elbo(network, data.val).nats,
                "test_nelbo": negative_elbo(network, data.test).nats,
            }
        test = loss_terms(network, data.test)
        return cls(network, result, test, data, None, train_mse, usage, calibration=calibration, bank=bank)

    def judge(self, config: RunConfig, *, full: bool) -> None:
        """The samples' quality: in full (the latent mixture fitted with the training seed, every source to
        sources.VALIDATION_ERROR, the check scores) where a decision reads it, else the cheap screening."""
        network, train, bank = self.network, self.data.train, self.bank
        assert bank is not None, "measure() sets it"
        if full:
            self.mixture = sources.fit_latent_mixture(network, self.data, config.train.seed)
            self.judgement = sources.judge_sources(network, bank, self.mixture, train.x, config.data.noise)
        else:
            self.judgement = sources.screen_sources(network, bank, train.x, config.data.noise)

    def final_metrics(self) -> dict[str, float]:
        values = {
            "best_val_mse": self.result.best_val_mse,
            "best_epoch": self.result.best_epoch,
            "epochs": len(self.result.history),
            "test_mse": self.test.mse.item(),
            "test_kl": self.test.kl.item(),
            "test_loss": self.test.loss.item(),
            "train_mse": self.train_mse,
            **self.usage,
            **self.calibration,
        }
        if self.judgement is not None:
            values |= {"mmd_summary": self.judgement.mmd_summary, "mmd_summary_se": self.judgement.mmd_summary_se}
        return values

    def source_metrics(self) -> dict[str, float]:
        """Each sampling source's sample quality, as `<source>_<score>`, `<source>_<score>_se` and `<source>_sets`."""
        return self.judgement.metrics() if self.judgement is not None else {}


class Snapshots:
    """What the network makes of the data as it trains, as images the UI compares across runs.

    Logged as MLflow images under the keys `reconstructions` (test data | reconstructions)
    and `samples` (prior | aggregate posterior: one per test point, coloured by the requested
    moon; the VAE's, blind to moons, in grey), at `epochs` (step = epoch; SNAPSHOT_EPOCHS for a
    `train` run, none for a tuning trial, where they cost a quarter of its bookkeeping) and, for
    the model the run keeps (the best epoch's weights), at step `max_epochs`: one past any
    epoch, and the same step for every trial of a study, so the UI's image grid, which
    matches steps exactly, shows the trials' kept models side by side. That last
    snapshot is also the run's `plots/reconstruction.png`.
    """

    def __init__(
        self,
        mlflow_client: Client,
        run_id: str,
        network: VAE,
        data: moons.MoonsData,
        epochs: frozenset[int] = SNAPSHOT_EPOCHS,
    ) -> None:
        self._client, self._run_id, self._network, self._data = mlflow_client, run_id, network, data
        self.epochs = epochs
        self._panels = images.Panels(2, images.frame(data.train.x.numpy()))  # one figure for both keys

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """Reconstructions and samples of the network as it is now, in eval mode like the metrics.

        Training resumes in the mode it was in; no random state is touched, so a run's numbers do not change.
        """
        network, test = self._network, self._data.test
        was_training = network.training
        network.eval()
        try:
            with torch.inference_mode():
                reconstruction = network(test.x, test.y)[0].numpy()
                bank = latent_bank(network, self._data.train.x, self._data.train.y)
                drawn = draw_samples(network, bank, test, SAMPLE_SEED)
        finally:
            network.train(was_training)
        labels = test.y.numpy()
        requested = labels if network.n_conditions else None
        reconstructions = self._panels.draw(
            {"test data": (test.x.numpy(), labels), "reconstructions": (reconstruction, labels)}
        )
        samples = self._panels.draw(
            {"prior samples": (drawn.prior, requested), "aggregate-posterior samples": (drawn.posterior, requested)}
        )
        return reconstructions, samples

    def log(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        reconstructions, samples = drawn = self.draw()
        runs.log_image(self._client, self._run_id, reconstructions, "reconstructions", step)
        runs.log_image(self._client, self._run_id, samples, "samples", step)
        return drawn

    def on_epoch(self, metrics: EpochMetrics) -> None:
        if metrics.epoch in self.epochs:
            self.log(metrics.epoch)

    def finish(self, max_epochs: int) -> None:
        """With the kept weights restored: their snapshot at step `max_epochs`, and `plots/reconstruction.png`."""
        drawn = self.log(max_epochs)
        runs.log_png(self._client, self._run_id, images.png(np.hstack(drawn)), "plots/reconstruction.png")


def log_data_plot(mlflow_client: Client, run_id: str, data: moons.MoonsData) -> None:
    """The training split, coloured by moon, as `plots/data.png`."""
    training = images.scatter_png({"training data": (data.train.x.numpy(), data.train.y.numpy())})
    runs.log_png(mlflow_client, run_id, training, "plots/data.png")


class TrackedRun:
    """One run around its training: what a `train` run or a trial logs before, during and after `fit`.

    Split in three so the tuner can train many trials as one stack (batched.fit_batch)
    between their starts and their ends, each in its own MLflow run.
    """

    def __init__(
        self,
        config: RunConfig,
        mlflow_client: Client,
        run_id: str,
        cache_dir: Path = moons.DEFAULT_CACHE_DIR,
        snapshot_epochs: frozenset[int] = SNAPSHOT_EPOCHS,
    ) -> None:
        self.config, self.client, self.run_id = config, mlflow_client, run_id
        self.data = moons.load(config.data, cache_dir)
        runs.log_params(mlflow_client, run_id, config.params())
        with np.load(self.data.path) as arrays:
            runs.log_dataset(mlflow_client, run_id, arrays["X"], arrays["y"], self.data.path)
        self.network = build_model(config.model, config.train.seed)
        self.snapshots = Snapshots(mlflow_client, run_id, self.network, self.data, snapshot_epochs)
        self.buffer = runs.MetricBuffer(mlflow_client, run_id)

    def log_epoch(self, metrics: EpochMetrics) -> None:
        self.buffer.add(metrics.as_dict(), step=metrics.epoch)
        self.snapshots.on_epoch(metrics)

    def measure(self, result: TrainResult) -> Outcome:
        """The trained network measured, its samples not judged yet: `finish` judges them."""
        return Outcome.measure(self.network, result, self.data)

    def finish(self, outcome: Outcome, *, full: bool = True, log_model: bool = True) -> Outcome:
        """Judge the samples (in full, or screened: `Outcome.judge`) and log the final metrics, tag, plots and (if
        asked) the model."""
        outcome.judge(self.config, full=full)
        self.buffer.add(outcome.final_metrics() | outcome.source_metrics())
        self.buffer.close()
        runs.set_tag(self.client, self.run_id, names.SAMPLING_SOURCE_TAG, outcome.judgement.default)
        log_data_plot(self.client, self.run_id, self.data)
        self.snapshots.finish(self.config.train.max_epochs)
        if log_model:
            self.log_model(outcome)
        return outcome

    def log_model(self, outcome: Outcome) -> ModelInfo:
        """The trained network as the run's pyfunc model, with its mixture and default source."""
        from moonvae.serving import pyfunc  # MLflow's pyfunc loads with the first model a process logs

        network, config, train = self.network, self.config, self.data.train
        mixture, judgement = outcome.mixture, outcome.judgement
        outcome.model_info = pyfunc.log_model(self.run_id, network, config, train, mixture=mixture, judgement=judgement)
        return outcome.model_info

    def close(self) -> None:
        """Send the epoch metrics still buffered: a run stopped early (pruned, interrupted) keeps its curves."""
        self.buffer.close()


def run_training(
    config: RunConfig,
    mlflow_client: Client,
    run_id: str,
    *,
    on_epoch: EpochCallback | None = None,
    log_model: bool = True,
    cache_dir: Path = moons.DEFAULT_CACHE_DIR,
) -> Outcome:
    """Train `config` and log params, data, per-epoch and final metrics, images and the model to `run_id`.

    Epoch metrics and snapshots are logged even when `on_epoch` raises (a pruned trial keeps its curves).
    """
    tracked = TrackedRun(config, mlflow_client, run_id, cache_dir)
    try:

        def log_epoch(metrics: EpochMetrics) -> None:
            tracked.log_epoch(metrics)
            if on_epoch is not None:
                on_epoch(metrics)

        result = fit(tracked.network, tracked.data.train, tracked.data.val, config.train, on_epoch=log_epoch)
        return tracked.finish(tracked.measure(result), log_model=log_model)
    finally:
        tracked.close()
