"""VAE and CVAE for 2-D data, as in the study: small MLPs, eps_w-weighted noise, beta-ELBO.

Both models expose the same surface: `encode`, `decode`, `sample`, `forward`, `loss`.
In training mode z = mean + eps_w * eps * std; in eval mode z = mean, so
validation and test metrics are deterministic and reconstructions are the
posterior mean.
"""

from __future__ import annotations

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
    loss: torch.Tensor  # mse + beta * kl, what is minimised
    mse: torch.Tensor  # squared error summed, divided by the number of elements of x
    kl: torch.Tensor  # KL(q(z|x) || N(0, I)) summed, divided by the same count


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
        return self.decoder(self._condition(z, y))

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mean, logvar = self.encode(x, y)
        z = self.reparameterize(mean, logvar, generator)
        return self.decode(z, y), {"mean": mean, "logvar": logvar, "z": z}

    @torch.inference_mode()
    def sample(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode n draws from the prior N(0, I) (the CVAE for the given labels)."""
        z = torch.randn((n, self.config.latent_dim), generator=generator)
        return self.decode(z, y)

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
        return self.decode(self.draw_latent(bank.mean[index], bank.logvar[index], generator), y)

    def loss(self, x: torch.Tensor, x_hat: torch.Tensor, latents: dict[str, torch.Tensor]) -> LossTerms:
        """The study's beta-ELBO with mean reduction over batch x data dims."""
        numel = x.numel()
        mean, logvar = latents["mean"], latents["logvar"]
        mse = torch.sum((x_hat - x) ** 2) / numel
        kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp()) / numel
        return LossTerms(mse + self.config.beta * kl, mse, kl)


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
