"""A stack's parameter layout: each member's network as named tensors, zero-padded into one row of a [K, P] buffer.

The members of a stack (`batched`) keep their parameters in one buffer, each
member's layers zero-padded to the widest in the stack. A `Layout` names the
tensors of one member and their shapes, (in, out) as the matmuls of `passes`
use them, in buffer order; the functions here move a network's parameters in
and out of that form, and cut a buffer down when its widest members leave.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from moonvae.config import RunConfig
from moonvae.core.models import CVAE, DATA_DIM, VAE

Layout = dict[str, tuple[int, ...]]  # parameter name -> shape of one member's tensor, in buffer order
EXTRAS = ("log_sigma", "pseudo_inputs")  # the Gaussian likelihood's and the VampPrior's, after the layers


def of(configs: Sequence[RunConfig]) -> Layout:
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
    if models[0].likelihood == "gaussian":  # members share these two (batched.shared): never padded
        shapes["log_sigma"] = (1,)
    if models[0].vamp:
        shapes["pseudo_inputs"] = (models[0].pseudo_inputs, DATA_DIM)
    return shapes


def _linears(body: nn.Sequential) -> list[nn.Linear]:
    return [module for module in body if isinstance(module, nn.Linear)]


def network_tensors(network: VAE) -> dict[str, torch.Tensor]:
    """The network's parameters under the layout's names, in its shapes (copies)."""
    encoder, decoder, conditions = network.encoder, network.decoder, network.n_conditions
    tensors = {}
    for prefix, body in (("encoder", encoder.body), ("decoder", decoder.body)):
        for i, linear in enumerate(_linears(body)):
            tensors[f"{prefix}.{i}.weight"], tensors[f"{prefix}.{i}.bias"] = linear.weight.T, linear.bias[None]
    tensors["decoder.0.weight"] = tensors["decoder.0.weight"].roll(conditions, dims=0)  # [z, y] -> [y, z]
    tensors["head.weight"] = torch.stack([encoder.mean.weight.T, encoder.logvar.weight.T], dim=1)
    tensors["head.bias"] = torch.stack([encoder.mean.bias, encoder.logvar.bias])[None]
    tensors["out.weight"], tensors["out.bias"] = decoder.out.weight.T, decoder.out.bias[None]
    for name in EXTRAS:
        if getattr(network, name) is not None:
            tensors[name] = getattr(network, name)
    return {name: tensor.detach().clone() for name, tensor in tensors.items()}


@torch.no_grad()
def load_tensors(network: VAE, tensors: dict[str, torch.Tensor]) -> None:
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
    for name in EXTRAS:
        if getattr(network, name) is not None:
            getattr(network, name).copy_(tensors[name])


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


def own_entries(configs: Sequence[RunConfig], shapes: Layout) -> torch.Tensor:
    """A [K, P] mask: 1 where a member's own parameters sit in `shapes`, 0 on its padding."""
    return torch.cat(
        [pad({name: torch.ones(shape) for name, shape in of([config]).items()}, shapes) for config in configs]
    )


def unpad(row: torch.Tensor, shapes: Layout, own: Layout) -> dict[str, torch.Tensor]:
    """One member's [P] row laid out as `shapes`, as its own unpadded tensors."""
    return {name: tensor[0] for name, tensor in unflatten(trim(row[None], shapes, own), own).items()}
