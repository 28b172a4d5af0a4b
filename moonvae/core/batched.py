"""Train several configs at once as one vectorised model: the per-op overhead of an epoch is paid once.

A trial's network is too small to keep a core busy: `train.fit` spends most of an
epoch in Python and in torch's dispatch. Here the members of a stack share every
op: their parameters live in one [K, P] buffer, each member's layers zero-padded
to the widest in the stack, and the forward and backward passes are batched
matmuls written out by hand (an MLP's gradients are a few lines; autograd took
2-4x as long on these sizes).

Padding is exact, not approximate: a padded unit has zero weights in and out, so
its activation is 0 and ReLU passes it no gradient; a padded latent has mean 0,
log-variance 0 and no noise, so its KL term, its z and every gradient through it
are 0. Zero gradients leave Adam's moments at 0, so padded weights stay 0 and
each member computes exactly its own network.

Each member draws its batch order and noise from its own generator seeded with
its own seed, so its numbers do not depend on which others train beside it.
`fit_batch` splits the configs into stacks by a rough cost model (`partition`):
narrow networks share one, wide ones are not padded onto them. Members that
finish (early stopping, max_epochs, divergence, a stop from the callback) leave
their stack at the end of the epoch, and its padding shrinks to the widest left.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from moonvae.config import RunConfig
from moonvae.core.data import Split
from moonvae.core.models import CVAE, DATA_DIM, VAE, build_model
from moonvae.core.train import EpochMetrics, TrainingDiverged, TrainResult

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as train.fit uses them
ADAM_EPS = 1e-8
CLIP_EPS = 1e-6  # clip_grad_norm_ divides by norm + 1e-6
PLATEAU_THRESHOLD = 1e-4  # ReduceLROnPlateau's default: "better" means below best * (1 - 1e-4)
PLATEAU_MIN_CHANGE = 1e-8  # ReduceLROnPlateau's eps: smaller lr reductions are skipped

# Which members share a stack. Padding a narrow member to a wide one's widths costs it the wide one's
# arithmetic; a stack of its own costs the per-op overhead once more; and a stack whose activations
# outgrow the core's cache slows every op down (per member, 16 stacked latent-128 networks trained
# slower than one alone). Fitted on a 2-core x86 machine (1 MiB L2 per core) with MKL.
STEP_OVERHEAD_US = 200.0  # Python and dispatch of one stack's ops, whatever their size
MATMUL_NS = 0.06  # per weight and sample: a multiply-add forward, two backward
LATENT_NS = 7.0  # per latent unit and sample: noise, exp, KL and their gradients
HIDDEN_NS = 1.0  # per hidden unit and sample: bias, ReLU and its gradient
STACK_FLOATS = 65536  # most a stack's widest activation may hold (members x batch x width): 256 KiB
NARROW = 16  # products with fewer columns are computed transposed (see _matmul)

BatchCallback = Callable[[int, EpochMetrics], None]
Layout = dict[str, tuple[int, ...]]  # parameter name -> shape of one member's tensor, in buffer order


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


# ---- layout: one member's parameters as named tensors, (in, out) like the matmuls use them ----


def layout(configs: Sequence[RunConfig]) -> Layout:
    """Shapes wide enough for every config: each width is the largest at its position.

    The decoder's first layer takes [y, z] (the label first), so that every member's
    weights sit at the start of each padded dimension and trimming is slicing.
    """
    models = [config.model for config in configs]
    conditions = CVAE.n_conditions if models[0].conditional else VAE.n_conditions
    latent = max(model.latent_dim for model in models)
    shapes: Layout = {}
    fan_in = DATA_DIM + conditions
    for i, width in enumerate(map(max, zip(*(model.encoder_hidden for model in models), strict=True))):
        shapes[f"encoder.{i}.weight"], shapes[f"encoder.{i}.bias"] = (fan_in, width), (1, width)
        fan_in = width
    shapes["head.weight"], shapes["head.bias"] = (fan_in, 2, latent), (1, 2, latent)  # [mean, logvar]
    fan_in = conditions + latent
    for i, width in enumerate(map(max, zip(*(model.decoder_hidden for model in models), strict=True))):
        shapes[f"decoder.{i}.weight"], shapes[f"decoder.{i}.bias"] = (fan_in, width), (1, width)
        fan_in = width
    shapes["out.weight"], shapes["out.bias"] = (fan_in, DATA_DIM), (1, DATA_DIM)
    return shapes


def _linears(body: nn.Sequential) -> list[nn.Linear]:
    return [module for module in body if isinstance(module, nn.Linear)]


def network_tensors(network: VAE) -> dict[str, torch.Tensor]:
    """The network's parameters under `layout`'s names and shapes (copies)."""
    encoder, decoder, conditions = network.encoder, network.decoder, network.n_conditions
    tensors = {}
    for prefix, body in (("encoder", encoder.body), ("decoder", decoder.body)):
        for i, linear in enumerate(_linears(body)):
            tensors[f"{prefix}.{i}.weight"], tensors[f"{prefix}.{i}.bias"] = linear.weight.T, linear.bias[None]
    tensors["decoder.0.weight"] = tensors["decoder.0.weight"].roll(conditions, dims=0)  # [z, y] -> [y, z]
    tensors["head.weight"] = torch.stack([encoder.mean.weight.T, encoder.logvar.weight.T], dim=1)
    tensors["head.bias"] = torch.stack([encoder.mean.bias, encoder.logvar.bias])[None]
    tensors["out.weight"], tensors["out.bias"] = decoder.out.weight.T, decoder.out.bias[None]
    return {name: tensor.detach().clone() for name, tensor in tensors.items()}


@torch.no_grad()
def load_network(network: VAE, tensors: dict[str, torch.Tensor]) -> None:
    """The inverse of `network_tensors`: copy unpadded tensors into the network's parameters."""
    encoder, decoder, conditions = network.encoder, network.decoder, network.n_conditions
    for prefix, body in (("encoder", encoder.body), ("decoder", decoder.body)):
        for i, linear in enumerate(_linears(body)):
            weight = tensors[f"{prefix}.{i}.weight"]
            if prefix == "decoder" and i == 0:
                weight = weight.roll(-conditions, dims=0)  # [y, z] -> [z, y]
            linear.weight.copy_(weight.T)
            linear.bias.copy_(tensors[f"{prefix}.{i}.bias"][0])
    for index, head in enumerate((encoder.mean, encoder.logvar)):
        head.weight.copy_(tensors["head.weight"][:, index].T)
        head.bias.copy_(tensors["head.bias"][0, index])
    decoder.out.weight.copy_(tensors["out.weight"].T)
    decoder.out.bias.copy_(tensors["out.bias"][0])


def unflatten(flat: torch.Tensor, shapes: Layout) -> dict[str, torch.Tensor]:
    """Views of a [K, P] buffer as named [K, *shape] tensors."""
    sizes = [math.prod(shape) for shape in shapes.values()]
    parts = flat.split(sizes, dim=1)
    return {name: part.view(len(flat), *shape) for (name, shape), part in zip(shapes.items(), parts, strict=True)}


def flatten(tensors: dict[str, torch.Tensor], shapes: Layout) -> torch.Tensor:
    """Named [K, ...] tensors, in `shapes`' order, as one [K, P] buffer."""
    return torch.cat([tensors[name].reshape(len(tensors[name]), -1) for name in shapes], dim=1)


def _prefix(shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(0, size) for size in shape)


def pad(tensors: dict[str, torch.Tensor], shapes: Layout) -> torch.Tensor:
    """One member's tensors zero-padded to `shapes`, as a [1, P] row."""
    padded = {}
    for name, shape in shapes.items():
        padded[name] = torch.zeros((1, *shape))
        padded[name][(0, *_prefix(tensors[name].shape))] = tensors[name]
    return flatten(padded, shapes)


def trim(flat: torch.Tensor, old: Layout, new: Layout) -> torch.Tensor:
    """A [K, P] buffer laid out as `old`, cut down to the narrower `new`."""
    views = unflatten(flat, old)
    return flatten({name: views[name][(slice(None), *_prefix(shape))] for name, shape in new.items()}, new)


def unpad(row: torch.Tensor, shapes: Layout, own: Layout) -> dict[str, torch.Tensor]:
    """One member's [P] row laid out as `shapes`, as its own unpadded tensors."""
    return {name: tensor[0] for name, tensor in unflatten(trim(row[None], shapes, own), own).items()}


# ---- the maths: the same as models.VAE.forward and .loss, for K members at once ----

Linear = tuple[torch.Tensor, torch.Tensor]  # weight [K, fan_in, fan_out], bias [K, 1, fan_out]


@dataclass
class Layers:
    """A stack's weights, or their gradients, layer by layer: views of a [K, P] buffer laid out as `layout`."""

    encoder: list[Linear]
    head: Linear  # the mean's and the log-variance's outputs side by side: fan_out 2 * latent
    decoder: list[Linear]  # the first takes [y, z]
    out: Linear

    @classmethod
    def of(cls, flat: torch.Tensor, shapes: Layout) -> Layers:
        tensors = [tensor.flatten(2) for tensor in unflatten(flat, shapes).values()]
        linears = list(zip(tensors[::2], tensors[1::2], strict=True))
        n_encoder = sum(name.startswith("encoder.") for name in shapes) // 2
        return cls(linears[:n_encoder], linears[n_encoder], linears[n_encoder + 1 : -1], linears[-1])

    def flat(self) -> torch.Tensor:
        tensors = [tensor for linear in (*self.encoder, self.head, *self.decoder, self.out) for tensor in linear]
        return torch.cat([tensor.reshape(len(tensor), -1) for tensor in tensors], dim=1)


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for [K, M, I] x [K, I, N].

    MKL is slow at products of few columns: an output layer's [256, 2] took up to
    8x as long as its transpose [2, 256]. So a product narrower than NARROW columns
    is computed as (b^T a^T)^T; a wider one is not, as the transposed result would
    slow down every elementwise op that meets it.
    """
    if b.shape[2] < NARROW < a.shape[1]:
        return torch.bmm(b.transpose(1, 2), a.transpose(1, 2)).transpose(1, 2)
    return torch.bmm(a, b)


def _relu_mlp(inputs: torch.Tensor, linears: list[Linear]) -> list[torch.Tensor]:
    """The input, then each layer's output."""
    outputs = [inputs]
    for weight, bias in linears:
        outputs.append(_matmul(outputs[-1], weight).add_(bias).relu_())
    return outputs


@dataclass
class Pass:
    """What the backward pass needs from the forward pass."""

    encoder: list[torch.Tensor]  # _relu_mlp's outputs from [x, y]
    decoder: list[torch.Tensor]  # _relu_mlp's outputs from [y, z]
    mean: torch.Tensor
    spread: torch.Tensor | None  # z - mean = eps_w * eps * std (None in eval mode)
    variance_minus_one: torch.Tensor  # exp(logvar) - 1
    error: torch.Tensor  # x_hat - x
    mse: torch.Tensor  # [K]
    kl: torch.Tensor  # [K]


def forward(layers: Layers, inputs: torch.Tensor, scaled_noise: torch.Tensor | None) -> Pass:
    """inputs: [K, B, 2 + conditions] ([x, y]); scaled_noise: [K, B, latent] eps_w * N(0, 1), None in eval mode."""
    encoder = _relu_mlp(inputs, layers.encoder)
    mean, logvar = _matmul(encoder[-1], layers.head[0]).add_(layers.head[1]).chunk(2, dim=2)
    std = logvar.mul(0.5).exp_()
    spread = None if scaled_noise is None else scaled_noise * std
    z = mean if spread is None else mean + spread
    x, y = inputs[..., :DATA_DIM], inputs[..., DATA_DIM:]
    decoder = _relu_mlp(torch.cat([y, z], dim=2) if y.shape[2] else z, layers.decoder)
    error = _matmul(decoder[-1], layers.out[0]).add_(layers.out[1]).sub_(x)
    numel = x.shape[1] * x.shape[2]
    variance_minus_one = std.square().sub_(1)
    mse = error.square().sum((1, 2)) / numel
    # 1 + logvar - mean^2 - exp(logvar), summed; a padded latent adds 1 + 0 - 0 - 1 = 0
    kl = (logvar - variance_minus_one).addcmul_(mean, mean, value=-1).sum((1, 2)) * (-0.5 / numel)
    return Pass(encoder, decoder, mean, spread, variance_minus_one, error, mse, kl)


def _linear_backward(inputs: torch.Tensor, delta: torch.Tensor) -> Linear:
    """The gradients of y = inputs @ weight + bias, given delta = dL/dy."""
    return _matmul(inputs.transpose(1, 2), delta), delta.sum(1, keepdim=True)


def _mlp_backward(
    outputs: list[torch.Tensor], linears: list[Linear], delta: torch.Tensor, to_input: bool
) -> tuple[list[Linear], torch.Tensor]:
    """_relu_mlp's gradients given dL/d(last output), and dL/d(input) if `to_input` (else the first layer's delta)."""
    grads: list[Linear] = []
    for i in reversed(range(len(linears))):
        delta = torch.ops.aten.threshold_backward(delta, outputs[i + 1], 0.0)  # ReLU: delta where output > 0
        grads.insert(0, _linear_backward(outputs[i], delta))
        if i or to_input:
            delta = _matmul(delta, linears[i][0].transpose(1, 2))
    return grads, delta


def backward(layers: Layers, state: Pass, beta: torch.Tensor, conditions: int) -> Layers:
    """d(mse + beta * kl)/d(weights) for every member."""
    numel = state.error.shape[1] * state.error.shape[2]
    delta = state.error * (2 / numel)
    out = _linear_backward(state.decoder[-1], delta)
    decoder, delta = _mlp_backward(state.decoder, layers.decoder, _matmul(delta, layers.out[0].transpose(1, 2)), True)
    d_z, kl_weight = delta[..., conditions:], beta / numel
    d_mean = torch.addcmul(d_z, state.mean, kl_weight)
    d_logvar = (d_z * state.spread).addcmul_(state.variance_minus_one, kl_weight).mul_(0.5)
    d_head = torch.cat([d_mean, d_logvar], dim=2)
    head = _linear_backward(state.encoder[-1], d_head)
    delta = _matmul(d_head, layers.head[0].transpose(1, 2))
    encoder, _ = _mlp_backward(state.encoder, layers.encoder, delta, False)
    return Layers(encoder, head, decoder, out)


# ---- the loop: train.fit's schedule, per member ----


@dataclass
class _Member:
    """A member's bookkeeping between epochs: what train.fit keeps in locals and in its scheduler."""

    index: int  # position in fit_batch's configs
    config: RunConfig
    network: VAE
    generator: torch.Generator
    lr: float
    result: TrainResult = field(default_factory=lambda: TrainResult(0, math.inf, False))
    error: Exception | None = None
    plateau_best: float = math.inf
    bad_epochs: int = 0

    def end_epoch(self, metrics: EpochMetrics, on_epoch: BatchCallback | None) -> tuple[bool, bool]:
        """Record an epoch as train.fit does; returns (val MSE improved, member done)."""
        train, epoch = self.config.train, metrics.epoch
        if not all(math.isfinite(value) for value in metrics.as_dict().values()):
            self.error = TrainingDiverged(
                f"loss is not finite at epoch {epoch} (train_loss={metrics.train_loss}, "
                f"val_loss={metrics.val_loss}); try a lower lr"
            )
            return False, True
        self.result.history.append(metrics)
        self._reduce_lr_on_plateau(metrics.val_loss)
        improved = metrics.val_mse < self.result.best_val_mse
        if improved:
            self.result.best_val_mse, self.result.best_epoch = metrics.val_mse, epoch
        if on_epoch is not None:
            try:
                on_epoch(self.index, metrics)
            except Exception as error:  # a pruner's signal: this member stops, the others go on
                self.error = error
                return improved, True
        if epoch + 1 >= train.min_epochs and epoch - self.result.best_epoch >= train.patience:
            self.result.stopped_early = True
            return improved, True
        return improved, epoch + 1 >= train.max_epochs

    def _reduce_lr_on_plateau(self, val_loss: float) -> None:
        """torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min") with its default threshold, cooldown and min_lr."""
        if val_loss < self.plateau_best * (1 - PLATEAU_THRESHOLD):
            self.plateau_best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.config.train.lr_patience:
            reduced = self.lr * self.config.train.lr_factor
            if self.lr - reduced > PLATEAU_MIN_CHANGE:
                self.lr = reduced
            self.bad_epochs = 0


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
        self.members, self.shapes = members, layout([member.config for member in members])
        self.weights = torch.cat([pad(network_tensors(member.network), self.shapes) for member in members])
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
        # the padded latents' noise stays 0; allocated once, as faulting in fresh pages every epoch was slow
        self.noise = torch.zeros(len(self.members), len(self.train_inputs), self.shapes["head.weight"][2])

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
        lr = torch.tensor([member.lr for member in self.members], dtype=torch.float64)[:, None]
        total = torch.zeros(len(self.members))
        for batch, noise in zip(inputs.split(self.batch_size, 1), self.noise.split(self.batch_size, 1), strict=True):
            state = forward(self.layers, batch, noise)
            total += torch.addcmul(state.mse, self.beta[:, 0, 0], state.kl) * batch.shape[1]
            self._adam_step(backward(self.layers, state, self.beta, self.conditions).flat(), lr)
        return total / n

    def _adam_step(self, grad: torch.Tensor, lr: torch.Tensor) -> None:
        """clip_grad_norm_ per member, then torch.optim.Adam's update with each member's lr."""
        grad.mul_((self.grad_clip / grad.norm(dim=1, keepdim=True).add_(CLIP_EPS)).clamp_(max=1.0))
        self.steps += 1
        beta1, beta2 = ADAM_BETAS
        self.moment1.lerp_(grad, 1 - beta1)
        self.moment2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denominator = self.moment2.sqrt().div_(math.sqrt(1 - beta2**self.steps)).add_(ADAM_EPS)
        step_size = (lr / -(1 - beta1**self.steps)).float()
        self.weights.addcdiv_(self.moment1 * step_size, denominator)

    def validate(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """val loss, MSE and KL [K] with z at the posterior mean, as train.evaluate."""
        state = forward(self.layers, self.val_inputs.expand(len(self.members), -1, -1), None)
        return torch.addcmul(state.mse, self.beta[:, 0, 0], state.kl), state.mse, state.kl

    def epoch(self, epoch: int, on_epoch: BatchCallback | None) -> None:
        """Train and validate every member for one epoch, let each record it; finished members leave."""
        train_loss = self.train_epoch()
        figures = torch.stack([train_loss, *self.validate()], dim=1).tolist()
        improved, done = [], []
        for row, member in enumerate(self.members):
            member_improved, member_done = member.end_epoch(EpochMetrics(epoch, *figures[row], member.lr), on_epoch)
            improved += [row] * member_improved
            done += [row] * member_done
        self.best[improved] = self.weights[improved]
        for row in done:
            member = self.members[row]
            load_network(member.network, unpad(self.best[row], self.shapes, layout([member.config])))
            member.network.eval()
        if done:
            self.drop(done)

    def drop(self, rows: list[int]) -> None:
        """Finished members leave the buffers, and the padding shrinks to the widest left."""
        kept = [row for row in range(len(self.members)) if row not in rows]
        self.members = [self.members[row] for row in kept]
        if not self.members:
            return
        narrower = layout([member.config for member in self.members])
        self.weights, self.moment1, self.moment2, self.best = (
            trim(buffer[kept], self.shapes, narrower)
            for buffer in (self.weights, self.moment1, self.moment2, self.best)
        )
        self.shapes = narrower
        self._set_constants()


def shared(config: RunConfig) -> dict[str, object]:
    """What the members of one fit_batch call must share: the data, the batch size, the model kind and the depths.

    Everything else (widths, latent size, lr, eps_w, beta, seeds, schedules) may differ.
    """
    model = config.model
    return {
        "data": config.data,
        "batch_size": config.train.batch_size,
        "model": model.model,
        "encoder depth": len(model.encoder_hidden),
        "decoder depth": len(model.decoder_hidden),
    }


def _check_compatible(configs: Sequence[RunConfig]) -> None:
    if not configs:
        raise ValueError("fit_batch needs at least one config")
    first = shared(configs[0])
    for config in configs[1:]:
        for what, mine in shared(config).items():
            if mine != first[what]:
                raise ValueError(f"batch members must share their {what}: {mine} != {first[what]}")


def step_cost(configs: Sequence[RunConfig]) -> float:
    """Estimated microseconds of one Adam step of a stack holding `configs`, each padded to the widest."""
    shapes = layout(configs)
    weights = sum(math.prod(shape) for name, shape in shapes.items() if name.endswith(".weight"))
    hidden = sum(shape[-1] for name, shape in shapes.items() if name.endswith(".bias") and "coder." in name)
    per_sample_ns = weights * MATMUL_NS + shapes["head.weight"][2] * LATENT_NS + hidden * HIDDEN_NS
    return STEP_OVERHEAD_US + len(configs) * configs[0].train.batch_size * per_sample_ns / 1000


def _widest(configs: Sequence[RunConfig]) -> int:
    """The widest activation of a stack: a hidden layer, or the head's mean and log-variance together."""
    return max(max(*c.model.encoder_hidden, 2 * c.model.latent_dim, *c.model.decoder_hidden) for c in configs)


def partition(configs: Sequence[RunConfig]) -> list[list[int]]:
    """Indices of configs grouped into stacks that are cheaper together than apart.

    The costliest first, each config joins the stack it adds the least to, if that
    is cheaper than a stack of its own and the stack stays within STACK_FLOATS:
    narrow networks share a stack, a wide one is not padded onto them, and wide
    ones train in small stacks or alone.
    """
    groups: list[list[int]] = []
    for index in sorted(range(len(configs)), key=lambda i: step_cost([configs[i]]), reverse=True):
        alone, best = step_cost([configs[index]]), None
        for group in groups:
            joined = [configs[i] for i in (*group, index)]
            if len(joined) * configs[0].train.batch_size * _widest(joined) > STACK_FLOATS:
                continue
            added = step_cost(joined) - step_cost([configs[i] for i in group])
            if added < alone:
                alone, best = added, group
        if best is None:
            groups.append([index])
        else:
            best.append(index)
    return groups


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
        members.append(_Member(index, config, network, generator, config.train.lr))
    stacks = [_Stack([members[i] for i in group], train, val) for group in partition(configs)]
    epoch = 0
    while stacks:
        for stack in stacks:
            stack.epoch(epoch, on_epoch)
        stacks = [stack for stack in stacks if stack.members]
        epoch += 1
    return [BatchMember(member.config, member.network, member.result, member.error) for member in members]
