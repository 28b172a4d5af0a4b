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


ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
ADAM_EPS = 1e-8
CLIP_EPS = 1e-6  # clip_grad_norm_ divides by norm + 1e-6


def adam_step(
    weights: torch.Tensor,
    grad: torch.Tensor,
    moments: tuple[torch.Tensor, torch.Tensor],
    step: int,
    lr: torch.Tensor,
    grad_clip: torch.Tensor,
) -> None:
    """clip_grad_norm_ per row, then torch.optim.Adam's update (its defaults) with each row's lr, in place.

    Rows of [K, P] buffers are networks: one for `fit`, a stack's members for `batched.fit_batch`;
    `step` counts from 1, `lr` is [K, 1] float64 and `grad_clip` [K, 1]. Written out rather than
    torch.optim's: the first optimizer a process makes imports torch._dynamo, 1.5 s of a run's
    start, and on one flat buffer the update is a handful of ops whatever the network's depth.
    """
    moment1, moment2 = moments
    grad.mul_((grad_clip / grad.norm(dim=1, keepdim=True).add_(CLIP_EPS)).clamp_(max=1.0))
    beta1, beta2 = ADAM_BETAS
    moment1.lerp_(grad, 1 - beta1)
    moment2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denominator = moment2.sqrt().div_(math.sqrt(1 - beta2**step)).add_(ADAM_EPS)
    step_size = (lr / -(1 - beta1**step)).float()
    weights.addcdiv_(moment1 * step_size, denominator)


def flat_parameters(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's parameters and their gradients made views of two [1, P] buffers: (weights, grad).

    Backward adds into an existing .grad in place, so zeroing `grad` before it and
    stepping `weights` after it trains the model; `own_parameters` undoes this.
    """
    parameters = list(model.parameters())
    weights = torch.cat([parameter.detach().reshape(-1) for parameter in parameters])[None]
    grad = torch.zeros_like(weights)
    offset = 0
    for parameter in parameters:
        size = parameter.numel()
        parameter.data = weights[0, offset : offset + size].view_as(parameter)
        parameter.grad = grad[0, offset : offset + size].view_as(parameter)
        offset += size
    return weights, grad


def own_parameters(model: torch.nn.Module) -> None:
    """Each parameter back in storage of its own, with no gradient: the model as build_model made it."""
    for parameter in model.parameters():
        parameter.data, parameter.grad = parameter.data.clone(), None


def fit(
    model: VAE,
    train: Split,
    val: Split,
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Adam + gradient clipping (`adam_step`), then `Schedule`'s rules after each epoch (early stopping on val MSE).

    Batches are slices of one seeded permutation of the preloaded tensors per
    epoch (no DataLoader). The weights with the best val MSE are restored
    before returning.

    The models are small, so per-call overhead rather than arithmetic sets the
    pace: the parameters live in one flat buffer (`flat_parameters`), so Adam and
    keeping the best weights are a few ops, and the batch losses stay tensors
    until the epoch ends.
    """
    generator = torch.Generator().manual_seed(config.seed)
    weights, grad = flat_parameters(model)
    moments = torch.zeros_like(weights), torch.zeros_like(weights)
    best_weights = weights.clone()
    grad_clip = torch.tensor([[config.grad_clip]])
    schedule = Schedule(config)
    n = len(train)
    batch_sizes = torch.tensor([len(batch) for batch in torch.arange(n).split(config.batch_size)], dtype=torch.float32)
    step = 0
    try:
        for epoch in range(config.max_epochs):
            model.train()
            lr = torch.tensor([[schedule.lr]], dtype=torch.float64)
            order = torch.randperm(n, generator=generator)
            batch_losses = []
            xs, ys = train.x[order].split(config.batch_size), train.y[order].split(config.batch_size)
            for x, y in zip(xs, ys, strict=True):
                x_hat, latents = model(x, y, generator)
                loss = model.loss(x, x_hat, latents).loss
                grad.zero_()
                loss.backward()
                step += 1
                adam_step(weights, grad, moments, step, lr, grad_clip)
                batch_losses.append(loss.detach())
            train_loss = torch.stack(batch_losses).dot(batch_sizes).item() / n
            val_loss, val_mse, val_kl = torch.stack(loss_terms(model, val)).tolist()
            metrics = EpochMetrics(epoch, train_loss, val_loss, val_mse, val_kl, schedule.lr, model.sigma_x)
            if schedule.record(metrics):
                best_weights.copy_(weights)
            if on_epoch is not None:
                on_epoch(metrics)
            if schedule.done(epoch):
                break
        weights.copy_(best_weights)
    finally:  # also when on_epoch stops the run: the model keeps no views of the buffers
        own_parameters(model)
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
