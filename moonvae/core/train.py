"""The training loop: tensors in, best weights and a history out.

Knows nothing of MLflow or Optuna: each finished epoch goes to an optional
callback (which may raise to stop the run, as a pruner does), and the whole
history comes back in the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from moonvae.config import TrainConfig
from moonvae.core.data import Split
from moonvae.core.models import DATA_DIM, VAE, LossTerms, gaussian_nll


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 0-based; also the MLflow step
    train_loss: float
    val_loss: float
    val_mse: float
    val_kl: float
    lr: float  # the learning rate this epoch ran with
    sigma_x: float | None = None  # the Gaussian likelihood's learned observation noise at the epoch's end

    def as_dict(self) -> dict[str, float]:
        values = {
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_mse": self.val_mse,
            "val_kl": self.val_kl,
            "lr": self.lr,
        }
        return values if self.sigma_x is None else values | {"sigma_x": self.sigma_x}


EpochCallback = Callable[[EpochMetrics], None]


@dataclass
class TrainResult:
    best_epoch: int
    best_val_mse: float
    stopped_early: bool  # patience ran out before max_epochs
    history: list[EpochMetrics] = field(default_factory=list)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says at which epoch."""


@torch.inference_mode()
def loss_terms(model: VAE, split: Split) -> LossTerms:
    """Loss terms on a whole split, with z at the posterior mean (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        x_hat, latents = model(split.x, split.y)
        return model.loss(split.x, x_hat, latents)
    finally:
        model.train(was_training)


NELBO_DRAWS = 128  # z drawn per point for negative_elbo: 16 left a Monte Carlo error of 0.017 nats on a sigma-VAE
NELBO_SEED = 0  # the same draws for every model, so their figures compare pairwise


class NegativeElbo(NamedTuple):
    nats: float  # per point, averaged over the points and the draws
    stderr: float  # its Monte Carlo standard error: the spread of the draws' averages over sqrt(draws)


@torch.inference_mode()
def negative_elbo(model: VAE, split: Split, draws: int = NELBO_DRAWS, seed: int = NELBO_SEED) -> NegativeElbo:
    """The negative ELBO in nats per point, beta = 1: E_q[-log p(x|z)] + KL(q(z|x) || p(z)), a bound on -log p(x).

    What a calibrated model is judged by, comparable across models whatever their beta and
    eps_w: q is the posterior z is drawn from, N(mean, (eps_w * std)^2), and the expectation
    takes `draws` seeded draws per point (the VampPrior's KL is estimated on the same draws).
    Only the Gaussian likelihood has a density: an MSE decoder is refused.
    """
    if model.log_sigma is None:
        raise ValueError("the negative ELBO needs the gaussian likelihood: an mse decoder has no density")
    generator = torch.Generator().manual_seed(seed)
    mean, logvar = model.encode(split.x, split.y)
    totals = torch.empty(draws, dtype=torch.float64)
    for draw in range(draws):
        z = model.draw_latent(mean, logvar, generator)
        mse = (model.decode(z, split.y) - split.x).pow(2).mean()
        kl = model.kl({"mean": mean, "logvar": logvar, "z": z, "y": split.y}) / len(split)
        totals[draw] = DATA_DIM * gaussian_nll(mse, model.log_sigma[0]) + kl
    return NegativeElbo(totals.mean().item(), (totals.std() / math.sqrt(draws)).item())


PLATEAU_THRESHOLD = 1e-4  # ReduceLROnPlateau's default: "better" means below best * (1 - 1e-4)
PLATEAU_MIN_CHANGE = 1e-8  # ReduceLROnPlateau's eps: smaller lr reductions are skipped


class Schedule:
    """What happens between epochs, for one run: the rules `fit` and every member of `batched.fit_batch` follow.

    After each epoch: a loss that is not finite ends the run (TrainingDiverged); the
    learning rate drops on a plateau of the validation loss (torch's ReduceLROnPlateau,
    mode min, with its default threshold, cooldown 0 and min_lr 0); the epoch with the
    lowest val MSE is the best; patience epochs without a better one, once past
    min_epochs, stop the run early; max_epochs stops it in any case.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.lr = config.lr
        self.result = TrainResult(best_epoch=0, best_val_mse=math.inf, stopped_early=False)
        self._plateau_best = math.inf
        self._bad_epochs = 0

    def record(self, metrics: EpochMetrics) -> bool:
        """Take a finished epoch into the history and the learning rate; returns whether its val MSE is the best yet."""
        if not all(math.isfinite(value) for value in metrics.as_dict().values()):
            raise TrainingDiverged(
                f"loss is not finite at epoch {metrics.epoch} (train_loss={metrics.train_loss}, "
                f"val_loss={metrics.val_loss}); try a lower lr"
            )
        self.result.history.append(metrics)
        self._reduce_lr_on_plateau(metrics.val_loss)
        if metrics.val_mse < self.result.best_val_mse:
            self.result.best_val_mse, self.result.best_epoch = metrics.val_mse, metrics.epoch
            return True
        return False

    def done(self, epoch: int) -> bool:
        """Whether the run ends after `epoch`: patience ran out past min_epochs (stopped early), or max_epochs."""
        config = self.config
        if epoch + 1 >= config.min_epochs and epoch - self.result.best_epoch >= config.patience:
            self.result.stopped_early = True
            return True
        return epoch + 1 >= config.max_epochs

    def _reduce_lr_on_plateau(self, val_loss: float) -> None:
        if val_loss < self._plateau_best * (1 - PLATEAU_THRESHOLD):
            self._plateau_best, self._bad_epochs = val_loss, 0
        else:
            self._bad_epochs += 1
        if self._bad_epochs > self.config.lr_patience:
            reduced = self.lr * self.config.lr_factor
            if self.lr - reduced > PLATEAU_MIN_CHANGE:
                self.lr = reduced
            self._bad_epochs = 0


def fit(
    model: VAE,
    train: Split,
    val: Split,
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Adam + gradient clipping, then `Schedule`'s rules after each epoch (early stopping on val MSE).

    Batches are slices of one seeded permutation of the preloaded tensors per
    epoch (no DataLoader). The weights with the best val MSE are restored
    before returning.

    The models are small, so per-call overhead rather than arithmetic sets the
    pace: Adam runs fused, the best weights are copied into tensors allocated
    once, and the batch losses stay tensors until the epoch ends.
    """
    generator = torch.Generator().manual_seed(config.seed)
    parameters = list(model.parameters())
    optimizer = torch.optim.Adam(parameters, lr=config.lr, fused=True)
    schedule = Schedule(config)
    weights = list(model.state_dict().values())
    best_weights = [tensor.detach().clone() for tensor in weights]
    n = len(train)
    batch_sizes = torch.tensor([len(batch) for batch in torch.arange(n).split(config.batch_size)], dtype=torch.float32)
    for epoch in range(config.max_epochs):
        model.train()
        optimizer.param_groups[0]["lr"] = lr = schedule.lr
        order = torch.randperm(n, generator=generator)
        batch_losses = []
        for x, y in zip(train.x[order].split(config.batch_size), train.y[order].split(config.batch_size), strict=True):
            x_hat, latents = model(x, y, generator)
            loss = model.loss(x, x_hat, latents).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip, foreach=True)
            optimizer.step()
            batch_losses.append(loss.detach())
        train_loss = torch.stack(batch_losses).dot(batch_sizes).item() / n
        val_loss, val_mse, val_kl = torch.stack(loss_terms(model, val)).tolist()
        metrics = EpochMetrics(epoch, train_loss, val_loss, val_mse, val_kl, lr, model.sigma_x)
        if schedule.record(metrics):
            for best, now in zip(best_weights, weights, strict=True):
                best.copy_(now)
        if on_epoch is not None:
            on_epoch(metrics)
        if schedule.done(epoch):
            break
    for now, best in zip(weights, best_weights, strict=True):
        now.copy_(best)
    model.eval()
    return schedule.result


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Train on one torch thread; parallelism, where wanted, comes from several trials at once.

    These models are too small for intra-op threads to pay: on a 2-core machine
    two torch threads per fit ran 6 to 60 times slower than one when other work
    shared the cores (bench/tune_speed.py).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
