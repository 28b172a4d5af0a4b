"""Which of fit_batch's configs train in one stack: `partition`, by a cost model.

Padding a narrow member to a wide one's widths costs it the wide one's
arithmetic; a stack of its own costs the per-op overhead once more; and a stack
whose activations outgrow the core's cache slows every op down (per member, 16
stacked latent-128 networks trained slower than one alone). The constants were
fitted on a 2-core x86 machine (1 MiB L2 per core) with MKL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from moonvae.config import RunConfig
from moonvae.core import layout

STEP_OVERHEAD_US = 200.0  # Python and dispatch of one stack's ops, whatever their size
MATMUL_NS = 0.06  # per weight and sample: a multiply-add forward, two backward
LATENT_NS = 7.0  # per latent unit and sample: noise, exp, KL and their gradients
HIDDEN_NS = 1.0  # per hidden unit and sample: bias, ReLU and its gradient
STACK_FLOATS = 65536  # most a stack's widest activation may hold (members x batch x width): 256 KiB


def step_cost(configs: Sequence[RunConfig]) -> float:
    """Estimated microseconds of one Adam step of a stack holding `configs`, each padded to the widest."""
    shapes = layout.of(configs)
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
