"""The registered pyfunc model, loaded by `models:/NAME@champion`: every mode, its validation, and how it loads."""

from __future__ import annotations

import io
import json
import site
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import moonvae, subprocess_env
from mlflow.exceptions import MlflowException
from sklearn.datasets import make_moons
from sklearn.neighbors import KNeighborsClassifier
from trained import older_model, tracking_store, train_and_register

from moonvae.cli import main
from moonvae.config import SOURCES, DataConfig, ModelConfig, RunConfig, TrainConfig
from moonvae.core.models import CVAE, traversal_latents
from moonvae.sampling import quality
from moonvae.serving import pyfunc
from moonvae.tracking import runs

# Small enough to train in about a second, good enough that CVAE samples land on their moon
# (measured: 97.65% of aggregate-posterior samples, 62.75% of prior samples).
CONFIG = RunConfig(
    data=DataConfig(n_samples=2000),
    model=ModelConfig(latent_dim=8, decoder_hidden=(32,)),
    train=TrainConfig(max_epochs=200),
)
LATENT_DIM = CONFIG.model.latent_dim


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Both models trained, registered as moonvae-vae and moonvae-cvae, and loaded back by alias."""
    with tracking_store(tmp_path_factory.mktemp("registry")) as client:
        found = {}
        for kind in ("vae", "cvae"):
            config = replace(CONFIG, model=replace(CONFIG.model, model=kind))
            run_id, outcome = train_and_register(client, config, f"moonvae-{kind}")
            model = mlflow.pyfunc.load_model(f"models:/moonvae-{kind}@champion")
            found[kind] = (model, client.get_run(run_id), outcome)
        yield client, found


@pytest.fixture(scope="module")
def cvae(registered):
    return registered[1]["cvae"][0]


@pytest.fixture(scope="module")
def vae(registered):
    return registered[1]["vae"][0]


def labels(n: int) -> pd.DataFrame:
    return pd.DataFrame({"label": np.arange(n) % 2})


def test_the_loaded_model_exposes_network_config_and_bank(registered):
    _, found = registered
    model, run, outcome = found["cvae"]
    inner = model.unwrap_python_model()
    assert isinstance(inner.network, CVAE) and not inner.network.training
    assert inner.config.params() == {key: run.data.params[key] for key in inner.config.params()}
    assert inner.config.model.model == "cvae" and inner.config.model.latent_dim == LATENT_DIM
    train = outcome.data.train
    assert inner.bank.mean.shape == inner.bank.logvar.shape == (len(train), LATENT_DIM)
    assert torch.equal(inner.bank.y, train.y)
    assert torch.equal(inner.reference, pyfunc.traversal_reference(inner.bank.mean))
    for loaded, original in zip(
        inner.network.state_dict().values(), outcome.network.state_dict().values(), strict=True
    ):
        assert torch.equal(loaded, original)


def test_signature_description_requirements_and_example(registered):
    client, found = registered
    model, run, outcome = found["cvae"]
    default = outcome.judgement.default
    params = {spec.name: spec.default for spec in model.metadata.signature.params.params}
    assert params == {
        "mode": "sample",
        "source": default,  # each model's own: the source it samples from when none is asked for
        "seed": None,
        "stochastic": False,
        "logvar": False,
        "dim": None,
        "steps": 10,
    }
    assert {col.name for col in model.metadata.signature.inputs.inputs} == {"x1", "x2", "label"}
    metadata = model.metadata.metadata
    assert metadata["description"] == f"{pyfunc.DESCRIPTION}\n{outcome.judgement.note()}"
    assert metadata["source"] == default and set(metadata["sources"]) == set(SOURCES)
    assert client.get_registered_model("moonvae-cvae").description == pyfunc.DESCRIPTION
    for mode in pyfunc.MODES:
        assert f"- {mode}" in pyfunc.DESCRIPTION
    version = client.get_model_version_by_alias("moonvae-cvae", "champion")
    assert version.run_id == run.info.run_id
    assert version.description == metadata["description"]  # the version says which source, with the figures
    local = Path(mlflow.artifacts.download_artifacts("models:/moonvae-cvae@champion"))
    requirements = (local / "requirements.txt").read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert not any("+cpu" in line for line in requirements)
    example = json.loads((local / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == ["x1", "x2", "label"] and example["params"]["mode"] == "sample"
    assert (local / "code" / "moonvae" / "core" / "models.py").is_file()  # the package travels with the model
    assert not list(local.rglob("*.pkl"))  # nothing pickled: the model is rebuilt from code


def test_the_model_samples_by_default_from_the_source_its_run_judged_best(registered):
    _, found = registered
    for kind, (model, run, outcome) in found.items():
        default = model.metadata.metadata["source"]
        inner = model.unwrap_python_model()
        assert run.data.tags["moonvae.sampling_source"] == default == inner.default_source
        local = Path(mlflow.artifacts.download_artifacts(f"models:/moonvae-{kind}@champion"))
        judged = json.loads((local / "artifacts" / "sources.json").read_text())
        assert judged["default"] == default
        for source in SOURCES:
            for score in ("mmd_summary", "mmd_summary_se", "sets"):
                assert run.data.metrics[f"{source}_{score}"] == pytest.approx(judged["scores"][source][score])
            assert model.metadata.metadata["sources"][source]["sets"] == judged["scores"][source]["sets"]
        assert run.data.metrics["mmd_summary"] == pytest.approx(judged["scores"][default]["mmd_summary"])
        unset = model.predict(labels(20), params={"seed": 1})
        pd.testing.assert_frame_equal(unset, model.predict(labels(20), params={"seed": 1, "source": default}))
        other = next(source for source in SOURCES if source != default)
        assert not unset.equals(model.predict(labels(20), params={"seed": 1, "source": other}))
        mixture = torch.load(local / "artifacts" / "mixture.pt", weights_only=True)  # plain tensors
        assert all(torch.equal(mixture[key], outcome.mixture[key]) for key in outcome.mixture)
        assert all(torch.equal(inner.mixture[key], outcome.mixture[key]) for key in outcome.mixture)


@pytest.mark.parametrize("kind", ["vae", "cvae"])
@pytest.mark.parametrize("source", SOURCES)
def test_sample_shapes_and_seeds(registered, kind, source):
    model = registered[1][kind][0]
    request = labels(50)
    first = model.predict(request, params={"source": source, "seed": 3})
    assert list(first.columns) == ["x1", "x2", "label"] and len(first) == 50
    assert first["label"].tolist() == request["label"].tolist()
    assert np.isfinite(first[["x1", "x2"]].to_numpy()).all()
    pd.testing.assert_frame_equal(first, model.predict(request, params={"source": source, "seed": 3}))
    assert not first.equals(model.predict(request, params={"source": source, "seed": 4}))
    unseeded = [model.predict(request, params={"source": source}) for _ in range(2)]
    assert not unseeded[0].equals(unseeded[1])  # no seed: fresh draws


def test_the_vae_samples_without_labels(vae):
    points = vae.predict(pd.DataFrame({"x1": [0.0] * 5}), params={"seed": 0})
    assert list(points.columns) == ["x1", "x2"] and len(points) == 5


def test_the_cvae_draws_each_moon_from_its_own_bank_entries(cvae):
    inner = cvae.unwrap_python_model()
    got = cvae.predict(labels(6), params={"seed": 11, "source": "posterior"})
    expected = inner.network.sample_posterior(
        inner.bank, 6, torch.tensor(labels(6)["label"].to_numpy()), torch.Generator().manual_seed(11)
    )
    np.testing.assert_allclose(got[["x1", "x2"]].to_numpy(), expected.numpy())


def moon_classifier(noise: float) -> KNeighborsClassifier:
    """Says which moon a point lies on; trained on fresh real moons data, not the model's."""
    x, y = make_moons(n_samples=20_000, noise=noise, random_state=1)
    return KNeighborsClassifier(n_neighbors=25).fit(x, y)


def test_cvae_samples_land_on_the_requested_moon(cvae):
    classifier = moon_classifier(CONFIG.data.noise)
    request = labels(2000)
    rate = {}
    for source in SOURCES:
        points = cvae.predict(request, params={"source": source, "seed": 0})
        rate[source] = (classifier.predict(points[["x1", "x2"]].to_numpy()) == request["label"].to_numpy()).mean()
    assert rate["posterior"] >= 0.95 and rate["mixture"] >= 0.95, rate
    assert rate["prior"] < min(rate["posterior"], rate["mixture"]), rate  # why the prior is never the default here


@pytest.mark.parametrize("kind", ["vae", "cvae"])
def test_reconstruction_error_is_the_runs_test_mse(registered, kind):
    model, run, outcome = registered[1][kind]
    test = outcome.data.test
    request = pd.DataFrame({"x1": test.x[:, 0].double(), "x2": test.x[:, 1].double(), "label": test.y})
    recon = model.predict(request, params={"mode": "reconstruct"})
    assert list(recon.columns) == ["x1", "x2", "label"] and len(recon) == len(test)
    mse = np.mean((recon[["x1", "x2"]].to_numpy() - test.x.numpy()) ** 2)
    assert mse == pytest.approx(run.data.metrics["test_mse"], rel=1e-4)
    noisy = model.predict(request, params={"mode": "reconstruct", "stochastic": True, "seed": 1})
    assert not noisy.equals(recon)
    pd.testing.assert_frame_equal(
        noisy, model.predict(request, params={"mode": "reconstruct", "stochastic": True, "seed": 1})
    )


def test_encode_returns_the_posterior_mean_and_asked_for_log_variances(cvae):
    inner = cvae.unwrap_python_model()
    request = pd.DataFrame({"x1": [0.0, 1.0, -0.5], "x2": [0.5, -0.4, 0.9], "label": [0, 1, 0]})
    means = cvae.predict(request, params={"mode": "encode"})
    assert list(means.columns) == [f"z{i}" for i in range(LATENT_DIM)] + ["label"]
    mean, logvar = inner.network.encode(
        torch.tensor(request[["x1", "x2"]].to_numpy(), dtype=torch.float32), torch.tensor([0, 1, 0])
    )
    np.testing.assert_allclose(means[[f"z{i}" for i in range(LATENT_DIM)]].to_numpy(), mean.detach().numpy(), rtol=1e-6)
    both = cvae.predict(request, params={"mode": "encode", "logvar": True})
    assert len(both.columns) == 2 * LATENT_DIM + 1
    np.testing.assert_allclose(
        both[[f"logvar{i}" for i in range(LATENT_DIM)]].to_numpy(), logvar.detach().numpy(), rtol=1e-6
    )


def test_traverse_sweeps_every_dimension_around_the_training_median(cvae):
    inner = cvae.unwrap_python_model()
    out = cvae.predict(labels(2), params={"mode": "traverse"})
    assert list(out.columns) == ["dim", "step", "value", "x1", "x2", "label"]
    assert len(out) == 2 * LATENT_DIM * 10
    for label in (0, 1):
        for dim in (0, LATENT_DIM - 1):
            sweep = out[(out["label"] == label) & (out["dim"] == dim)]
            assert sweep["step"].tolist() == list(range(10))
            latents = traversal_latents(inner.bank.mean, dim, 10)  # from all training latents, not the stored summary
            np.testing.assert_allclose(sweep["value"].to_numpy(), latents[:, dim].numpy(), rtol=1e-6)
            assert sweep["value"].iloc[0] == pytest.approx(inner.bank.mean[:, dim].min().item())
            assert sweep["value"].iloc[-1] == pytest.approx(inner.bank.mean[:, dim].max().item())
            decoded = inner.network.decode(latents, torch.full((10,), label)).detach().numpy()
            np.testing.assert_allclose(sweep[["x1", "x2"]].to_numpy(), decoded, rtol=1e-5, atol=1e-6)
    one = cvae.predict(labels(2), params={"mode": "traverse", "dim": 3, "steps": 4})
    assert len(one) == 8 and set(one["dim"]) == {3}
    moon0, moon1 = (one[one["label"] == k][["x1", "x2"]].to_numpy() for k in (0, 1))
    assert not np.allclose(moon0, moon1)  # the CVAE decodes with each row's label


def test_traverse_of_the_vae_needs_no_label(vae):
    out = vae.predict(pd.DataFrame({"x1": [0.0]}), params={"mode": "traverse", "steps": 3})
    assert list(out.columns) == ["dim", "step", "value", "x1", "x2"] and len(out) == LATENT_DIM * 3


POINTS = pd.DataFrame({"x1": [0.0, 1.0], "x2": [0.5, -0.3], "label": [0, 1]})


@pytest.mark.parametrize(
    ("params", "frame", "message"),
    [
        ({"mode": "generate"}, POINTS, "unknown mode 'generate'"),
        (
            {"source": "uniform"},
            POINTS,
            "unknown source 'uniform': this model samples from posterior or prior or mixture",
        ),
        ({}, POINTS.assign(label=[0, 7]), "label must be 0 or 1 in every row; row 1 has 7"),
        ({}, POINTS.drop(columns="label"), "the CVAE needs a 'label' column"),
        ({"mode": "reconstruct"}, POINTS.assign(x1=[0.0, np.nan]), "x1 must be a finite number in every row; row 1"),
        ({"mode": "encode"}, POINTS.assign(x2=[np.inf, 0.0]), "x2 must be a finite number in every row; row 0 has inf"),
        ({"mode": "reconstruct"}, POINTS.drop(columns="x2"), "missing column(s) x2"),
        ({"mode": "traverse", "dim": LATENT_DIM}, POINTS, f"dim must be between 0 and {LATENT_DIM - 1}"),
        ({"mode": "traverse", "dim": -1}, POINTS, "dim must be between"),
        ({"mode": "traverse", "steps": 1}, POINTS, "steps must be at least 2"),
        ({"mode": "traverse", "steps": 10_000}, POINTS, "traverse would return 160000 rows"),
        ({}, pd.DataFrame({"label": np.zeros(pyfunc.MAX_ROWS + 1, dtype=int)}), f"at most {pyfunc.MAX_ROWS}"),
        ({"steps": "ten"}, POINTS, "steps"),  # wrong type: refused by MLflow's own param schema
        ({"mode": "reconstruct"}, POINTS.assign(x1=["a", "b"]), "x1"),  # likewise by the input schema
    ],
)
def test_bad_input_is_an_invalid_parameter_error(cvae, params, frame, message):
    with pytest.raises(MlflowException) as raised:
        cvae.predict(frame, params=params)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert message in raised.value.message


def test_an_older_model_without_a_mixture_samples_from_the_others_and_refuses_mixture(cvae, tmp_path):
    older = mlflow.pyfunc.load_model(str(older_model("models:/moonvae-cvae@champion", tmp_path)))
    inner = older.unwrap_python_model()
    assert inner.mixture is None and inner.sources == ("posterior", "prior") and inner.default_source == "posterior"
    request = labels(6)
    pd.testing.assert_frame_equal(
        older.predict(request, params={"seed": 2}), cvae.predict(request, params={"seed": 2, "source": "posterior"})
    )
    with pytest.raises(MlflowException) as raised:
        older.predict(request, params={"source": "mixture"})
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert raised.value.message == (
        "this model holds no latent mixture (it was logged before moonvae fitted one): use posterior or prior"
    )


def test_the_model_loads_where_moonvae_is_not_installed(registered, cvae):
    """Only site-packages on the path, without its .pth files (so no editable moonvae): the model brings its own."""
    script = f"""
import importlib.util, sys
sys.path.append({site.getsitepackages()[0]!r})
assert importlib.util.find_spec("moonvae") is None, "moonvae is importable"
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/moonvae-cvae@champion")
print(model.predict(pd.DataFrame({{"label": [0, 1, 1]}}), params={{"seed": 5}}).to_json(orient="split"))
print(sys.modules["moonvae"].__file__)
"""
    env = subprocess_env(Path.cwd())  # the module's store: registered changed into its folder
    del env["PYTHONPATH"]
    done = subprocess.run([sys.executable, "-S", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    table, module_file = done.stdout.strip().splitlines()[-2:]
    assert "/code/moonvae/" in module_file
    served = pd.read_json(io.StringIO(table), orient="split")
    expected = cvae.predict(pd.DataFrame({"label": [0, 1, 1]}), params={"seed": 5})
    np.testing.assert_allclose(served[["x1", "x2"]].to_numpy(), expected[["x1", "x2"]].to_numpy(), rtol=1e-6)


def moonvae_train(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    small = ["--model", "cvae", "--n-samples", "400", "--latent-dim", "4", "--max-epochs", "10"]
    return moonvae(workdir, "train", *small, *args)


def test_train_register_makes_the_new_version_champion(workdir):
    done = moonvae_train(workdir, "--register", "moons")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered moons version 1: load it with models:/moons@champion" in done.stdout
    client = runs.client()
    (run,) = client.search_runs([runs.experiment_id(client)])
    version = client.get_model_version_by_alias("moons", "champion")
    assert int(version.version) == 1 and version.run_id == run.info.run_id and run.info.status == "FINISHED"
    assert client.get_registered_model("moons").description == pyfunc.DESCRIPTION
    model = mlflow.pyfunc.load_model("models:/moons@champion")
    assert model.predict(pd.DataFrame({"label": [0, 1]}), params={"seed": 0})["label"].tolist() == [0, 1]


@pytest.mark.parametrize("name", ["a/b", "m@1", " "])
def test_train_refuses_a_bad_model_name_before_anything_runs(workdir, name):
    result = CliRunner().invoke(main, ["train", "--register", name])
    assert result.exit_code == 2
    assert result.stderr == f"moonvae: error: register must be a model name without '/', ':' or '@', got {name!r}\n"
    assert not (workdir / "mlflow.db").exists()


CALIBRATED = RunConfig(
    data=DataConfig(n_samples=1000),
    model=ModelConfig(
        model="cvae",
        encoder_hidden=(32, 32),
        decoder_hidden=(32, 32),
        latent_dim=2,
        eps_w=1.0,
        likelihood="gaussian",
        prior="vamp",
        pseudo_inputs=16,
    ),
    train=TrainConfig(lr=3e-3, max_epochs=600, patience=600, lr_patience=600),
)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A CVAE with the Gaussian likelihood and a VampPrior, trained, registered and loaded back by alias."""
    with tracking_store(tmp_path_factory.mktemp("calibrated")) as client:
        run_id, outcome = train_and_register(client, CALIBRATED, "calibrated")
        yield mlflow.pyfunc.load_model("models:/calibrated@champion"), client, client.get_run(run_id), outcome


def test_a_calibrated_model_keeps_sigma_x_and_its_pseudo_inputs_as_plain_tensors(calibrated):
    model, client, run, outcome = calibrated
    inner = model.unwrap_python_model()
    assert inner.network.sigma_x == pytest.approx(run.data.metrics["best_sigma_x"]) == outcome.network.sigma_x
    assert len(client.get_metric_history(run.info.run_id, "sigma_x")) == CALIBRATED.train.max_epochs
    assert run.data.metrics["val_nelbo"] < 1.5 and run.data.params["prior"] == "vamp"  # nats per point
    local = Path(mlflow.artifacts.download_artifacts("models:/calibrated@champion"))
    weights = torch.load(local / "artifacts" / "weights.pt", weights_only=True)
    assert weights["log_sigma"].exp().item() == pytest.approx(inner.network.sigma_x)
    assert torch.equal(weights["pseudo_inputs"], outcome.network.pseudo_inputs.detach())


def test_a_calibrated_model_samples_its_prior_on_the_moon_with_its_noise(calibrated):
    model, *_ = calibrated
    inner = model.unwrap_python_model()
    request = labels(2000)
    drawn = model.predict(request, params={"source": "prior", "seed": 4})
    pd.testing.assert_frame_equal(drawn, model.predict(request, params={"source": "prior", "seed": 4}))
    points = torch.tensor(drawn[["x1", "x2"]].to_numpy(), dtype=torch.float32)
    assert quality.on_moon_share(points, torch.tensor(drawn["label"].to_numpy()), 0.15) > 0.95  # chance: 0.5
    mean = model.predict(
        pd.DataFrame({"x1": [0.0] * 500, "x2": [0.5] * 500, "label": [0] * 500}), params={"mode": "reconstruct"}
    )
    assert mean.nunique()[["x1", "x2"]].tolist() == [1, 1]  # reconstruct is the decoder's mean: no noise
    drawn = model.predict(mean[["x1", "x2", "label"]], params={"mode": "reconstruct", "stochastic": True, "seed": 0})
    spread = (drawn[["x1", "x2"]] - mean[["x1", "x2"]]).to_numpy().std()
    assert spread > inner.network.sigma_x * 0.9  # stochastic reconstruct: z drawn, then x with sigma_x noise


def test_the_tracking_and_tuning_modules_load_no_pyfunc_and_no_scikit_learn():
    """MLflow's pyfunc loads with the first model logged or loaded, scikit-learn where data are generated:
    a run that does neither, and every run's start, go without them."""
    script = (
        "import sys\n"
        "import moonvae.cli, moonvae.serving.loading, moonvae.tracking.experiment, moonvae.tracking.registry\n"
        "import moonvae.tuning.search, moonvae.tuning.trials\n"
        "print('mlflow.pyfunc' in sys.modules, 'sklearn' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["False", "False"]
