"""Typed configs with the study's defaults, and the one place that validates them.

Every user-facing value (CLI option, MLproject parameter, Optuna suggestion) ends
up in one of these dataclasses; `validate()` rejects what cannot train with a
one-line message that names the parameter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

MODELS = ("vae", "cvae")  # the model kinds: an unconditional VAE, and a CVAE conditioned on the moon
LIKELIHOODS = ("mse", "gaussian")  # p(x|z): the study's squared error, or a Gaussian with a learned sigma_x
PRIORS = ("normal", "vamp")  # p(z): N(0, I), or a VampPrior of learned pseudo-inputs
N_TRIALS = 100  # trials a study holds when `tune` is not told otherwise, as in the study
TRIALS_AT_ONCE = 8  # K: trials a worker trains together as one vectorised model (trials.py)
# where a model's samples draw their latents: the aggregate posterior, the prior N(0, I), a fitted latent mixture
SOURCES = ("posterior", "prior", "mixture")


class SpaceName(StrEnum):
    """The searches `tune` runs (`--space`); what each varies is `tuning.spaces`'."""

    BASIC = "basic"  # the study's TPE search of lr, batch size and widths: its best is @champion
    DATA = "data"  # the study's grid of data size x noise
    PROBABILISTIC = "probabilistic"  # the study's random search of eps_w x beta
    IMPORTANCE = "importance"  # findings 1, 2, 5: the basic distributions, random and unpruned
    CAPACITY = "capacity"  # findings 2-4: encoder x decoder x latent width, two seeds
    DATA_SEEDS = "data-seeds"  # findings 6, 7: the data grid, three seeds
    PROBABILISTIC_SEEDS = "probabilistic-seeds"  # finding 8: eps_w x beta, three seeds
    GENERATIVE = "generative"  # reconstruction against sample quality, a Pareto front: its pick is @generator


class ConfigError(ValueError):
    """A user-supplied value that cannot be used; the message names the parameter."""


def parse_widths(value: int | str | list[int] | tuple[int, ...], name: str) -> tuple[int, ...]:
    """Hidden widths as given by users: `8`, `"8"`, `"16,8"` or a list -> a tuple of ints."""
    if isinstance(value, int):
        widths: list[Any] = [value]
    elif isinstance(value, str):
        widths = [part.strip() for part in value.split(",") if part.strip()]
    else:
        widths = list(value)
    try:
        parsed = tuple(int(width) for width in widths)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive integer or comma-separated integers, got {value!r}") from None
    if not parsed or any(width < 1 for width in parsed):
        raise ConfigError(f"{name} must be positive integers, got {value!r}")
    return parsed


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless `condition`: the one way a bad value is refused."""
    if not condition:
        raise ConfigError(message)


def _is_finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclass(frozen=True)
class DataConfig:
    n_samples: int = 2000  # points drawn by make_moons, before the 60/20/20 split
    noise: float = 0.15  # std of the Gaussian noise make_moons adds
    data_seed: int = 42  # random_state of make_moons and of the split

    def validate(self) -> DataConfig:
        # 5 points per class and split is the least a stratified 60/20/20 split can hold
        require(
            isinstance(self.n_samples, int) and self.n_samples >= 10,
            f"n_samples must be an integer >= 10, got {self.n_samples!r}",
        )
        require(_is_finite(self.noise) and self.noise >= 0, f"noise must be a number >= 0, got {self.noise!r}")
        require(
            isinstance(self.data_seed, int) and self.data_seed >= 0,
            f"data_seed must be an integer >= 0, got {self.data_seed!r}",
        )
        return self


@dataclass(frozen=True)
class ModelConfig:
    model: str = "vae"  # vae, or cvae conditioned on the moon label
    encoder_hidden: tuple[int, ...] = (8,)  # the study found wider encoders worse
    decoder_hidden: tuple[int, ...] = (128,)  # must grow with latent_dim
    latent_dim: int = 128
    beta: float = 1.0  # weight of the KL term
    eps_w: float = 0.1  # noise weight in the reparameterisation; 1.0 collapses the posterior
    likelihood: str = "mse"  # mse, the study's loss (samples are the decoder's mean); gaussian: sigma_x learned
    prior: str = "normal"  # normal, N(0, I); vamp: a VampPrior, the posteriors of `pseudo_inputs` learned points
    pseudo_inputs: int = 32  # K, the VampPrior's components

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_hidden", parse_widths(self.encoder_hidden, "encoder_hidden"))
        object.__setattr__(self, "decoder_hidden", parse_widths(self.decoder_hidden, "decoder_hidden"))

    @property
    def conditional(self) -> bool:
        return self.model == "cvae"

    @property
    def vamp(self) -> bool:
        return self.prior == "vamp"

    @property
    def kl_scale(self) -> float:
        """The std of q(z|x) in the KL, in units of the encoder's std.

        eps_w, the noise z is drawn with, so the KL is the true posterior's, except in
        the study's own loss (mse, normal), whose KL takes the encoder's std alone.
        """
        return 1.0 if (self.likelihood, self.prior) == (LIKELIHOODS[0], PRIORS[0]) else self.eps_w

    def validate(self) -> ModelConfig:
        require(self.model in MODELS, f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        require(
            isinstance(self.latent_dim, int) and self.latent_dim >= 1,
            f"latent_dim must be an integer >= 1, got {self.latent_dim!r}",
        )
        require(_is_finite(self.beta) and self.beta > 0, f"beta must be a number > 0, got {self.beta!r}")
        require(_is_finite(self.eps_w) and self.eps_w > 0, f"eps_w must be a number > 0, got {self.eps_w!r}")
        require(
            self.likelihood in LIKELIHOODS,
            f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {self.likelihood!r}",
        )
        require(self.prior in PRIORS, f"prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        require(
            isinstance(self.pseudo_inputs, int) and self.pseudo_inputs >= 1,
            f"pseudo_inputs must be an integer >= 1, got {self.pseudo_inputs!r}",
        )
        return self


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 256
    lr: float = 1e-3  # Adam, no weight decay
    max_epochs: int = 1000
    min_epochs: int = 10  # early stopping never fires before this
    patience: int = 100  # epochs without a better val MSE before stopping
    lr_patience: int = 50  # ReduceLROnPlateau on val loss
    lr_factor: float = 0.1
    grad_clip: float = 0.5  # max gradient norm
    seed: int = 42  # weights, batch order and reparameterisation noise

    def validate(self) -> TrainConfig:
        require(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            f"batch_size must be an integer >= 1, got {self.batch_size!r}",
        )
        require(_is_finite(self.lr) and self.lr > 0, f"lr must be a number > 0, got {self.lr!r}")
        require(
            isinstance(self.max_epochs, int) and self.max_epochs >= 1,
            f"max_epochs must be an integer >= 1, got {self.max_epochs!r}",
        )
        require(
            isinstance(self.patience, int) and self.patience >= 1,
            f"patience must be an integer >= 1, got {self.patience!r}",
        )
        require(
            _is_finite(self.lr_factor) and 0 < self.lr_factor < 1,
            f"lr_factor must be a number between 0 and 1 (exclusive), got {self.lr_factor!r}",
        )
        require(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an integer >= 0, got {self.seed!r}")
        return self


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; flat params for MLflow come from `params()`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        self.data.validate()
        self.model.validate()
        self.train.validate()
        return self

    def params(self) -> dict[str, str]:
        """Flat string params under the MLproject names (widths as `16,8`)."""
        flat: dict[str, str] = {}
        for part in (self.data, self.model, self.train):
            for key, value in asdict(part).items():
                flat[key] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return flat

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> RunConfig:
        """Build from flat MLproject-style names; unknown names are an error, missing ones default."""
        parts = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        known = {f.name: name for name, part in parts.items() for f in fields(part)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown parameter(s): {', '.join(unknown)}")
        grouped: dict[str, dict[str, Any]] = {name: {} for name in parts}
        for key, value in values.items():
            grouped[known[key]][key] = value
        return cls(**{name: part(**grouped[name]) for name, part in parts.items()})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {"data": asdict(self.data), "model": asdict(self.model), "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, values: dict[str, dict[str, Any]]) -> RunConfig:
        return cls(DataConfig(**values["data"]), ModelConfig(**values["model"]), TrainConfig(**values["train"]))
