"""Registered model names and aliases: the one place that says what users load.

`models:/moonvae-{kind}@champion` is the best reconstruction of the basic search.
Studies that change the data or the loss have their own alias, so a model
trained on other data never silently becomes the default. Pure naming policy:
the registering itself is `tracking`'s job.
"""

from __future__ import annotations

CHAMPION = "champion"  # the alias users load: the basic search's best model
DEFAULT_SPACE = "basic"  # the search whose best becomes the champion
DESCRIPTION = "A VAE or CVAE on the two-moons data, tuned by moonvae"


def model_name(kind: str) -> str:
    """The registered model a study of `kind` (vae or cvae) adds its best version to."""
    return f"moonvae-{kind}"


def alias_for(space: str) -> str:
    """`champion` for the basic space; the others change the data or the loss, so their best gets its own alias."""
    return CHAMPION if space == DEFAULT_SPACE else f"best-{space}"


def model_uri(kind: str, alias: str = CHAMPION) -> str:
    return f"models:/{model_name(kind)}@{alias}"


def valid_name(name: str) -> bool:
    """Usable in `models:/NAME@alias`: not empty, no '/', ':' or '@'."""
    return bool(name.strip()) and not any(char in name for char in "/:@")
