"""The forward and backward passes of K stacked networks: models.VAE.forward and .loss, written out by hand.

An MLP's gradients are a few lines, and autograd took 2-4x as long on these
sizes. The tensors are views of a stack's [K, P] buffer (`layout`); every op is
batched over the K members, so its overhead is paid once per stack. `backward`
covers both likelihoods with the normal prior; the VampPrior's KL (`forward`
computes it) is differentiated by autograd (`batched`), its gradient through a
mixture of the encoder's own outputs not being worth deriving by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moonvae.core.layout import EXTRAS, Layout, unflatten
from moonvae.core.models import DATA_DIM, gaussian_nll, log_mixture, log_normal

NARROW = 16  # products with fewer columns are computed transposed (see _matmul)

Linear = tuple[torch.Tensor, torch.Tensor]  # weight [K, fan_in, fan_out], bias [K, 1, fan_out]


@dataclass
class Layers:
    """A stack's weights, or their gradients, layer by layer: views of a [K, P] buffer laid out as `shapes`."""

    encoder: list[Linear]
    head: Linear  # the mean's and the log-variance's outputs side by side: fan_out 2 * latent
    decoder: list[Linear]  # the first takes [y, z]
    out: Linear
    log_sigma: torch.Tensor | None = None  # [K, 1]: the Gaussian likelihood's log sigma_x
    pseudo_inputs: torch.Tensor | None = None  # [K, pseudo_inputs, 2]: the VampPrior's

    @classmethod
    def of(cls, flat: torch.Tensor, shapes: Layout) -> Layers:
        views = unflatten(flat, shapes)
        extras = {name: views.pop(name) for name in EXTRAS if name in views}
        tensors = [tensor.flatten(2) for tensor in views.values()]
        linears = list(zip(tensors[::2], tensors[1::2], strict=True))
        n_encoder = sum(name.startswith("encoder.") for name in shapes) // 2
        return cls(linears[:n_encoder], linears[n_encoder], linears[n_encoder + 1 : -1], linears[-1], **extras)

    def flat(self) -> torch.Tensor:
        tensors = [tensor for linear in (*self.encoder, self.head, *self.decoder, self.out) for tensor in linear]
        tensors += [tensor for tensor in (self.log_sigma, self.pseudo_inputs) if tensor is not None]
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
    variance_minus_one: torch.Tensor | None  # (kl_scale * std)^2 - 1 (None with the VampPrior)
    error: torch.Tensor  # x_hat - x
    mse: torch.Tensor  # [K]
    kl: torch.Tensor  # [K]
    reconstruction: torch.Tensor  # [K]: mse, or the Gaussian negative log-likelihood per coordinate

    def loss(self, beta: torch.Tensor) -> torch.Tensor:
        """[K] reconstruction + beta * kl; beta [K, 1, 1]."""
        return torch.addcmul(self.reconstruction, beta[:, 0, 0], self.kl)


def forward(
    layers: Layers, inputs: torch.Tensor, scaled_noise: torch.Tensor | None, kl_scale: torch.Tensor | None = None
) -> Pass:
    """inputs: [K, B, 2 + conditions] ([x, y]); scaled_noise: [K, B, latent] eps_w * N(0, 1), None in eval mode.

    kl_scale: [K, 1, latent], each member's ModelConfig.kl_scale on its latents and 1 on
    its padding; None for the study's loss, whose scale is 1.
    """
    encoder = _relu_mlp(inputs, layers.encoder)
    mean, logvar = _matmul(encoder[-1], layers.head[0]).add_(layers.head[1]).chunk(2, dim=2)
    std = logvar.mul(0.5).exp_()
    spread = None if scaled_noise is None else scaled_noise * std
    z = mean if spread is None else mean + spread
    x, y = inputs[..., :DATA_DIM], inputs[..., DATA_DIM:]
    decoder = _relu_mlp(torch.cat([y, z], dim=2) if y.shape[2] else z, layers.decoder)
    error = _matmul(decoder[-1], layers.out[0]).add_(layers.out[1]).sub_(x)
    numel = x.shape[1] * x.shape[2]
    mse = error.square().sum((1, 2)) / numel
    reconstruction = mse if layers.log_sigma is None else gaussian_nll(mse, layers.log_sigma[:, 0])
    log_scale = None if kl_scale is None else 2 * kl_scale.log()
    kl_logvar = logvar if log_scale is None else logvar + log_scale
    if layers.pseudo_inputs is not None:
        assert log_scale is not None  # the VampPrior's KL is never the study's
        kl = _vamp_kl(layers, z, mean, kl_logvar, y, log_scale) / numel
        return Pass(encoder, decoder, mean, spread, None, error, mse, kl, reconstruction)
    variance_minus_one = (std if kl_scale is None else std * kl_scale).square().sub_(1)
    # 1 + log(s^2 var) - mean^2 - s^2 var, summed; a padded latent (s = 1) adds 1 + 0 - 0 - 1 = 0
    kl = (kl_logvar - variance_minus_one).addcmul_(mean, mean, value=-1).sum((1, 2)) * (-0.5 / numel)
    return Pass(encoder, decoder, mean, spread, variance_minus_one, error, mse, kl, reconstruction)


def _vamp_kl(
    layers: Layers, z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """[K] sum over rows of log q(z|x) - log p(z), p the VampPrior, as models.VAE.kl.

    logvar is q's, scaled; log_scale [K, 1, latent] scales the pseudo-inputs' posteriors alike.
    A padded latent adds the same log N(0; 0, 1) to q and to every component of p: it cancels.
    """
    assert layers.pseudo_inputs is not None
    pseudo, labels = layers.pseudo_inputs, y[..., 0] if y.shape[2] else None
    if labels is not None:  # each pseudo-input with either label, as models.VAE.log_prior
        tags = torch.arange(2, dtype=pseudo.dtype).repeat_interleave(pseudo.shape[1])
        pseudo = torch.cat([pseudo.repeat(1, 2, 1), tags[None, :, None].expand(len(pseudo), -1, -1)], dim=2)
    pseudo_mean, pseudo_logvar = (
        _matmul(_relu_mlp(pseudo, layers.encoder)[-1], layers.head[0]) + layers.head[1]
    ).chunk(2, dim=2)
    log_prior = log_mixture(z, pseudo_mean, pseudo_logvar + log_scale, labels)
    return (log_normal(z, mean, logvar) - log_prior).sum(1)


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
    """d(reconstruction + beta * kl)/d(weights) for every member, under the normal prior."""
    assert state.variance_minus_one is not None, "the VampPrior's gradients are autograd's"
    numel = state.error.shape[1] * state.error.shape[2]
    delta = state.error * (2 / numel)
    d_log_sigma = None
    if layers.log_sigma is not None:  # nll = mse / (2 sigma^2) + log sigma + const
        precision = layers.log_sigma.mul(-2).exp_()  # [K, 1]
        delta = delta * (0.5 * precision[:, :, None])
        d_log_sigma = 1 - state.mse[:, None] * precision
    out = _linear_backward(state.decoder[-1], delta)
    decoder, delta = _mlp_backward(state.decoder, layers.decoder, _matmul(delta, layers.out[0].transpose(1, 2)), True)
    d_z, kl_weight = delta[..., conditions:], beta / numel
    d_mean = torch.addcmul(d_z, state.mean, kl_weight)
    d_logvar = (d_z * state.spread).addcmul_(state.variance_minus_one, kl_weight).mul_(0.5)
    d_head = torch.cat([d_mean, d_logvar], dim=2)
    head = _linear_backward(state.encoder[-1], d_head)
    delta = _matmul(d_head, layers.head[0].transpose(1, 2))
    encoder, _ = _mlp_backward(state.encoder, layers.encoder, delta, False)
    return Layers(encoder, head, decoder, out, d_log_sigma)
