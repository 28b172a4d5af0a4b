"""The generative search: two objectives, a Pareto front on the study run, the generator registered and loaded.

A real study (Optuna RDB storage, MLflow sqlite store) of tiny CVAE trials, run once for the module: its
decoders calibrated (the space's default likelihood), so its first objective is the held-out -ELBO.
"""

import io
import math

import mlflow
import optuna
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from trained import tracking_store

from moonvae import metrics
from moonvae.config import SOURCES, ConfigError
from moonvae.tracking import names
from moonvae.tuning import results, search, studies

TINY = {"n_samples": 200, "max_epochs": 12}
N_TRIALS = 4


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A 4-trial generative CVAE study, its result, and the store it left."""
    with tracking_store(tmp_path_factory.mktemp("generative")) as client:
        plan = search.plan("cvae", "generative", N_TRIALS, fixed=TINY)
        (result,) = search.run(plan, client)
        study = optuna.load_study(study_name="moonvae-cvae-generative", storage=studies.default_storage())
        yield client, result, study


def test_a_multi_objective_space_refuses_a_pruner_in_one_line(workdir):
    for pruner in ("median", "hyperband"):
        with pytest.raises(ConfigError) as refused:
            search.plan("vae", "generative", pruner=pruner)
        assert str(refused.value) == (
            "the generative space has 2 objectives and Optuna does not prune multi-objective studies: "
            "use pruner=none (or auto)"
        )
    assert search.plan("vae", "generative").pruner == "none"
    assert not (workdir / "mlflow.db").exists()


def test_every_trial_holds_both_objectives_and_its_front_membership(tuned):
    client, result, study = tuned
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE] * 2
    assert study.metric_names == ["val_nelbo", "mmd_summary"]  # named for optuna-dashboard
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == N_TRIALS
    front = {trial.number for trial in study.best_trials}
    assert sorted(front) == result.pareto and front
    for trial in complete:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.metrics["val_nelbo"] == pytest.approx(trial.values[0])
        assert run.data.params["likelihood"] == "gaussian" and run.data.params["prior"] == trial.params["prior"]
        assert run.data.metrics["best_sigma_x"] > 0
        assert run.data.metrics["mmd_summary"] == pytest.approx(trial.values[1])
        source = trial.user_attrs["source"]
        assert run.data.tags["moonvae.sampling_source"] == source
        assert run.data.metrics["mmd_summary"] == pytest.approx(run.data.metrics[f"{source}_mmd_summary"])
        scores = ("mmd_summary", "mmd_summary_se", "mmd_wide", "c2st", "c2st_se", "copying", "on_moon", "sets")
        assert {f"{s}_{score}" for s in SOURCES for score in scores} <= set(run.data.metrics)
        assert trial.user_attrs["mmd_summary_se"] == pytest.approx(run.data.metrics["mmd_summary_se"])
        assert run.data.tags["moonvae.pareto"] == str(trial.number in front).lower()
        assert len(client.get_metric_history(run.info.run_id, "val_mse")) == TINY["max_epochs"]  # never pruned


def test_the_study_run_holds_both_series_the_front_and_its_plot(tuned):
    client, result, study = tuned
    run = client.get_run(result.run_id)
    reconstruction = {"trial_val_mse", "best_val_mse"}  # a calibrated study's first objective is val_nelbo
    expected = set(metrics.names("study")) - reconstruction | set(metrics.names("pareto"))
    assert set(run.data.metrics) == expected | set(metrics.names("calibrated"))
    trials = sorted(study.trials, key=lambda trial: trial.number)

    def series(key):
        return {p.step: p.value for p in client.get_metric_history(result.run_id, key)}

    assert series("trial_val_nelbo") == pytest.approx({t.number: t.values[0] for t in trials})
    assert series("trial_mmd_summary") == pytest.approx({t.number: t.values[1] for t in trials})
    assert series("best_mmd_summary") == pytest.approx(
        {t.number: min(u.values[1] for u in trials[: t.number + 1]) for t in trials}
    )
    assert series("pareto_trials")[N_TRIALS - 1] == len(result.pareto)
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert "plots/pareto_front.png" in artifacts and "plots/optimization_history_mmd_summary.png" in artifacts
    front = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"runs:/{result.run_id}/pareto.csv")))
    assert sorted(front["trial"]) == result.pareto and front["generator"].sum() == 1
    assert int(front.loc[front["generator"], "trial"].iloc[0]) == result.best_trial
    note = run.data.tags["mlflow.note.content"]
    assert f"Pareto front (val_nelbo, mmd_summary): {len(result.pareto)} trials" in note
    assert results.generator_rule("val_nelbo") in note
    assert f"Generator: trial {result.best_trial}" in note and "moonvae-cvae@generator" in note
    generator = next(t for t in trials if t.number == result.best_trial)
    error = generator.user_attrs["mmd_summary_se"]  # the generator's summary, with its standard error
    assert f"mmd_summary {generator.values[1]:.5g} +- {error:.2g}" in note and result.summary_error == error
    assert results.entry_metrics(result)["cvae_best_mmd_summary_se"] == error


def test_the_generator_is_registered_by_the_rule_and_samples_from_its_source(tuned):
    client, result, study = tuned
    front = [(t.number, *t.values, t.user_attrs["mmd_summary_se"]) for t in study.best_trials]
    assert result.best_trial == results.generator_trial(front, "val_nelbo")
    name, version, alias = result.registered
    assert (name, alias) == ("moonvae-cvae", "generator")
    generator = next(t for t in study.trials if t.number == result.best_trial)
    registered = client.get_model_version_by_alias(name, "generator")
    assert registered.run_id == generator.user_attrs["mlflow_run_id"] and str(registered.version) == version
    assert registered.tags["moonvae.sampling_source"] == generator.user_attrs["source"]
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(name, "champion")  # the generative study leaves the champion alone

    model = mlflow.pyfunc.load_model("models:/moonvae-cvae@generator")
    source = model.metadata.metadata["source"]
    assert source == generator.user_attrs["source"]
    run = client.get_run(model.metadata.run_id)
    assert run.data.metrics["mmd_summary"] == pytest.approx(generator.values[1])
    logged = model.metadata.metadata["sources"][source]
    assert run.data.metrics["mmd_summary"] == pytest.approx(logged["mmd_summary"], 1e-3)
    request = pd.DataFrame({"label": [0, 1, 1, 0]})
    pd.testing.assert_frame_equal(
        model.predict(request, params={"seed": 3}), model.predict(request, params={"seed": 3, "source": source})
    )
    with pytest.raises(MlflowException) as raised:
        model.predict(request, params={"source": "gan"})
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE" and "unknown source 'gan'" in raised.value.message


def test_the_generator_rule_trades_no_more_than_the_stated_reconstruction():
    front = [(0, 0.001, 9.0, 0.1), (1, 0.0019, 2.0, 0.05), (2, 0.0025, 1.1, 0.05), (3, 0.01, 1.0, 0.05)]
    assert results.generator_trial(front) == 1  # 2 and 3 sample better but reconstruct > 2x worse than 0
    assert results.generator_trial([(4, 0.002, 3.0, 0.1)]) == 4
    # near-perfect reconstructions: the bound is the stated tolerance, not 2x a best of 2e-7
    tiny = [(5, 2e-7, 2.3, 0.05), (6, 3e-7, 2.1, 0.05), (7, 6e-6, 0.7, 0.02), (8, 2.5e-4, 0.5, 0.02)]
    assert results.generator_trial(tiny) == 7  # 8 samples better but reconstructs worse than 1e-4
    assert results.generator_trial([]) is None


def test_between_summaries_the_uncertainty_cannot_tell_apart_the_better_reconstruction_decides():
    # trial 1 samples a little better than 0, by less than two standard errors of the difference (0.28)
    assert results.generator_trial([(0, 0.0010, 3.7, 0.2), (1, 0.0015, 3.5, 0.2)]) == 0
    # the same difference, measured ten times as finely: trial 1 samples clearly better
    assert results.generator_trial([(0, 0.0010, 3.7, 0.02), (1, 0.0015, 3.5, 0.02)]) == 1
    # errors unknown (trials of an older study): the summaries alone decide
    assert results.generator_trial([(0, 0.0010, 3.7, math.nan), (1, 0.0015, 3.5, math.nan)]) == 1
    assert names.alias_for("generative") == "generator" and names.alias_for("basic") == "champion"


def test_with_a_calibrated_decoder_the_rule_trades_no_more_than_the_stated_nats():
    front = [(0, -0.30, 9.0, 0.1), (1, -0.27, 2.0, 0.1), (2, -0.24, 1.1, 0.1), (3, 0.5, 1.0, 0.1)]
    assert results.generator_trial(front, "val_nelbo") == 1  # 2 and 3 sample better but fit > 0.05 nats worse
    assert results.generator_trial([(4, 1.2, 3.0, 0.1)], "val_nelbo") == 4
    tied = [(0, -0.30, 2.2, 0.2), (1, -0.27, 2.0, 0.2)]  # 0 samples worse, within the uncertainty: it fits better
    assert results.generator_trial(tied, "val_nelbo") == 0
    assert "0.05 nats per point" in results.generator_rule("val_nelbo")


def test_the_generative_space_searches_the_prior_and_calibrates_unless_told_otherwise(workdir):
    calibrated = search.plan("vae", "generative", fixed=TINY).targets[0]
    assert calibrated.fixed["likelihood"] == "gaussian" and calibrated.objectives == ("val_nelbo", "mmd_summary")
    assert "prior" in search.SPACES["generative"].distributions
    as_before = search.plan("vae", "generative", study_base="mse", fixed=TINY | {"likelihood": "mse"}).targets[0]
    assert as_before.objectives == ("best_val_mse", "mmd_summary")


def test_convergence_of_two_objectives_is_the_best_of_each_and_the_front_so_far(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", directions=["minimize", "minimize"])
    x = FloatDistribution(0, 1)
    for values in ([0.3, 2.0], [0.2, 3.0], [0.4, 4.0], [0.1, 1.0]):
        study.add_trial(create_trial(params={"x": 0.5}, distributions={"x": x}, values=values))
    series = results.convergence(study, set(), ("best_val_mse", "mmd_summary"))
    assert series == {
        0: {"best_val_mse": 0.3, "best_mmd_summary": 2.0, "pareto_trials": 1},
        1: {"best_val_mse": 0.2, "best_mmd_summary": 2.0, "pareto_trials": 2},
        2: {"best_val_mse": 0.2, "best_mmd_summary": 2.0, "pareto_trials": 2},  # 2 is beaten by 0 in both
        3: {"best_val_mse": 0.1, "best_mmd_summary": 1.0, "pareto_trials": 1},  # 3 beats them all
    }
    assert results.convergence(study, {0, 1, 2}, ("best_val_mse", "mmd_summary")) == {3: series[3]}
