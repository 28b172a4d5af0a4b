"""`moonvae analyse` end to end: registered models and studies in, one `analyse` run and report.html out."""

import html
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import designed
import nbclient
import nbformat
import pandas as pd
import pytest
from browser import dump_dom
from conftest import ROOT, mlflow_run, moonvae
from mlflow.tracking import MlflowClient
from studies import write_studies
from trained import tracking_store, train_and_register

from moonvae.analysis import aliases, analyse, figures
from moonvae.analysis.verdicts import INCONCLUSIVE, REFUTED, REPRODUCED
from moonvae.config import MODELS, DataConfig, ModelConfig, RunConfig, SpaceName, TrainConfig
from moonvae.core.train import loss_terms
from moonvae.sampling import quality
from moonvae.tracking import names, registry, runs
from moonvae.tracking.experiment import run_training
from moonvae.tuning import studies
from moonvae.tuning.tables import StudyTable

# the reconstruction metrics, each source's sample quality, and the registered aliases' sources
EXPECTED_METRICS = {
    "vae_test_mse", "vae_test_kl", "cvae_test_mse", "cvae_test_kl", "vae_fresh_mse", "cvae_fresh_mse",
    "vae_prior_mmd_summary", "vae_posterior_mmd_summary", "vae_mixture_mmd_summary", "cvae_mixture_mmd_summary",
    "vae_posterior_mmd_summary_se", "cvae_mixture_mmd_fine_se", "cvae_posterior_c2st_se", "vae_mixture_sets",
    "vae_mixture_c2st", "cvae_posterior_c2st", "vae_posterior_copying", "cvae_mixture_spacing",
    "cvae_prior_on_moon", "cvae_posterior_on_moon", "cvae_mixture_on_moon",
    "vae_latent_moon_accuracy", "cvae_latent_moon_accuracy",
    "vae_champion_mixture_mmd_summary", "cvae_champion_posterior_on_moon", "cvae_generator_mixture_copying",
}  # fmt: skip


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tracking store with small registered champions of both kinds, and the six studies and the findings' seven."""
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
        designed.write(f"sqlite:///{root / 'optuna.db'}", designed.agreeing())  # every finding holds
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
    assert metrics["cvae_posterior_mmd_summary"] < metrics["cvae_prior_mmd_summary"]
    assert metrics["cvae_posterior_on_moon"] > 0.8 and metrics["cvae_mixture_on_moon"] > 0.8
    # the aliases of one version are judged once, the analysed champion reused
    for score in ("mmd_summary", "mmd_summary_se", "c2st", "copying", "on_moon", "sets"):
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
    exact = table.loc[0]  # what ideal scores, within three standard errors
    assert abs(exact["mmd_summary"] - 1) < 3 * exact["mmd_summary_se"] and abs(exact["c2st"] - 0.5) < 0.03
    assert (table["sets"] == 64).all()
    assert (table.groupby("model")["default"].count().drop("exact sampler") == 1).all()  # one default per model
    assert "studies read: moonvae-cvae-basic (cvae basic, 40 complete trials), moonvae-cvae-data" in done.stdout
    verdicts = dict(re.findall(r"finding (\d): ([a-z]+)", done.stdout))
    assert list(verdicts) == [str(n) for n in range(1, 10)]
    assert [verdicts[str(n)] for n in range(1, 9)] == [REPRODUCED] * 8  # read from the studies the rules need
    assert verdicts["9"] in (REPRODUCED, REFUTED, INCONCLUSIVE)  # the small champions' latents: either way

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


# --- `analyse()` in process on small models and small studies: the default test run covers it -------------------

SMALL = RunConfig(
    DataConfig(n_samples=400), ModelConfig(latent_dim=8, decoder_hidden=(32,)), TrainConfig(max_epochs=15)
)
FEW_SETS = 2  # sample sets per source, for the full protocol's 64: the same code in a 32nd of the draws


def small(kind: str) -> RunConfig:
    return replace(SMALL, model=replace(SMALL.model, model=kind))


def few_data_trials(table: StudyTable) -> StudyTable:
    """The data grid at noise 0 to 0.1 and two seeds (18 trials): enough for findings 6 and 7."""
    trials = table.trials
    return StudyTable(trials[(trials["noise"] <= 0.1) & (trials["seed"] <= 2)].reset_index(drop=True))


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """One `analyse` run, in process, over small champions of both kinds, each also @generator, and the two
    models' data studies, at 200 points and FEW_SETS sets."""
    root = tmp_path_factory.mktemp("analysed")
    storage = f"sqlite:///{root / 'optuna.db'}"
    with tracking_store(root) as client:
        trained = {kind: train_and_register(client, small(kind), names.model_name(kind))[0] for kind in MODELS}
        for kind in MODELS:
            registry.set_alias(client, names.model_name(kind), names.GENERATOR, "1")
        tables = designed.agreeing()
        designed.write(storage, {key: few_data_trials(tables[key]) for key in tables if key[1] == SpaceName.DATA_SEEDS})
        subjects = analyse.load_subjects({"vae": trained["vae"], "cvae": names.model_uri("cvae")})
        with runs.run(client, "analyse") as run_id, pytest.MonkeyPatch.context() as patch:
            patch.setattr(quality, "FULL_SETS", FEW_SETS)
            result = analyse.analyse(
                subjects, root / "out" / "report.html", mlflow_client=client, run_id=run_id, storage=storage, n_eval=200
            )
        yield SimpleNamespace(
            root=root, client=client, run=client.get_run(run_id), result=result, trained=trained, subjects=subjects
        )


def test_analyse_logs_metrics_params_and_tags(analysed):
    run, values = analysed.run, analysed.run.data.metrics
    assert run.info.status == "FINISHED"
    assert set(values) >= EXPECTED_METRICS and values == analysed.result.metrics
    for kind, run_id in analysed.trained.items():  # the champions' test error, recomputed from the loaded model
        assert values[f"{kind}_test_mse"] == pytest.approx(analysed.client.get_run(run_id).data.metrics["test_mse"])
        assert run.data.tags[names.run_id_tag(kind)] == run_id
    # one version under two aliases is judged once: it is the analysed model, its scores reused
    for key in ("mixture_mmd_summary", "mixture_mmd_fine_se", "posterior_c2st", "prior_copying", "mixture_on_moon"):
        kind = "cvae" if key.endswith("on_moon") else "vae"
        assert values[f"{kind}_generator_{key}"] == values[f"{kind}_champion_{key}"] == values[f"{kind}_{key}"]
    assert run.data.params == {"vae": analysed.trained["vae"], "cvae": "models:/moonvae-cvae@champion",
                               "n_eval": "200", "seed": "0"}  # fmt: skip
    assert run.data.tags[names.STUDIES_TAG] == "designed-cvae-data-seeds,designed-vae-data-seeds"


def test_analyse_judges_the_findings_of_the_studies_it_finds(analysed):
    verdicts = {finding.number: finding.verdict for finding in analysed.result.findings}
    assert verdicts == {n: REPRODUCED if n in (6, 7) else INCONCLUSIVE for n in range(1, 9)} | {9: verdicts[9]}
    assert "no vae importance study" in analysed.result.findings[0].evidence
    assert analysed.result.studies.cited() == (
        "designed-cvae-data-seeds (cvae data-seeds, 18 complete trials), "
        "designed-vae-data-seeds (vae data-seeds, 18 complete trials)"
    )


def test_analyse_writes_the_report_and_logs_it_with_its_tables(analysed):
    client, run_id = analysed.client, analysed.run.info.run_id
    assert {a.path for a in client.list_artifacts(run_id)} == {
        "report.html",
        "findings.csv",
        "metrics.csv",
        "sources.csv",
    }

    def artifact(name):
        return client.download_artifacts(run_id, name, str(analysed.root / "downloaded"))

    document = (analysed.root / "out" / "report.html").read_text()
    assert Path(artifact("report.html")).read_text() == document
    assert f'data-expected="{len(analysed.result.figures)}"' in document
    for title in [figure.title for figure in analysed.result.figures] + ["Metrics", "The study's findings, checked"]:
        assert f"<h2>{html.escape(title)}</h2>" in document
    assert "Studies read: designed-cvae-data-seeds (cvae data-seeds, 18 complete trials)" in document
    found = pd.read_csv(artifact("findings.csv"))
    assert found["#"].tolist() == list(range(1, 10))
    assert found["verdict"].tolist() == [finding.verdict for finding in analysed.result.findings]
    sources = pd.read_csv(artifact("sources.csv"))
    models = ["exact sampler"] + ["vae@champion,generator"] * 3 + ["cvae@champion,generator"] * 3
    assert sources["model"].tolist() == models
    assert (sources.groupby("model")["default"].count().drop("exact sampler") == 1).all()  # one default per model
    logged = pd.read_csv(artifact("metrics.csv"))
    assert dict(zip(logged["metric"], logged["value"], strict=True)) == pytest.approx(analysed.run.data.metrics)


def test_analyse_draws_each_figure_with_its_panels_and_traces(analysed):
    drawn = {figure.title: figure.figure for figure in analysed.result.figures}
    assert list(drawn) == [
        "The data across sizes and noise",
        "VAE: data, reconstructions and samples",
        "VAE: latent traversals in data space",
        "CVAE: data, reconstructions and samples",
        "CVAE: latent traversals in data space",
        "Latent space (UMAP of the training latents)",
        "Latent traversals in UMAP space",
        "Training curves",
        "Sample quality by source: MMD summary",
        "vae@champion,generator: samples by source",
        "cvae@champion,generator: samples by source",
        "Best validation MSE across noise and size (data studies)",
    ]

    def panels(title):
        return [annotation.text for annotation in drawn[title].layout.annotations]

    def points(title, name=None):
        return sum(len(trace.x) for trace in drawn[title].data if name is None or trace.name == name)

    assert panels("VAE: data, reconstructions and samples") == [
        "fresh data", "reconstruction", "prior samples", "aggregate-posterior samples"
    ]  # fmt: skip
    assert points("VAE: data, reconstructions and samples") == 4 * 200  # n_eval points in each panel
    # the latent traversals: every one of the 8 dimensions, once per label the model is decoded with
    assert panels("VAE: latent traversals in data space") == ["decoded"]
    assert panels("CVAE: latent traversals in data space") == ["decoded with label 0", "decoded with label 1"]
    paths = [trace for trace in drawn["CVAE: latent traversals in data space"].data if trace.mode == "lines+markers"]
    assert len(paths) == 2 * 8 and {len(path.x) for path in paths} == {figures.TRAVERSAL_STEPS}
    train = sum(len(subject.data.train) for subject in analysed.subjects)
    assert panels("Latent space (UMAP of the training latents)") == ["VAE", "CVAE"]
    assert points("Latent space (UMAP of the training latents)") == train
    assert len(drawn["Latent traversals in UMAP space"].data) == 2 * (2 + 8)
    assert panels("Training curves") == ["train_loss", "val_kl", "val_mse"]
    assert len(drawn["Training curves"].data) == 3 * 2  # each metric of both champions' runs
    bars = drawn["Sample quality by source: MMD summary"].data
    assert sorted(bar.name for bar in bars) == ["mixture", "posterior", "prior"]
    assert all(list(bar.x) == ["vae@champion,generator", "cvae@champion,generator"] for bar in bars)
    summaries = analysed.run.data.metrics  # each bar's whisker: two standard errors of its summary
    for bar in bars:
        expected = [2 * summaries[f"{kind}_champion_{bar.name}_mmd_summary_se"] for kind in ("vae", "cvae")]
        assert list(bar.error_y.array) == pytest.approx(expected)
    shown = panels("cvae@champion,generator: samples by source")
    assert shown[0] == "exact draws" and sorted(shown[1:]) == ["mixture", "posterior", "prior"]
    assert points("cvae@champion,generator: samples by source") == 4 * aliases.FIGURE_POINTS
    assert panels("Best validation MSE across noise and size (data studies)") == [
        "designed-vae-data-seeds", "designed-cvae-data-seeds"
    ]  # fmt: skip
    heatmap = drawn["Best validation MSE across noise and size (data studies)"].data[0]
    assert list(heatmap.x) == ["0.0", "0.05", "0.1"] and list(heatmap.y) == ["200", "2000", "20000"]


def test_a_registered_model_judged_afresh_scores_as_analyse_logged_it(analysed):
    """analyse reuses the analysed champion's judgement for its aliases; judging the registered model anew, with the
    same seed, gives the same numbers."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quality, "FULL_SETS", FEW_SETS)
        (entry,) = aliases.registered(analysed.client, ["cvae"], seed=0, cache_dir=analysed.root / "data")
    assert entry.label == "cvae@champion,generator" and entry.run_id == analysed.trained["cvae"]
    logged = {key: value for key, value in analysed.run.data.metrics.items() if key.startswith("cvae_champion_")}
    assert {key: value for key, value in aliases.alias_metrics([entry]).items() if "_champion_" in key} == logged
