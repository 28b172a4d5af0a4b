"""`moonvae analyse` end to end: registered models and studies in, one `analyse` run and report.html out."""

import re
from dataclasses import replace

import nbclient
import nbformat
import pandas as pd
import pytest
from browser import dump_dom
from conftest import ROOT, mlflow_run, moonvae
from mlflow.tracking import MlflowClient
from studies import write_studies
from trained import tracking_store

from moonvae.analysis import analyse
from moonvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from moonvae.core.train import loss_terms
from moonvae.tracking import registry, runs
from moonvae.tracking.experiment import run_training
from moonvae.tuning import studies

# the reconstruction metrics, each source's sample quality, and the registered aliases' sources
EXPECTED_METRICS = {
    "vae_test_mse", "vae_test_kl", "cvae_test_mse", "cvae_test_kl", "vae_fresh_mse", "cvae_fresh_mse", "mmd_floor",
    "vae_prior_mmd_ratio", "vae_posterior_mmd_ratio", "vae_mixture_mmd_ratio", "cvae_mixture_mmd_ratio",
    "vae_mixture_c2st", "cvae_posterior_c2st", "vae_posterior_copying", "cvae_mixture_spacing",
    "cvae_prior_on_moon", "cvae_posterior_on_moon", "cvae_mixture_on_moon",
    "vae_latent_moon_accuracy", "cvae_latent_moon_accuracy",
    "vae_champion_mixture_mmd_ratio", "cvae_champion_posterior_on_moon", "cvae_generator_mixture_copying",
}  # fmt: skip


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tracking store with small registered champions of both kinds and the six studies beside it."""
    root = tmp_path_factory.mktemp("registry")
    with tracking_store(root) as client:
        run_ids = {}
        for kind in ("vae", "cvae"):
            config = RunConfig(
                DataConfig(n_samples=600),
                ModelConfig(model=kind, latent_dim=8, decoder_hidden=(32,)),
                TrainConfig(batch_size=64, max_epochs=150),
            )
            with runs.run(client, f"train-{kind}") as run_id:
                outcome = run_training(config, client, run_id)
            version = registry.register_model(client, outcome.model_info, f"moonvae-{kind}")
            run_ids[kind] = run_id
        registry.set_alias(client, "moonvae-cvae", "generator", version)  # one version, two aliases
        write_studies(f"sqlite:///{root / 'optuna.db'}")
    return root, run_ids


def analyse_runs(workdir):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return client, [run for run in client.search_runs(experiments) if run.info.run_name == "analyse"]


@pytest.mark.slow
def test_analyse_logs_metrics_findings_and_a_report_that_renders(registered):
    root, run_ids = registered
    # the VAE by run id, the CVAE by its registered alias (the default)
    done = moonvae(root, "analyse", "--vae", run_ids["vae"], "--n-eval", "400", "--output", "out/report.html")
    assert done.returncode == 0, done.stderr[-3000:]
    client, (run,) = analyse_runs(root)
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) >= EXPECTED_METRICS
    metrics = run.data.metrics
    assert metrics["cvae_posterior_mmd_ratio"] < metrics["cvae_prior_mmd_ratio"]
    assert metrics["cvae_posterior_on_moon"] > 0.8 and metrics["cvae_mixture_on_moon"] > 0.8
    # the aliases of one version are judged once, the analysed champion reused
    for score in ("mmd_ratio", "c2st", "copying", "on_moon"):
        assert metrics[f"cvae_generator_mixture_{score}"] == metrics[f"cvae_champion_mixture_{score}"]
        assert metrics[f"cvae_champion_mixture_{score}"] == metrics[f"cvae_mixture_{score}"]
    # the champions' own test error, recomputed from the registered model and the rebuilt split
    for kind in ("vae", "cvae"):
        trained = client.get_run(run_ids[kind]).data.metrics["test_mse"]
        assert metrics[f"{kind}_test_mse"] == pytest.approx(trained, rel=1e-5)
    assert run.data.params["vae"] == run_ids["vae"] and run.data.params["n_eval"] == "400"
    assert run.data.params["cvae"] == "models:/moonvae-cvae@champion"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"report.html", "findings.csv", "metrics.csv", "sources.csv"}
    table = pd.read_csv(client.download_artifacts(run.info.run_id, "sources.csv", str(root)))
    assert table["model"].tolist() == ["exact sampler"] + ["vae@champion"] * 3 + ["cvae@champion,generator"] * 3
    assert table.loc[0, "mmd_ratio"] < 2 and abs(table.loc[0, "c2st"] - 0.5) < 0.03  # what ideal scores
    assert (table.groupby("model")["default"].count().drop("exact sampler") == 1).all()  # one default per model
    assert "studies read: moonvae-cvae-basic (cvae basic, 40 complete trials), moonvae-cvae-data" in done.stdout
    verdicts = re.findall(r"finding (\d): ([a-z ]+)", done.stdout)
    assert [number for number, _ in verdicts] == [str(n) for n in range(1, 10)]
    assert all(verdict != "not enough data" for _, verdict in verdicts)

    report = root / "out" / "report.html"
    document = report.read_text()
    expected = int(re.search(r'data-expected="(\d+)"', document).group(1))
    assert expected >= 8 + 4  # the model figures and the studies' evidence
    assert document.count("plotly.js v") == 1  # embedded once
    dom, log = dump_dom(report)
    assert f'data-rendered="{expected}"' in dom and 'data-errors="0"' in dom
    assert dom.count('class="main-svg"') >= expected
    assert "Uncaught" not in log


@pytest.mark.slow
def test_analyse_reads_a_study_tuned_under_a_custom_name(workdir):
    tiny = ["--n-trials", "2", "--max-epochs", "12", "--n-samples", "200"]
    done = moonvae(workdir, "tune", "--model", "vae", "--study-name", "mine", *tiny)
    assert done.returncode == 0, done.stderr[-3000:]
    done = moonvae(workdir, "analyse", "--cvae", "none", "--n-eval", "300")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "studies read: mine (vae basic, 2 complete trials)" in done.stdout
    assert "Studies read: mine (vae basic, 2 complete trials)." in (workdir / "report.html").read_text()
    _, (run,) = analyse_runs(workdir)
    assert run.data.tags["moonvae.studies"] == "mine"


def test_a_model_of_the_wrong_kind_is_refused(workdir, small_config):
    client = runs.client()
    with runs.run(client, "train-cvae") as run_id:
        run_training(
            replace(small_config, model=ModelConfig(model="cvae", latent_dim=2), train=TrainConfig(max_epochs=2)),
            client,
            run_id,
        )
    with pytest.raises(analyse.AnalyseError, match=f"^'{run_id}' is a cvae model, not a vae$"):
        analyse.load_subjects({"vae": run_id})
    subject = analyse.load_subject("cvae", run_id)
    assert subject.run_id == run_id and len(subject.bank.mean) == len(subject.data.train)


def test_missing_champion_is_one_line_and_no_run_stays_running(workdir):
    done = moonvae(workdir, "analyse")
    assert done.returncode == 2
    ours = [line for line in done.stderr.splitlines() if line.startswith("moonvae:")]
    assert ours == [done.stderr.strip().splitlines()[-1]]
    assert ours[0].startswith("moonvae: error: cannot load the vae model 'models:/moonvae-vae@champion'")
    assert analyse_runs(workdir)[1] == []
    assert not (workdir / "optuna.db").exists() and not (workdir / "report.html").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-eval", "5"], "n_eval must be an integer >= 100, got 5"),
        (["--vae", "none", "--cvae", "none"], "nothing to analyse"),
    ],
)
def test_bad_options_fail_before_any_run(workdir, args, message):
    done = moonvae(workdir, "analyse", *args)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("moonvae: error:") and message in line
    assert not (workdir / "mlflow.db").exists() or analyse_runs(workdir)[1] == []


@pytest.mark.slow
def test_mlflow_run_analyse_entry_point(registered):
    root, _ = registered
    done = mlflow_run(root, "analyse", "n_eval=300", f"output={root / 'entry' / 'report.html'}")
    assert done.returncode == 0, done.stderr[-3000:]
    client, runs = analyse_runs(root)
    run = max(runs, key=lambda r: r.info.start_time)
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) >= EXPECTED_METRICS
    assert "report.html" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert (root / "entry" / "report.html").exists()


@pytest.mark.slow
def test_report_notebook_runs_on_the_registered_models(registered, monkeypatch):
    root, _ = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("MOONVAE_N_EVAL", "300")
    monkeypatch.setenv("MOONVAE_RENDERER", "json")  # figures as plain JSON outputs, no plotly.js per cell
    notebook = nbformat.read(ROOT / "notebooks" / "report.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(root)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    figures = [output for output in outputs if "application/json" in output.get("data", {})]
    assert len(figures) >= 8 + 4
    text = "".join(output.get("text", "") + str(output.get("data", {}).get("text/plain", "")) for output in outputs)
    assert "cvae_posterior_on_moon" in text and "cvae@champion" in text
    assert "moonvae-vae-basic" in text and re.search(r"\b(reproduced|refuted|inconclusive)\b", text)


def test_metrics_read_side_by_side():
    table = analyse.metrics_by_model(
        {"vae_test_mse": 0.1, "cvae_test_mse": 0.2, "cvae_prior_on_moon": 0.6, "mmd_floor": 0.001}
    )
    assert table.to_dict("records") == [
        {"metric": "test_mse", "vae": 0.1, "cvae": 0.2},
        {"metric": "prior_on_moon", "vae": "", "cvae": 0.6},
        {"metric": "mmd_floor", "vae": 0.001, "cvae": 0.001},
    ]


def test_trials_take_metrics_from_their_runs_and_train_mse_from_their_models(workdir, small_config):
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    client = runs.client()
    config = replace(small_config, model=ModelConfig(model="cvae", latent_dim=4), train=TrainConfig(max_epochs=5))
    with runs.run(client, "trial") as run_id:
        outcome = run_training(config, client, run_id)
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    study = optuna.create_study(study_name="any-name", storage=storage)
    studies.mark(study, "cvae", "data", {})
    distributions = {"n_samples": CategoricalDistribution((400, 800)), "noise": CategoricalDistribution((0.15,))}
    for attrs in (
        {"mlflow_run_id": run_id, "mlflow_model_id": outcome.model_info.model_id},
        {"mlflow_run_id": "0" * 32, "mlflow_model_id": "m-gone"},  # deleted since: no metrics, no error
    ):
        params = {"n_samples": 400, "noise": 0.15}
        study.add_trial(create_trial(params=params, distributions=distributions, value=0.1, user_attrs=attrs))
    trials = analyse.load_studies(storage, mlflow_client=client).tables[("cvae", "data")].trials
    assert trials.loc[0, "test_mse"] == pytest.approx(outcome.test.mse.item())
    assert trials.loc[0, "test_kl"] == pytest.approx(outcome.test.kl.item())
    assert trials.loc[0, "train_mse"] == pytest.approx(loss_terms(outcome.network, outcome.data.train).mse.item())
    assert trials.loc[0, "mlflow_run_id"] == run_id  # ids stay strings
    assert trials[["test_mse", "train_mse"]].iloc[1].isna().all()
