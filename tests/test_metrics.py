"""Every metric has one definition: each layer logs exactly the names `metrics.py` gives its scope, and docs/metrics.md
lists them."""

import re

import pytest
from conftest import ROOT

from moonvae import metrics
from moonvae.analysis import reconstruction
from moonvae.config import SOURCES
from moonvae.core import data
from moonvae.core.models import build_model, latent_bank
from moonvae.core.train import fit
from moonvae.tracking.experiment import Outcome


@pytest.fixture(scope="module", params=["mse", "gaussian"])
def trained(tmp_path_factory, request):
    from moonvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    model = ModelConfig(model="cvae", latent_dim=4, likelihood=request.param)
    config = RunConfig(DataConfig(n_samples=400), model, TrainConfig(max_epochs=3))
    moons = data.load(config.data, tmp_path_factory.mktemp("data"))
    network = build_model(config.model, config.train.seed)
    result = fit(network, moons.train, moons.val, config.train)
    return config, moons, network, result


def test_epoch_run_and_source_metrics_are_the_defined_ones(trained):
    config, moons, network, result = trained
    calibrated = config.model.likelihood == "gaussian"  # only then sigma_x and the negative ELBOs

    def defined(scope):
        return metrics.names(scope, calibrated)

    assert tuple(result.history[0].as_dict()) == defined("epoch")
    outcome = Outcome.measure(network, result, moons)
    outcome.judge(config, full=True)
    assert tuple(outcome.final_metrics()) == defined("run")
    scores = [name for name in metrics.names("source") if not name.endswith("sets")]  # each with its standard error
    names = [name for score in scores for name in (score, f"{score}_se")] + ["sets", "check_sets"]
    assert set(outcome.source_metrics()) == {f"{source}_{name}" for source in SOURCES for name in names}  # on_moon too


def test_analyse_metrics_are_the_defined_ones(trained):
    config, moons, network, _ = trained
    bank = latent_bank(network, moons.train.x, moons.train.y)
    values, _ = reconstruction.evaluate_model(network, bank, moons, config.data, n=200)
    assert set(values) | {"latent_moon_accuracy"} == set(metrics.names("analyse"))


def test_the_docs_table_lists_every_metric_once():
    page = (ROOT / "docs" / "metrics.md").read_text()
    rows = re.findall(r"^\| `([a-z_0-9]+)` \| ([a-z]+) \|", page, flags=re.MULTILINE)
    assert rows == [(metric.name, metric.scope) for metric in metrics.METRICS]
