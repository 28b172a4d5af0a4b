"""Train several configs at once as one vectorised model: the per-op overhead of an epoch is paid once.

A trial's network is too small to keep a core busy: `train.fit` spends most of an
epoch in Python and in torch's dispatch. Here the members of a stack share every
op: their parameters live in one [K, P] buffer, each member's layers zero-padded
to the widest in the stack, and the forward and backward passes are batched
matmuls written out by hand (`passes`).

Padding is exact, not approximate: a padded unit has zero weights in and out, so
its activation is 0 and ReLU passes it no gradient; a padded latent has mean 0,
log-variance 0 and no noise, so its KL term, its z and every gradient through it
are 0. Zero gradients leave Adam's moments at 0, so padded weights stay 0 and
each member computes exactly its own network. (The VampPrior's gradients come from
autograd, whose rounding leaves a trace on padded entries: they are masked to 0.)

Each member draws its batch order and noise from its own generator seeded with
its own seed, so its numbers do not depend on which others train beside it.
`fit_batch` splits the configs into stacks by a rough cost model (`stacks.partition`):
narrow networks share one, wide ones are not padded onto them. Each member
follows train.fit's rules between epochs (`train.Schedule`); members that
finish (early stopping, max_epochs, divergence, a stop from the callback) leave
their stack at the end of the epoch, and its padding shrinks to the widest left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from moonvae.config import RunConfig
from moonvae.core import layout
from moonvae.core.data import Split
from moonvae.core.models import VAE, build_model
from moonvae.core.passes import Layers, backward, forward
from moonvae.core.stacks import partition
from moonvae.core.train import EpochMetrics, Schedule, TrainingDiverged, TrainResult, adam_step

BatchCallback = Callable[[int, EpochMetrics], None]


@dataclass
class BatchMember:
    """One config's outcome: its own unpadded network (best weights, eval mode) and its history."""

    config: RunConfig
    network: VAE
    result: TrainResult
    error: Exception | None = None  # TrainingDiverged, or what on_epoch raised to stop this member

    @property
    def diverged(self) -> bool:
        return isinstance(self.error, TrainingDiverged)


@dataclass
class _Member:
    """A member's bookkeeping between epochs: its place in fit_batch's configs, its noise and its schedule."""

    index: int  # position in fit_batch's configs
    config: RunConfig
    network: VAE
    generator: torch.Generator
    schedule: Schedule
    error: Exception | None = None

    def end_epoch(self, metrics: EpochMetrics, on_epoch: BatchCallback | None) -> tuple[bool, bool]:
        """Record an epoch as train.fit does; returns (val MSE improved, member done)."""
        try:
            improved = self.schedule.record(metrics)
        except TrainingDiverged as error:
            self.error = error
            return False, True
        if on_epoch is not None:
            try:
                on_epoch(self.index, metrics)
            except Exception as error:  # a pruner's signal: this member stops, the others go on
                self.error = error
                return improved, True
        return improved, self.schedule.done(metrics.epoch)


def _inputs(split: Split, conditional: bool) -> torch.Tensor:
    """[x, y] as the encoder sees it (x alone for the VAE)."""
    return torch.cat([split.x, split.y[:, None].to(split.x.dtype)], dim=1) if conditional else split.x


def _per_member(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None, None]


class _Stack:
    """The unfinished members' weights, Adam moments and best weights as [K, P] buffers, laid out as `shapes`."""

    def __init__(self, members: list[_Member], train: Split, val: Split) -> None:
        model, self.batch_size = members[0].config.model, members[0].config.train.batch_size
        self.conditions = int(model.conditional)
        self.train_inputs, self.val_inputs = _inputs(train, model.conditional), _inputs(val, model.conditional)
        self.members, self.shapes = members, layout.of([member.config for member in members])
        rows = [layout.pad(layout.network_tensors(member.network), self.shapes) for member in members]
        self.weights = torch.cat(rows)
        self.moment1, self.moment2 = torch.zeros_like(self.weights), torch.zeros_like(self.weights)
        self.best = self.weights.clone()
        self.steps = 0  # Adam's step count: the same for every member, as all start together
        self._set_constants()

    def _set_constants(self) -> None:
        """Per-member tensors, made again whenever members leave."""
        configs = [member.config for member in self.members]
        self.layers = Layers.of(self.weights, self.shapes)
        self.eps_w = _per_member([config.model.eps_w for config in configs])
        self.beta = _per_member([config.model.beta for config in configs])
        self.grad_clip = _per_member([config.train.grad_clip for config in configs])[:, 0]
        latent = self.shapes["head.weight"][2]
        # the padded latents' noise stays 0; allocated once, as faulting in fresh pages every epoch was slow
        self.noise = torch.zeros(len(self.members), len(self.train_inputs), latent)
        self.kl_scale = None  # the study's loss: 1
        if any(config.model.kl_scale != 1 for config in configs):
            self.kl_scale = torch.ones(len(configs), 1, latent)
            for row, config in enumerate(configs):
                self.kl_scale[row, :, : config.model.latent_dim] = config.model.kl_scale
        # the VampPrior's gradients come from autograd, whose rounding would move padded weights: they are masked
        self.own = layout.own_entries(configs, self.shapes) if self.layers.pseudo_inputs is not None else None

    def train_epoch(self) -> torch.Tensor:
        """One epoch of Adam steps for every member; returns each member's mean train loss [K]."""
        n = len(self.train_inputs)
        orders = []
        for row, member in enumerate(self.members):  # as train.fit: the permutation, then the noise
            orders.append(torch.randperm(n, generator=member.generator))
            latent = member.config.model.latent_dim
            self.noise[row, :, :latent] = torch.randn(n, latent, generator=member.generator)
        self.noise.mul_(self.eps_w)
        inputs = self.train_inputs[torch.stack(orders)]
        lr = torch.tensor([member.schedule.lr for member in self.members], dtype=torch.float64)[:, None]
        total = torch.zeros(len(self.members))
        for batch, noise in zip(inputs.split(self.batch_size, 1), self.noise.split(self.batch_size, 1), strict=True):
            loss, grad = self._gradient(batch, noise)
            total += loss * batch.shape[1]
            self._adam_step(grad, lr)
        return total / n

    def _gradient(self, batch: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's loss [K] on the batch and its gradient [K, P]: by hand, or by autograd with the VampPrior."""
        if self.own is None:
            state = forward(self.layers, batch, noise, self.kl_scale)
            return state.loss(self.beta), backward(self.layers, state, self.beta, self.conditions).flat()
        weights = self.weights.detach().requires_grad_()
        loss = forward(Layers.of(weights, self.shapes), batch, noise, self.kl_scale).loss(self.beta)
        (grad,) = torch.autograd.grad(loss.sum(), weights)  # members share no weight: each row is its own gradient
        return loss.detach(), grad.mul_(self.own)

    def _adam_step(self, grad: torch.Tensor, lr: torch.Tensor) -> None:
        """clip_grad_norm_ per member, then torch.optim.Adam's update with each member's lr: train.fit's step."""
        self.steps += 1
        adam_step(self.weights, grad, (self.moment1, self.moment2), self.steps, lr, self.grad_clip)

    def validate(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """val loss, MSE and KL [K] with z at the posterior mean, as train.loss_terms."""
        state = forward(self.layers, self.val_inputs.expand(len(self.members), -1, -1), None, self.kl_scale)
        return state.loss(self.beta), state.mse, state.kl

    def sigma_x(self) -> list[float | None]:
        """Each member's learned observation noise (None under MSE)."""
        if self.layers.log_sigma is None:
            return [None] * len(self.members)
        return self.layers.log_sigma[:, 0].exp().tolist()

    def epoch(self, epoch: int, on_epoch: BatchCallback | None) -> None:
        """Train and validate every member for one epoch, let each record it; finished members leave."""
        train_loss = self.train_epoch()
        figures = torch.stack([train_loss, *self.validate()], dim=1).tolist()
        improved, done = [], []
        for row, (member, sigma_x) in enumerate(zip(self.members, self.sigma_x(), strict=True)):
            metrics = EpochMetrics(epoch, *figures[row], member.schedule.lr, sigma_x)
            member_improved, member_done = member.end_epoch(metrics, on_epoch)
            improved += [row] * member_improved
            done += [row] * member_done
        self.best[improved] = self.weights[improved]
        for row in done:
            member = self.members[row]
            layout.load_tensors(member.network, layout.unpad(self.best[row], self.shapes, layout.of([member.config])))
            member.network.eval()
        if done:
            self.drop(done)

    def drop(self, rows: list[int]) -> None:
        """Finished members leave the buffers, and the padding shrinks to the widest left."""
        kept = [row for row in range(len(self.members)) if row not in rows]
        self.members = [self.members[row] for row in kept]
        if not self.members:
            return
        narrower = layout.of([member.config for member in self.members])
        self.weights, self.moment1, self.moment2, self.best = (
            layout.trim(buffer[kept], self.shapes, narrower)
            for buffer in (self.weights, self.moment1, self.moment2, self.best)
        )
        self.shapes = narrower
        self._set_constants()


def shared(config: RunConfig) -> dict[str, object]:
    """What the members of one fit_batch call must share: the data, the batch size, the model kind, the depths,
    the likelihood and the prior (with its number of pseudo-inputs).

    Everything else (widths, latent size, lr, eps_w, beta, seeds, schedules) may differ.
    """
    model = config.model
    return {
        "data": config.data,
        "batch_size": config.train.batch_size,
        "model": model.model,
        "encoder depth": len(model.encoder_hidden),
        "decoder depth": len(model.decoder_hidden),
        "likelihood": model.likelihood,
        "prior": model.prior,
        "pseudo_inputs": model.pseudo_inputs if model.vamp else None,
    }


def _check_compatible(configs: Sequence[RunConfig]) -> None:
    if not configs:
        raise ValueError("fit_batch needs at least one config")
    first = shared(configs[0])
    for config in configs[1:]:
        for what, mine in shared(config).items():
            if mine != first[what]:
                raise ValueError(f"batch members must share their {what}: {mine} != {first[what]}")


def fit_batch(
    configs: Sequence[RunConfig],
    train: Split,
    val: Split,
    on_epoch: BatchCallback | None = None,
    *,
    networks: Sequence[VAE] | None = None,
) -> list[BatchMember]:
    """train.fit for every config at once; one BatchMember per config, in order.

    `networks` (one per config, as build_model makes them) are trained in place of fresh
    ones, and end with their best weights (a trial's run has made and logged them already).

    Each member follows its own lr, ReduceLROnPlateau, gradient clipping, early
    stopping (patience, min_epochs, max_epochs) and keeps its best weights.
    `on_epoch(index, metrics)` is called after each member's epoch with the member's
    position in `configs`; an Exception it raises stops that member only (kept as
    its `error`), a KeyboardInterrupt stops the batch. A member whose loss is not
    finite stops with a TrainingDiverged error; the others go on.

    The members are split into stacks (`partition`) that train in lockstep. A
    member's numbers do not depend on the others. Alone, they are train.fit's to
    float rounding when every batch's noise (rows x latent_dim) is a multiple of 16
    values: a member draws an epoch's noise at once, and torch makes normals in
    blocks of 16, so only then is that the same draw as fit's, batch after batch.
    """
    _check_compatible(configs)
    members = []
    for index, config in enumerate(configs):
        generator = torch.Generator().manual_seed(config.train.seed)
        network = networks[index] if networks is not None else build_model(config.model, config.train.seed)
        members.append(_Member(index, config, network, generator, Schedule(config.train)))
    stacks = [_Stack([members[i] for i in group], train, val) for group in partition(configs)]
    epoch = 0
    while stacks:
        for stack in stacks:
            stack.epoch(epoch, on_epoch)
        stacks = [stack for stack in stacks if stack.members]
        epoch += 1
    return [BatchMember(member.config, member.network, member.schedule.result, member.error) for member in members]
