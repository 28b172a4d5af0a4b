"""Every metric moonvae logs: its name, where it is logged, and what it means.

The one home of metric definitions. A new metric is defined here first, then
computed by the layer that owns its scope: `core.train` per epoch, `tracking.experiment`
at the end of a run (`sampling.sources` per sampling source), `tuning.results` on a study
run and the tune run, `analysis.reconstruction` and `analysis.aliases` in `analyse`.
Tests hold each layer's names, and the metric table of docs/metrics.md, to this list.
"""

from __future__ import annotations

from dataclasses import dataclass

N_EVAL = 2000  # points per sample in `analyse`: a few thousand keep MMD's noise below the gaps between models


@dataclass(frozen=True)
class Metric:
    name: str
    # epoch (step = epoch), run (a train run or trial), source (per sampling source: `<source>_<name>` on every run,
    # `<model>_<source>_<name>` and `<model>_<alias>_<source>_<name>` in analyse; every score but the sets with its
    # standard error over the sets, `<source>_<name>_se`), study (study run), pareto (study run of a multi-objective
    # study), calibrated (study run of a generative study with likelihood gaussian, in place of the study scope's
    # val_mse series), tune (entry run), analyse
    scope: str
    meaning: str


METRICS = (
    Metric(
        "train_loss",
        "epoch",
        "reconstruction + beta * kl on the training split, averaged over the epoch's batches (reconstruction: mse, "
        "or with likelihood gaussian the negative log-likelihood per coordinate)",
    ),
    Metric("val_loss", "epoch", "reconstruction + beta * kl on the validation split (posterior mean)"),
    Metric("val_mse", "epoch", "squared error on the validation split, summed and divided by its element count"),
    Metric(
        "val_kl",
        "epoch",
        "KL(q(z|x) || p(z)) on the validation split, divided by the same count (VampPrior: estimated at the mean)",
    ),
    Metric("lr", "epoch", "the learning rate the epoch ran with (ReduceLROnPlateau lowers it)"),
    Metric("sigma_x", "epoch", "likelihood gaussian: the learned observation noise, the std of p(x|z)"),
    Metric("best_val_mse", "run", "the lowest val_mse; the weights of that epoch are the ones kept"),
    Metric("best_epoch", "run", "the epoch of best_val_mse"),
    Metric("epochs", "run", "epochs trained before early stopping or max_epochs"),
    Metric("test_mse", "run", "squared error on the test split with the kept weights"),
    Metric("test_kl", "run", "KL term on the test split"),
    Metric("test_loss", "run", "test_mse + beta * test_kl"),
    Metric("train_mse", "run", "squared error on the training split: over-fitting is test_mse minus this"),
    Metric("active_units", "run", "latent units whose posterior mean varies over the data (Burda et al. 2016)"),
    Metric("active_fraction", "run", "active_units over latent_dim"),
    Metric("mutual_info", "run", "I(x; z) under q in nats, at most log N: what the latent keeps about x"),
    Metric("best_sigma_x", "run", "likelihood gaussian: sigma_x at best_epoch, the kept model's: its samples' noise"),
    Metric(
        "val_nelbo",
        "run",
        "likelihood gaussian: -ELBO on the validation split in nats per point (beta 1, q as z is drawn, "
        "128 draws of z per point), a bound on -log p(x): the generative study's first objective",
    ),
    Metric("test_nelbo", "run", "likelihood gaussian: the same on the test split"),
    Metric(
        "mmd_summary", "run", "the default source's mmd_summary: the model's sample quality, the generative objective"
    ),
    Metric("mmd_summary_se", "run", "its standard error"),
    Metric("mmd_wide", "source", "a set's squared MMD to the distribution over an exact sampler's (1), width ~1.19"),
    Metric("mmd_mid", "source", "the same at width 2 x noise (0.3 at the default): the moons' thickness and curvature"),
    Metric("mmd_fine", "source", "the same at width noise / 2 (0.075 at the default): the noise itself"),
    Metric("mmd_summary", "source", "the geometric mean of mmd_wide, mmd_mid and mmd_fine: what decisions compare"),
    Metric("c2st", "source", "held-out accuracy of a k-NN classifier telling samples from exact draws (0.5: alike)"),
    Metric("copying", "source", "median sample-to-nearest-training-point distance over exact draws' (< 1: copies)"),
    Metric("spacing", "source", "median distance between nearest samples over exact draws' (< 1: clumps)"),
    Metric("on_moon", "source", "CVAE: share of samples on the requested moon (Bayes classifier; exact: 0.991)"),
    Metric("sets", "source", "the sets of 2000 samples behind the source's mmd scores (each a mean over them)"),
    Metric("check_sets", "source", "the first of those sets behind its c2st, copying, spacing and on_moon"),
    Metric("trial_val_mse", "study", "each complete trial's best_val_mse (step = trial number)"),
    Metric("best_val_mse", "study", "the best best_val_mse among trials up to this one (step = trial number)"),
    Metric("best_trial", "study", "the number of that trial (of a multi-objective study: the registered generator)"),
    Metric("best_test_mse", "study", "that trial's test_mse"),
    Metric("best_test_kl", "study", "that trial's test_kl"),
    Metric("best_test_loss", "study", "that trial's test_loss"),
    Metric("trials_complete", "study", "trials that trained to the end"),
    Metric("trials_pruned", "study", "trials the pruner stopped"),
    Metric("trials_fail", "study", "trials that failed (they do not count towards n_trials)"),
    Metric("wall_seconds", "study", "wall time of the last call on the study"),
    Metric("trial_mmd_summary", "pareto", "each complete trial's mmd_summary, the second objective (step = trial)"),
    Metric("best_mmd_summary", "pareto", "the lowest mmd_summary among trials up to this one (step = trial number)"),
    Metric("pareto_trials", "pareto", "trials on the Pareto front of the trials up to this one (step = trial number)"),
    Metric(
        "trial_val_nelbo",
        "calibrated",
        "each complete trial's val_nelbo, the first objective in place of trial_val_mse (step = trial number)",
    ),
    Metric("best_val_nelbo", "calibrated", "the lowest val_nelbo among trials up to this one (step = trial number)"),
    Metric("best_test_nelbo", "calibrated", "the generator's test_nelbo"),
    Metric(
        "best_val_mse",
        "tune",
        "per model: the best trial's (generative: the generator's, unless calibrated), on the entry run of model=both",
    ),
    Metric("best_mmd_summary", "tune", "per model, generative space: the registered generator's mmd_summary"),
    Metric("best_mmd_summary_se", "tune", "its standard error"),
    Metric("best_val_nelbo", "tune", "per model, generative space, likelihood gaussian: the generator's val_nelbo"),
    Metric("trials_complete", "tune", "per model: the study's complete trials"),
    Metric("wall_seconds", "tune", "per model: the study's wall time in this call"),
    Metric("test_mse", "analyse", "test_mse recomputed from the loaded model on its own test split"),
    Metric("test_kl", "analyse", "test_kl recomputed the same way"),
    Metric("fresh_mse", "analyse", "squared error on fresh points from the data generator"),
    Metric("fresh_kl", "analyse", "KL term on the same fresh points"),
    Metric("latent_moon_accuracy", "analyse", "5-fold k-NN accuracy of the moon read off the training latents"),
)

CALIBRATED = (
    "sigma_x",
    "best_sigma_x",
    "val_nelbo",
    "test_nelbo",
)  # logged by models with the Gaussian likelihood only
SCOPES = ("epoch", "run", "source", "study", "pareto", "calibrated", "tune", "analyse")


def names(scope: str, calibrated: bool = True) -> tuple[str, ...]:
    """The metric names of one scope, in definition order; without CALIBRATED's for an mse-likelihood run."""
    return tuple(
        metric.name for metric in METRICS if metric.scope == scope and (calibrated or metric.name not in CALIBRATED)
    )
