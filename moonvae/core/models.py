"""VAE and CVAE for 2-D data, as in the study: small MLPs, eps_w-weighted noise, beta-ELBO.

Both models expose the same surface: `encode`, `decode`, `sample`, `forward`, `loss`.
In training mode z = mean + eps_w * eps * std; in eval mode z = mean, so
validation and test metrics are deterministic and reconstructions are the
posterior mean.

Two options change what the model is (`ModelConfig`), each off by default:
- likelihood `gaussian`: p(x|z) = N(decode(z), sigma_x^2 I) with one learned log
  sigma_x (a sigma-VAE, Rybkin et al. 2021), trained on the full Gaussian
  log-likelihood, so the data weigh reconstruction against the KL; samples are
  decode(z) + sigma_x * eps. With `mse`, the study's loss, samples are decode(z).
- prior `vamp`: p(z) is the mixture of the posteriors of K learned 2-D pseudo-inputs
  (VampPrior, Tomczak and Welling 2018), for the CVAE encoded with the requested
  moon, so p(z|y); the KL is estimated on the reparameterised z.
Outside the study's own loss (mse, normal) the KL is that of the posterior z is
drawn from, N(mean, (eps_w * std)^2): then the prior is what the decoder was
trained on, and `source=prior` samples the model. The study's KL takes std alone.
"""

from __future__ import annotations

import math
import threading
from typing import NamedTuple

import torch
from torch import nn

from moonvae.config import ModelConfig

DATA_DIM = 2  # the moons live in the plane
_init_lock = threading.Lock()  # weight init uses torch's global RNG; trials may run in threads


def mlp(in_dim: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """Linear -> ReLU for each hidden width."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """q(z|x): an MLP, then two linear heads for the mean and the log-variance."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.body = mlp(in_dim, hidden)
        self.mean = nn.Linear(hidden[-1], latent_dim)
        self.logvar = nn.Linear(hidden[-1], latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mean(h), self.logvar(h)


class Decoder(nn.Module):
    """p(x|z): an MLP with a linear output (the data are unbounded)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        self.body = mlp(in_dim, hidden)
        self.out = nn.Linear(hidden[-1], out_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(z))


class LossTerms(NamedTuple):
    loss: torch.Tensor  # reconstruction + beta * kl, what is minimised (reconstruction: mse, or the Gaussian nll)
    mse: torch.Tensor  # squared error summed, divided by the number of elements of x
    kl: torch.Tensor  # KL(q(z|x) || p(z)) summed (VampPrior: estimated at z), divided by the same count


class LatentBank(NamedTuple):
    """q(z|x) of a set of points (usually the training split): the aggregate posterior."""

    mean: torch.Tensor  # N x latent_dim
    logvar: torch.Tensor  # N x latent_dim
    y: torch.Tensor  # N moon labels


class VAE(nn.Module):
    """Unconditional VAE; `y` is accepted everywhere and ignored, so callers need not branch."""

    n_conditions = 0  # label columns appended to the encoder and decoder inputs

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(DATA_DIM + self.n_conditions, config.encoder_hidden, config.latent_dim)
        self.decoder = Decoder(config.latent_dim + self.n_conditions, config.decoder_hidden, DATA_DIM)
        # made after the networks, so the same seed gives the same encoder and decoder with or without them
        self.log_sigma = nn.Parameter(torch.zeros(1)) if config.likelihood == "gaussian" else None
        self.pseudo_inputs = nn.Parameter(torch.randn(config.pseudo_inputs, DATA_DIM)) if config.vamp else None

    @property
    def sigma_x(self) -> float | None:
        """The learned observation noise (None under the study's MSE, which has none)."""
        return None if self.log_sigma is None else self.log_sigma.exp().item()

    def _condition(self, inputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return inputs

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x)."""
        return self.encoder(self._condition(x, y))

    def draw_latent(
        self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A draw of q(z|x) as the study defines it: z = mean + eps_w * eps * std (noise scaled by eps_w)."""
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + self.config.eps_w * eps * torch.exp(0.5 * logvar)

    def reparameterize(
        self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A draw of q(z|x) while training; the posterior mean in eval mode, so evaluation is deterministic."""
        return self.draw_latent(mean, logvar, generator) if self.training else mean

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of p(x|z): what reconstructions show."""
        return self.decoder(self._condition(z, y))

    def draw_point(
        self, z: torch.Tensor, y: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A draw of p(x|z): the mean plus sigma_x * eps under the Gaussian likelihood, the mean alone under MSE."""
        x = self.decode(z, y)
        if self.log_sigma is None:
            return x
        return x + self.log_sigma.exp() * torch.randn(x.shape, generator=generator, dtype=x.dtype)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mean, logvar = self.encode(x, y)
        z = self.reparameterize(mean, logvar, generator)
        return self.decode(z, y), {"mean": mean, "logvar": logvar, "z": z, "y": y}

    def draw_prior(
        self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """n draws of p(z): N(0, I), or a random pseudo-input's posterior (for the CVAE with the given labels)."""
        if self.pseudo_inputs is None:
            return torch.randn((n, self.config.latent_dim), generator=generator)
        index = torch.randint(len(self.pseudo_inputs), (n,), generator=generator)
        mean, logvar = self.encode(self.pseudo_inputs[index], y)
        return self.draw_latent(mean, logvar, generator)

    @torch.inference_mode()
    def sample(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of the model from its prior (the CVAE for the given labels)."""
        return self.draw_point(self.draw_prior(n, y, generator), y, generator)

    @torch.inference_mode()
    def sample_posterior(
        self, bank: LatentBank, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decode n draws from the aggregate posterior: a random bank entry's q(z|x), noise scaled by eps_w.

        That is the distribution the decoder was trained on; with a small eps_w it is
        far narrower than the prior. The CVAE draws each entry from its own label's points.
        """
        if y is None:
            index = torch.randint(len(bank.mean), (n,), generator=generator)
        else:
            index = torch.empty(n, dtype=torch.long)
            for label in y.unique():
                rows = (y == label).nonzero().squeeze(1)
                pool = (bank.y == label).nonzero().squeeze(1)
                if len(pool) == 0:
                    raise ValueError(f"the latent bank holds no point with label {int(label)}")
                index[rows] = pool[torch.randint(len(pool), (len(rows),), generator=generator)]
        return self.draw_point(self.draw_latent(bank.mean[index], bank.logvar[index], generator), y, generator)

    def loss(self, x: torch.Tensor, x_hat: torch.Tensor, latents: dict[str, torch.Tensor]) -> LossTerms:
        """The beta-ELBO with mean reduction over batch x data dims: per coordinate, not per point."""
        numel = x.numel()
        mse = torch.sum((x_hat - x) ** 2) / numel
        reconstruction = mse if self.log_sigma is None else gaussian_nll(mse, self.log_sigma[0])
        kl = self.kl(latents) / numel
        return LossTerms(reconstruction + self.config.beta * kl, mse, kl)

    def kl(self, latents: dict[str, torch.Tensor]) -> torch.Tensor:
        """KL(q(z|x) || p(z)) summed over the points: exact for N(0, I), estimated at z for the VampPrior."""
        mean, logvar = latents["mean"], latents["logvar"]
        if self.config.kl_scale != 1:  # the posterior z is drawn from, N(mean, (kl_scale * std)^2)
            logvar = logvar + 2 * math.log(self.config.kl_scale)
        if self.pseudo_inputs is None:
            return -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp())
        return torch.sum(log_normal(latents["z"], mean, logvar) - self.log_prior(latents["z"], latents["y"]))

    def log_prior(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """log p(z) of each row under the VampPrior: the mean of the pseudo-inputs' posteriors (the CVAE's at y)."""
        assert self.pseudo_inputs is not None
        pseudo, labels = self.pseudo_inputs, None
        if self.n_conditions:  # each pseudo-input encoded with either label; each row takes its own label's
            pseudo, labels = pseudo.repeat(2, 1), torch.arange(2).repeat_interleave(len(pseudo))
        mean, logvar = self.encode(pseudo, labels)
        return log_mixture(z, mean, logvar + 2 * math.log(self.config.kl_scale), y if self.n_conditions else None)


class CVAE(VAE):
    """VAE conditioned on the moon label: the encoder sees [x, y], the decoder [z, y]."""

    n_conditions = 1

    def _condition(self, inputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("the CVAE needs the moon label y")
        return torch.cat([inputs, y.reshape(-1, 1).to(inputs.dtype)], dim=1)

    def sample(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        if y is None or len(y) != n:
            raise ValueError("the CVAE samples need one label per sample")
        return super().sample(n, y, generator)


def gaussian_nll(mse: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """-log N(x; x_hat, sigma^2 I) per coordinate, from the mean squared error over the coordinates."""
    return 0.5 * mse * torch.exp(-2 * log_sigma) + log_sigma + 0.5 * math.log(2 * math.pi)


def log_normal(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(logvar)), a diagonal Gaussian, summed over the last dimension."""
    return -0.5 * torch.sum((z - mean).pow(2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi), dim=-1)


def log_mixture(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """log of the equal mixture of diagonal Gaussians N(mean_c, exp(logvar_c)) at each row of z.

    z: [..., rows, d]; mean, logvar: [..., C, d]. With `labels` (one 0/1 per row,
    the CVAE's) the components are two halves, the first for label 0, and each
    row's mixture is its label's half. The squared distances are matrix products
    (rows x C, not rows x C x d), so a batch of 256 against 64 components stays cheap;
    they take float64, as their terms grow with the precision while their difference does
    not: in float32 a posterior of std 1e-3 lost tens of nats per point to rounding, which
    training then learnt to exploit.
    """
    z, mean, logvar = z.double(), mean.double(), logvar.double()
    precision = torch.exp(-logvar)
    squared = z.pow(2) @ precision.mT - 2 * z @ (mean * precision).mT + (mean.pow(2) * precision).sum(-1)[..., None, :]
    log_densities = -0.5 * (squared + (logvar.sum(-1) + z.shape[-1] * math.log(2 * math.pi))[..., None, :])
    if labels is not None:
        first, second = log_densities.chunk(2, dim=-1)
        log_densities = torch.where(labels[..., None] == 1, second, first)
    return (torch.logsumexp(log_densities, dim=-1) - math.log(log_densities.shape[-1])).float()


def build_model(config: ModelConfig, seed: int) -> VAE:
    """A freshly initialised VAE or CVAE; the same seed gives the same weights in any thread."""
    cls = CVAE if config.conditional else VAE
    with _init_lock:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            return cls(config)
        finally:
            torch.random.set_rng_state(state)


@torch.inference_mode()
def latent_bank(network: VAE, x: torch.Tensor, y: torch.Tensor) -> LatentBank:
    mean, logvar = network.encode(x, y)
    return LatentBank(mean, logvar, y)


def traversal_latents(reference: torch.Tensor, dim: int, steps: int) -> torch.Tensor:
    """The study's latent traversal: `steps` latents at the median, dimension `dim` swept from min to max.

    `reference` holds latents (N x d) whose per-dimension min, max and median define the sweep.
    """
    low, high = reference[:, dim].min(), reference[:, dim].max()
    latents = reference.median(dim=0).values.repeat(steps, 1)
    latents[:, dim] = torch.linspace(low.item(), high.item(), steps)
    return latents
