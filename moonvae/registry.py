"""Registered model names and aliases: the one place that says what users load.

`models:/moonvae-{kind}@champion` is the best reconstruction of the basic search;
`models:/moonvae-{kind}@generator` the best sampler of the generative search (the rule:
`generator_trial`). Studies that change the data or the loss have their own alias, so a
model trained on other data never silently becomes the default. Pure naming policy:
the registering itself is `tracking`'s job.
"""

from __future__ import annotations

from collections.abc import Sequence

CHAMPION = "champion"  # the alias users load: the basic search's best model
GENERATOR = "generator"  # the generative search's best sampler among its good reconstructions
DEFAULT_SPACE = "basic"  # the search whose best becomes the champion
GENERATIVE_SPACE = "generative"  # the search whose Pareto front gives the generator
GENERATOR_MSE_FACTOR = 2.0  # the generator reconstructs within this factor of the study's best validation MSE,
# or at least this well: a 0.01 rms error, invisible against the data's noise (0.15) and range. Without it, a
# study whose best reconstruction is near 0 (tiny eps_w: 2e-7) admitted only near-deterministic autoencoders
GENERATOR_MSE_TOLERANCE = 1e-4
DESCRIPTION = "A VAE or CVAE on the two-moons data, tuned by moonvae"


def model_name(kind: str) -> str:
    """The registered model a study of `kind` (vae or cvae) adds its best version to."""
    return f"moonvae-{kind}"


def alias_for(space: str) -> str:
    """`champion` for the basic space, `generator` for the generative one; the others change the data or the
    loss, so their best gets its own alias."""
    return {DEFAULT_SPACE: CHAMPION, GENERATIVE_SPACE: GENERATOR}.get(space, f"best-{space}")


def generator_trial(front: Sequence[tuple[int, float, float]]) -> int | None:
    """The generator among Pareto trials (number, validation MSE, MMD ratio): the lowest MMD ratio among the
    trials whose validation MSE is within GENERATOR_MSE_FACTOR of the best (which the front always holds)
    or at most GENERATOR_MSE_TOLERANCE.

    A sampler that reconstructs badly is not what users want from a VAE, however good its samples;
    within the bound, sample quality decides. Ties go to the lower MSE, then the earlier trial.
    """
    if not front:
        return None
    bound = max(GENERATOR_MSE_FACTOR * min(mse for _, mse, _ in front), GENERATOR_MSE_TOLERANCE)
    eligible = [(ratio, mse, number) for number, mse, ratio in front if mse <= bound]
    return min(eligible)[2]


def model_uri(kind: str, alias: str = CHAMPION) -> str:
    return f"models:/{model_name(kind)}@{alias}"


def valid_name(name: str) -> bool:
    """Usable in `models:/NAME@alias`: not empty, no '/', ':' or '@'."""
    return bool(name.strip()) and not any(char in name for char in "/:@")
