"""Synthetic Optuna studies with known answers, shaped like the tuner's: the real spaces, the real attributes.

Drawn from the tuner's own `SPACES`, so a change to a space changes these studies too.
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.trial import TrialState, create_trial

from moonvae.tuning import studies
from moonvae.tuning.spaces import SPACES, WIDTHS

BASIC = SPACES["basic"].distributions
DATA = SPACES["data"].distributions
PROBABILISTIC = SPACES["probabilistic"].distributions


def _basic_vae(rng: np.random.Generator, lr_matters: bool) -> list[tuple[dict, float, dict]]:
    """Decoder and latent matter through their minimum, a wide encoder doubles the error, tiny nets collapse."""
    trials = []
    for index in range(60):
        params = {
            "lr": float(np.exp(rng.uniform(np.log(1e-4), np.log(1e-1)))),
            "batch_size": int(rng.choice([32, 64, 128, 256])),
            "encoder_hidden": 2 if index < 4 else int(rng.choice(WIDTHS)),
            "latent_dim": int(rng.choice(WIDTHS)),
            "decoder_hidden": 4 if index < 4 else int(rng.choice(WIDTHS)),
        }
        value = 0.5 / (1 + min(params["decoder_hidden"], params["latent_dim"]) / 4)
        value *= (2.0 if params["encoder_hidden"] > 8 else 1.0) * (1 + 0.02 * rng.random())
        if lr_matters:
            value *= (params["lr"] / 1e-4) ** 2
        tiny = params["encoder_hidden"] <= 4 and params["decoder_hidden"] <= 4
        attrs = {"test_mse": 0.4, "test_kl": 0.001} if tiny else {"test_mse": value, "test_kl": 0.05}
        trials.append((params, value, attrs))
    return trials


def _basic_cvae(rng: np.random.Generator) -> list[tuple[dict, float, dict]]:
    """Almost flat: good reconstructions everywhere."""
    trials = []
    for _ in range(40):
        params = {name: int(rng.choice(WIDTHS)) for name in ("encoder_hidden", "latent_dim", "decoder_hidden")}
        params |= {"lr": 1e-3 * float(rng.uniform(0.5, 2)), "batch_size": int(rng.choice([32, 64, 128, 256]))}
        value = 0.01 * (1 + 0.3 * rng.random())
        trials.append((params, value, {"test_mse": value, "test_kl": 0.05}))
    return trials


def _data(zero_noise_worse: bool) -> list[tuple[dict, float, dict]]:
    trials = []
    for n_samples in DATA["n_samples"].choices:
        for noise in DATA["noise"].choices:
            value = noise**2 + 0.005 + 0.0005 * np.log10(n_samples)
            value += 0.02 if noise == 0 and zero_noise_worse else 0.0
            trials.append(({"n_samples": n_samples, "noise": noise}, value, {"test_mse": value, "test_kl": 0.05}))
    return trials


def _probabilistic(rng: np.random.Generator) -> list[tuple[dict, float, dict]]:
    """MSE grows with eps_w and beta, KL shrinks, eps_w >= 0.5 collapses."""
    trials = []
    for index in range(40):
        eps_w = 0.6 if index < 4 else float(np.exp(rng.uniform(np.log(1e-3), 0)))
        beta = float(np.exp(rng.uniform(np.log(0.1), np.log(100))))
        value = 0.01 * eps_w**0.5 * beta**0.6
        attrs = {"test_mse": value, "test_kl": 0.1 / np.sqrt(eps_w * beta)}
        if eps_w >= 0.5:
            attrs = {"test_mse": 0.4, "test_kl": 0.001}
        trials.append(({"eps_w": eps_w, "beta": beta}, value, attrs))
    return trials


def write_studies(storage: str, agree: bool = True, seed: int = 0, prefix: str = "moonvae") -> None:
    """The six studies: built so every finding holds (`agree`), or so findings 1 and 7 fail.

    Named `{prefix}-{model}-{space}` and marked with their model and space, as the tuner marks its studies.
    """
    rng = np.random.default_rng(seed)
    designed = {
        ("vae", "basic"): (BASIC, _basic_vae(rng, lr_matters=not agree)),
        ("cvae", "basic"): (BASIC, _basic_cvae(rng)),
        ("vae", "data"): (DATA, _data(zero_noise_worse=agree)),
        ("cvae", "data"): (DATA, _data(zero_noise_worse=agree)),
        ("vae", "probabilistic"): (PROBABILISTIC, _probabilistic(rng)),
        ("cvae", "probabilistic"): (PROBABILISTIC, _probabilistic(rng)),
    }
    for (model, space), (distributions, trials) in designed.items():
        study = optuna.create_study(study_name=f"{prefix}-{model}-{space}", storage=storage, direction="minimize")
        studies.mark(study, model, space, {"model": model, "space": space})
        for params, value, attrs in trials:
            study.add_trial(
                create_trial(
                    params=params,
                    distributions={name: distributions[name] for name in params},
                    value=value,
                    user_attrs=attrs,
                )
            )
        # a failed and a pruned trial: neither counts as evidence
        params = trials[0][0]
        study.add_trial(
            create_trial(params=params, distributions={n: distributions[n] for n in params}, state=TrialState.FAIL)
        )
        study.add_trial(
            create_trial(
                params=params,
                distributions={n: distributions[n] for n in params},
                state=TrialState.PRUNED,
                intermediate_values={0: 1.0},
            )
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
