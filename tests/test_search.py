"""Tuning on real Optuna RDB storage and a real MLflow sqlite store, in a temporary folder.

Trials are tiny (200 points, a dozen epochs) so a study of a few trials takes seconds;
what is checked is the bookkeeping: counts, nesting, states, reasons, registration.
"""

import math
import os
import subprocess
import sys
import threading

import mlflow
import optuna
import pandas as pd
import pytest
from conftest import mlflow_run, moonvae, subprocess_env
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from moonvae import metrics
from moonvae.config import ConfigError
from moonvae.core.train import TrainingDiverged
from moonvae.sampling import quality, sources
from moonvae.tracking import registry, runs
from moonvae.tuning import search, spaces, studies, trials

TINY = {"n_samples": 200, "max_epochs": 12}


def tune(**options):
    options = {"model": "vae", "n_trials": 2, "fixed": TINY} | options
    return search.run(search.plan(**options), runs.client())


def load_study(name="moonvae-vae-basic"):
    return optuna.load_study(study_name=name, storage=studies.default_storage())


def all_runs(client):
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, order_by=["attributes.start_time ASC"]) if experiments else []


def children(client, parent_id):
    return [run for run in all_runs(client) if run.data.tags.get("mlflow.parentRunId") == parent_id]


def by_state(study):
    return sorted(trial.state.name for trial in study.trials)


@pytest.fixture
def client(workdir):
    return runs.client()


@pytest.fixture
def fail_when(monkeypatch):
    """Make trials whose config matches a predicate raise, the way a real trial failure surfaces."""

    def install(predicate, error=lambda: TrainingDiverged("loss is not finite at epoch 3; try a lower lr")):
        real = trials._config

        def config_of(site, trial):
            config = real(site, trial)
            if predicate(config):
                raise error()
            return config

        monkeypatch.setattr(trials, "_config", config_of)

    return install


def test_names_and_default_storage(workdir):
    assert studies.study_name("vae", "basic") == "moonvae-vae-basic"
    assert studies.study_name("cvae", "data", "s", both=True) == "s-cvae"
    assert studies.study_name("cvae", "data", "s") == "s"
    assert studies.default_storage(f"sqlite:///{workdir}/sub/mlflow.db") == f"sqlite:///{workdir}/sub/optuna.db"
    assert studies.default_storage("sqlite:///mlflow.db") == f"sqlite:///{workdir}/optuna.db"
    assert studies.default_storage("http://localhost:5000") == f"sqlite:///{workdir}/optuna.db"
    assert studies.redact("postgresql+psycopg2://me:secret@db/optuna") == "postgresql+psycopg2://me:***@db/optuna"


@pytest.mark.parametrize(("space", "pruner"), [("basic", "median"), ("data", "none"), ("probabilistic", "none")])
def test_auto_pruner_prunes_only_the_search_for_the_best(workdir, space, pruner):
    assert search.plan("vae", space).pruner == pruner
    assert search.plan("vae", space, study_base=f"{space}-2", pruner="hyperband").pruner == "hyperband"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"space": "wide"}, "space must be one of basic, data, probabilistic, importance, capacity, data-seeds"),
        ({"model": "gan"}, "model must be one of vae, cvae, both, got 'gan'"),
        ({"n_trials": 0}, "n_trials must be an integer >= 1"),
        ({"n_jobs": 0}, "n_jobs must be an integer >= 1"),
        ({"workers": 0}, "workers must be an integer >= 1"),
        ({"pruner": "sometimes"}, "pruner must be one of auto, median, hyperband, none"),
        ({"fixed": {"lr": 0.01}}, "lr is searched by the basic space"),
        ({"fixed": {"patience": 0}}, "patience must be an integer >= 1"),
        ({"fixed": {"latent": 3}}, "unknown parameter(s): latent"),
        ({"fixed": {"likelihood": "laplace"}}, "likelihood must be one of mse, gaussian, got 'laplace'"),
        ({"space": "generative", "fixed": {"prior": "vamp"}}, "prior is searched by the generative space"),
        ({"storage": "sqlite:////no/such/folder/optuna.db"}, "cannot open storage sqlite:////no/such/folder/optuna.db"),
        ({"storage": "nosuchdb://x"}, "cannot open storage nosuchdb://x"),
    ],
)
def test_bad_input_is_refused_before_anything_is_created(workdir, options, message):
    with pytest.raises(ConfigError) as refused:
        search.plan(**({"model": "vae"} | options))
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not (workdir / "optuna.db").exists() and not (workdir / "mlflow.db").exists()


def test_a_seed_given_to_a_space_that_searches_seeds_seeds_its_sampler(workdir):
    plan = search.plan("vae", "capacity", 3, fixed={"seed": 7, "max_epochs": 2})
    assert plan.seed == 7 and "seed" not in plan.targets[0].fixed
    assert plan.targets[0].fixed["max_epochs"] == 2  # the space's default of 300 gives way to the user's


def test_trials_nest_under_one_study_run_with_two_workers(client):
    (result,) = tune(n_trials=4, n_jobs=2)
    study = load_study()
    assert by_state(study).count("FAIL") == 0 and len(study.trials) == 4
    study_run = client.get_run(result.run_id)
    assert study_run.info.status == "FINISHED" and study_run.data.tags["moonvae.kind"] == "study"
    assert study_run.data.params["n_trials"] == "4" and study_run.data.params["sampler"] == "TPESampler"
    assert study_run.data.params["max_epochs"] == "12" and "lr" not in study_run.data.params  # lr is searched
    trials = children(client, result.run_id)
    assert sorted(run.info.run_name for run in trials) == ["trial-000", "trial-001", "trial-002", "trial-003"]
    assert {run.info.run_id for run in trials} == {trial.user_attrs["mlflow_run_id"] for trial in study.trials}
    assert all(children(client, run.info.run_id) == [] for run in trials)  # two levels only
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["moonvae.trial_state"] == trial.state.name
        assert run.data.tags["moonvae.trial"] == str(trial.number)
        assert run.data.params["lr"] == str(trial.params["lr"])
        assert run.data.params["latent_dim"] == str(trial.params["latent_dim"])
        assert len(client.get_metric_history(run.info.run_id, "val_mse")) == 12
        assert run.data.metrics["best_val_mse"] == pytest.approx(trial.value)
        assert "plots/reconstruction.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    first, second = sorted(trials, key=lambda run: run.info.run_name)[:2]
    assert second.info.start_time < first.info.end_time  # the two workers really overlapped
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"trials.csv", "best.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert plots == {
        f"plots/{name}.png" for name in ("optimization_history", "param_importances", "parallel_coordinate", "slice")
    }
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="trials.csv"))
    assert len(table) == 4 and set(table["user_attrs_mlflow_run_id"]) == {run.info.run_id for run in trials}


def test_both_models_study_side_by_side_each_in_a_worker_process_of_its_own(client):
    results = tune(model="both", n_trials=3)
    assert [result.model for result in results] == ["vae", "cvae"]
    workers = {}
    for result in results:
        study = load_study(result.name)
        assert by_state(study) == ["COMPLETE"] * 3 and result.registered is not None
        assert {run.info.run_id for run in children(client, result.run_id)} == {
            trial.user_attrs["mlflow_run_id"] for trial in study.trials
        }
        workers[result.model] = {trial.user_attrs["moonvae.worker"]["pid"] for trial in study.trials}
    assert len(workers["vae"]) == len(workers["cvae"]) == 1  # one worker each, trials in rounds
    assert workers["vae"] != workers["cvae"] and os.getpid() not in workers["vae"] | workers["cvae"]


def test_a_study_run_shows_how_the_study_converged_and_what_it_found(client):
    (result,) = tune(n_trials=3, n_jobs=2)
    study = load_study()
    assert study.metric_names == ["best_val_mse"]  # named for optuna-dashboard
    history = sorted((p.step, p.value) for p in client.get_metric_history(result.run_id, "best_val_mse"))
    values = {trial.number: trial.value for trial in study.trials}
    assert [step for step, _ in history] == [0, 1, 2]  # one point per trial, step = trial number
    assert [value for _, value in history] == pytest.approx([min(values[n] for n in range(k + 1)) for k in range(3)])
    trial_points = {p.step: p.value for p in client.get_metric_history(result.run_id, "trial_val_mse")}
    assert trial_points == pytest.approx(values)
    study_run = client.get_run(result.run_id)
    assert set(study_run.data.metrics) == set(metrics.names("study"))
    assert study_run.info.experiment_id == client.get_experiment_by_name("moonvae").experiment_id
    assert study_run.inputs.dataset_inputs[0].dataset.name == "moons_200_0.15_42"  # the data every trial used
    note = study_run.data.tags["mlflow.note.content"]
    best = study.best_trial
    assert f"Best: trial {best.number}" in note and best.user_attrs["mlflow_run_id"] in note
    assert 'mlflow.pyfunc.load_model("models:/moonvae-vae@champion")' in note and "3 complete" in note
    assert {run.data.tags["moonvae.kind"] for run in children(client, result.run_id)} == {"trial"}
    assert {"mlflow.user", "mlflow.source.name", "mlflow.source.type"} <= set(study_run.data.tags)


def test_resume_runs_only_the_missing_trials_and_registers_the_best(client):
    (first,) = tune(n_trials=2)
    (second,) = tune(n_trials=3, pruner="hyperband")
    study = load_study()
    assert [trial.number for trial in study.trials] == [0, 1, 2]
    assert second.run_id == first.run_id  # one study run across calls
    assert len(children(client, first.run_id)) == 3
    study_run = client.get_run(first.run_id)
    assert study_run.info.status == "FINISHED" and study_run.data.metrics["trials_complete"] == 3
    assert study_run.data.metrics["best_val_mse"] == pytest.approx(study.best_value)

    name, version, alias = second.registered
    assert (name, alias) == ("moonvae-vae", "champion")
    registered = client.get_model_version_by_alias(name, "champion")
    assert str(registered.version) == version
    assert registered.run_id == study.best_trial.user_attrs["mlflow_run_id"]
    assert registered.tags["moonvae.study"] == "moonvae-vae-basic"
    assert registered.tags["moonvae.trial"] == str(study.best_trial.number)
    assert float(registered.tags["best_val_mse"]) == pytest.approx(study.best_value)
    model = mlflow.pyfunc.load_model("models:/moonvae-vae@champion")
    assert list(model.predict(pd.DataFrame({"label": [0, 1]})).columns) == ["x1", "x2", "label"]

    versions = len(client.search_model_versions("name='moonvae-vae'"))
    (third,) = tune(n_trials=3)  # nothing missing: no trial, no new version
    assert len(load_study().trials) == 3 and third.registered == second.registered
    assert len(client.search_model_versions("name='moonvae-vae'")) == versions


def test_a_duplicate_registration_by_a_second_worker_is_undone(client):
    (result,) = tune(n_trials=2)
    name, first, alias = result.registered
    model_id = load_study().best_trial.user_attrs["mlflow_model_id"]
    # what a second worker finishing the study at the same moment does: register the same model again
    duplicate = registry.register_model(client, registry.logged_model_info(model_id), name, alias=alias)
    assert duplicate != first
    assert registry.keep_first_version(client, name, alias, model_id, duplicate) == first
    assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == [first]
    assert str(client.get_model_version_by_alias(name, alias).version) == first
    # the worker holding the first version keeps it
    assert registry.keep_first_version(client, name, alias, model_id, first) == first


def test_resume_with_other_fixed_values_is_refused_and_leaves_the_study_alone(client):
    tune(n_trials=1)
    before = [(trial.number, trial.state) for trial in load_study().trials]
    runs_before = len(all_runs(client))
    with pytest.raises(ConfigError, match="study 'moonvae-vae-basic' was run with max_epochs=12; pass the same"):
        search.plan(model="vae", n_trials=3, fixed=TINY | {"max_epochs": 20})
    assert [(trial.number, trial.state) for trial in load_study().trials] == before
    assert len(all_runs(client)) == runs_before


def asked(space, workers, trials=6):
    """The points a study's workers (each with its own sampler) draw when they take turns unevenly."""
    study = optuna.create_study()
    samplers = [spaces.make_sampler(space, 42, 0, worker) for worker in range(workers)]
    for number in range(trials):
        study.sampler = samplers[number * 7 % workers]
        study.ask(fixed_distributions=space.distributions)
    return [trial.params for trial in study.trials]


@pytest.mark.parametrize("space", ["probabilistic", "data"])
def test_random_and_grid_points_do_not_depend_on_how_many_workers_draw_them(space):
    one, three = asked(spaces.SPACES[space], 1), asked(spaces.SPACES[space], 3)
    assert one == three
    assert len({tuple(sorted(params.items())) for params in one}) == len(one)  # no point drawn twice


def test_each_tpe_worker_has_its_own_seed_and_the_first_keeps_the_single_workers():
    basic = spaces.SPACES["basic"]
    first, second = asked(basic, 1, trials=1), asked(basic, 2, trials=2)[1:]
    assert first != second
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=42, n_startup_trials=10, constant_liar=True))
    assert study.ask(fixed_distributions=basic.distributions).params == first[0]  # workers=1: the study as before


def test_grid_visits_each_point_once_and_retries_a_failed_point(client, monkeypatch, fail_when):
    grid = {"n_samples": (200, 300), "noise": (0.1, 0.2)}
    monkeypatch.setitem(spaces.SPACES, "data", spaces.grid_space("data", grid))
    failed_once = threading.Event()

    def first_attempt_at_300_02(config):
        hit = (config.data.n_samples, config.data.noise) == (300, 0.2) and not failed_once.is_set()
        failed_once.set() if hit else None
        return hit

    fail_when(first_attempt_at_300_02)
    (result,) = tune(space="data", n_trials=100, n_jobs=2, fixed={"max_epochs": 3})
    study = load_study("moonvae-vae-data")
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sorted((t.params["n_samples"], t.params["noise"]) for t in done) == sorted(
        (n, noise) for n in grid["n_samples"] for noise in grid["noise"]
    )
    (failed,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert (failed.params["n_samples"], failed.params["noise"]) == (300, 0.2)
    run = client.get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["moonvae.status_reason"].startswith("TrainingDiverged")
    assert result.registered[2] == "best-data"  # another data set: not the champion


@pytest.mark.slow
def test_the_studys_data_grid_visits_its_21_points_once(client):
    tune(space="data", n_trials=100, fixed={"max_epochs": 2}, pruner="none")
    study = load_study("moonvae-vae-data")
    points = [(t.params["n_samples"], t.params["noise"]) for t in study.trials]
    assert len(points) == 21 and len(set(points)) == 21
    assert {n for n, _ in points} == {200, 2000, 20000}


GOOD = {"lr": 0.01, "batch_size": 32, "encoder_hidden": 16, "latent_dim": 16, "decoder_hidden": 64}
BEHIND = GOOD | {"lr": 1e-4, "decoder_hidden": 2, "latent_dim": 2}  # far behind at epoch 9: pruned
DIVERGING = GOOD | {"lr": 0.0123}  # fails, as fail_when is told below


def run_queued(monkeypatch, fail_when, n_trials: int, k: int, queued: list[dict]) -> optuna.Study:
    """A basic study that prunes from epoch 9 once a trial finished, whose lr=0.0123 trials diverge, `queued` first."""
    monkeypatch.setattr(spaces, "PRUNE_AFTER_EPOCHS", 0)
    monkeypatch.setattr(spaces, "MEDIAN_STARTUP_TRIALS", 1)
    fail_when(lambda config: config.train.lr == DIVERGING["lr"])
    plan = search.plan(model="vae", n_trials=n_trials, fixed={"n_samples": 200, "max_epochs": 20}, trials_at_once=k)
    study = plan.studies["moonvae-vae-basic"]
    for params in queued:
        study.enqueue_trial(params)
    search.run(plan, runs.client())
    return study


def test_pruned_and_failed_trials_are_recorded_and_the_study_goes_on(client, monkeypatch, fail_when):
    study = run_queued(monkeypatch, fail_when, 3, 1, [GOOD, BEHIND, DIVERGING])

    states = [trial.state for trial in study.trials]
    assert states[:3] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert len(states) == 4 and states[3] != TrialState.FAIL  # the failure was replaced
    pruned = client.get_run(study.trials[1].user_attrs["mlflow_run_id"])
    assert pruned.info.status == "KILLED" and pruned.data.tags["moonvae.trial_state"] == "PRUNED"
    assert pruned.data.tags["moonvae.status_reason"].startswith("pruned at epoch 9")
    assert len(client.get_metric_history(pruned.info.run_id, "val_mse")) == 10  # curves kept up to the prune
    failed = client.get_run(study.trials[2].user_attrs["mlflow_run_id"])
    assert failed.info.status == "FAILED" and failed.data.tags["moonvae.trial_state"] == "FAIL"
    assert (
        failed.data.tags["moonvae.status_reason"] == "TrainingDiverged: loss is not finite at epoch 3; try a lower lr"
    )
    assert study.trials[2].user_attrs["reason"].startswith("TrainingDiverged")


def test_a_round_trains_its_trials_together_and_ends_each_on_its_own(client, monkeypatch, fail_when):
    """K = 2: the second round sees the first: one trial pruned, one failed, neither stops the other or the study."""
    other_stack = GOOD | {"encoder_hidden": 8, "batch_size": 64}  # another batch size: another fit_batch call
    study = run_queued(monkeypatch, fail_when, 4, 2, [GOOD, other_stack, BEHIND, DIVERGING])

    states = [trial.state for trial in study.trials]
    assert states[:4] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert len(states) == 5 and states[4] != TrialState.FAIL  # the failure was replaced in a third round
    for trial in study.trials[:2]:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.params["lr"] == str(trial.params["lr"])
        assert len(client.get_metric_history(run.info.run_id, "val_mse")) == 20  # its own curve, every epoch
        assert run.data.metrics["best_val_mse"] == pytest.approx(trial.value)
    pruned = client.get_run(study.trials[2].user_attrs["mlflow_run_id"])
    assert pruned.info.status == "KILLED" and pruned.data.tags["moonvae.status_reason"].startswith("pruned at epoch 9")
    assert len(client.get_metric_history(pruned.info.run_id, "val_mse")) == 10
    failed = client.get_run(study.trials[3].user_attrs["mlflow_run_id"])
    assert failed.info.status == "FAILED" and study.trials[3].user_attrs["reason"].startswith("TrainingDiverged")
    assert "RUNNING" not in {run.info.status for run in all_runs(client)}


@pytest.mark.parametrize("k", [1, 3])
def test_a_seeded_study_is_the_same_twice_at_any_k(workdir, k):
    """Rounds end in trial order and see only finished trials, so timing cannot change a seeded TPE study."""
    values = []
    for name in ("first", "second"):
        plan = search.plan("vae", "basic", 6, study_base=name, fixed=TINY, trials_at_once=k)
        search.run(plan, runs.client())
        values.append([(trial.params, trial.value) for trial in plan.studies[name].trials])
    assert values[0] == values[1]


def test_only_a_trial_that_leads_logs_its_model_and_gets_the_full_judgement(client):
    plan = search.plan("vae", "probabilistic", 6, fixed=TINY, trials_at_once=3)
    search.run(plan, runs.client())
    study = plan.studies["moonvae-vae-probabilistic"]
    best_so_far, logged, judged = math.inf, [], []
    for trial in study.trials:  # a round's trials end in trial order, each judged against those ended before it
        leads = trial.value < best_so_far
        best_so_far = min(best_so_far, trial.value)
        logged.append(("mlflow_model_id" in trial.user_attrs) == leads)
        found = client.get_run(trial.user_attrs["mlflow_run_id"]).data.metrics
        if leads:  # the latent mixture fitted, every source judged to its target error, the check scores
            judged.append("mixture_mmd_summary" in found and found["posterior_check_sets"] == quality.CHECK_SETS)
        else:  # screened: the posterior's and prior's MMD on a few sets, each with its standard error
            sets = {found[f"{source}_sets"] for source in ("posterior", "prior")}
            checked = {key for key in found if key.startswith(("mixture_", "posterior_c2st", "prior_copying"))}
            judged.append(sets == {sources.SCREENING_SETS} and not checked and found["posterior_mmd_summary_se"] > 0)
        judged[-1] = judged[-1] and found["mmd_summary"] == found[f"{trial.user_attrs['source']}_mmd_summary"]
    assert all(logged) and "mlflow_model_id" in study.best_trial.user_attrs
    assert all(judged)
    assert any("mlflow_model_id" not in trial.user_attrs for trial in study.trials)  # screened trials were checked


@pytest.mark.parametrize(("k", "failed"), [(1, 5), (8, 6)])  # rounds of 3 (n_trials): the check comes between rounds
def test_repeated_failures_stop_the_call_and_leave_no_run_running(client, fail_when, k, failed):
    fail_when(lambda config: True, error=lambda: OSError("disk full"))
    message = f"{failed} trials in a row failed, the last with OSError: disk full"
    with pytest.raises(trials.TooManyFailures, match=message):
        tune(n_trials=3, trials_at_once=k)
    assert by_state(load_study()) == ["FAIL"] * failed
    assert {run.info.status for run in all_runs(client)} == {"FAILED"}


@pytest.mark.parametrize(("k", "failed"), [(1, 1), (8, 3)])  # a round of 3 ends together
def test_ctrl_c_kills_the_runs_and_fails_the_trial(client, fail_when, k, failed):
    fail_when(lambda config: True, error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        tune(n_trials=3, trials_at_once=k)
    assert by_state(load_study()) == ["FAIL"] * failed
    assert {(run.info.status, run.data.tags["moonvae.status_reason"]) for run in all_runs(client)} == {
        ("KILLED", "interrupted")
    }


STOP_EPOCH = 6  # of TINY's 12


@pytest.mark.parametrize("k", [1, 3])
def test_ctrl_c_mid_training_loses_no_epoch_a_run_was_given(client, monkeypatch, k):
    """Nothing buffered is lost: the finished round's runs hold every epoch they trained, the interrupted trial's
    every epoch up to the one Ctrl-C arrived in, its round-mates each epoch they reached: every metric as far, in
    order."""
    real = trials._reporter

    def reporter(site, trial, askable):
        report = real(site, trial, askable)

        def on_epoch(epoch_metrics):
            if trial.number == k and epoch_metrics.epoch == STOP_EPOCH:  # the first trial of the second round
                raise KeyboardInterrupt
            report(epoch_metrics)

        return on_epoch

    monkeypatch.setattr(trials, "_reporter", reporter)
    with pytest.raises(KeyboardInterrupt):
        tune(n_trials=2 * k, trials_at_once=k)
    study = load_study()
    assert by_state(study) == ["COMPLETE"] * k + ["FAIL"] * k
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        lengths = set()
        for key in metrics.names("epoch", calibrated=False):
            steps = [point.step for point in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(len(steps))), (trial.number, key)
            lengths.add(len(steps))
        if trial.state == TrialState.COMPLETE:
            assert lengths == {int(run.data.metrics["epochs"])}, trial.number
        elif trial.number == k:
            assert lengths == {STOP_EPOCH + 1}  # logged, then the reporter raised
        else:
            # a round-mate in the same stack reached STOP_EPOCH or the epoch after; in another stack, none yet
            assert len(lengths) == 1 and lengths <= {0, STOP_EPOCH, STOP_EPOCH + 1}, (trial.number, lengths)


def test_timeout_stops_starting_trials(client):
    """No trial starts more than `timeout` seconds after the call's clock began, which is before the first one."""
    timeout = 5.0  # ten times the setup a loaded machine took before the first trial; 50 trials take far longer
    (result,) = tune(n_trials=50, timeout=timeout)
    starts = sorted(trial.datetime_start for trial in load_study().trials)
    assert 1 <= len(starts) == sum(result.counts.values()) < 50
    assert (starts[-1] - starts[0]).total_seconds() <= timeout + 0.5  # + an ask's duration on a busy machine
    assert {run.info.status for run in all_runs(client)} == {"FINISHED"}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--space", "wide"], "space must be one of"),
        (["--n-trials", "0"], "n_trials must be an integer >= 1"),
        (["--storage", "sqlite:////no/such/folder/optuna.db"], "cannot open storage"),
        (["--max_epochs", "abc"], "--max_epochs"),
        (["--prior", "flow"], "prior must be one of normal, vamp"),
    ],
)
def test_cli_bad_input_is_one_line_and_leaves_no_run(workdir, args, named):
    done = moonvae(workdir, "tune", "--model", "vae", *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moonvae: error:") and named in lines[0], done.stderr
    assert all_runs(MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")) == []


@pytest.mark.slow
def test_mlflow_run_tune_resumes_one_study_and_registers_both_champions(workdir, client):
    done = mlflow_run(workdir, "tune", "model=vae", "n_trials=4", "max_epochs=25", "study_name=s")
    assert done.returncode == 0, done.stderr[-3000:]
    done = mlflow_run(workdir, "tune", "model=vae", "n_trials=6", "max_epochs=25", "study_name=s", "n_jobs=2")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{workdir / 'optuna.db'}")
    assert len(study.trials) == 6 and all(t.state != TrialState.FAIL for t in study.trials)
    study_run_id = study.user_attrs["mlflow_run_id"]
    study_run = client.get_run(study_run_id)
    assert study_run.info.run_name == "s" and study_run.data.params["max_epochs"] == "25"
    trials = children(client, study_run_id)
    assert len(trials) == 6 and {run.info.run_id for run in trials} == {
        t.user_attrs["mlflow_run_id"] for t in study.trials
    }
    for run in trials:
        assert run.data.params["max_epochs"] == "25"
        assert len(client.get_metric_history(run.info.run_id, "val_mse")) == 25
        assert client.list_artifacts(run.info.run_id, "plots")
    second_entry = [run for run in all_runs(client) if run.data.tags.get("moonvae.study_runs") == study_run_id]
    assert len(second_entry) == 1 and second_entry[0].info.status == "FINISHED"

    done = mlflow_run(workdir, "tune", "model=both", "n_trials=2", "max_epochs=25", "study_name=b", "n_jobs=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered moonvae-cvae version 1 as @champion" in done.stdout
    entry = [run for run in all_runs(client) if run.data.tags.get("moonvae.kind") == "tune"][-1]  # the newest
    both = {run.info.run_name for run in children(client, entry.info.run_id)}
    assert both == {"b-vae", "b-cvae"}  # the entry run is the parent of the two studies it ran
    assert {"vae_best_val_mse", "cvae_best_val_mse", "vae_trials_complete"} <= set(entry.data.metrics)
    for model in ("vae", "cvae"):
        loaded = mlflow.pyfunc.load_model(f"models:/moonvae-{model}@champion")
        assert loaded.predict(pd.DataFrame({"label": [0, 1, 1]})).shape == (3, 3)  # x1, x2, label
    assert {run.info.status for run in all_runs(client)} == {"FINISHED"}


def test_a_password_in_a_storage_url_under_mlflow_run_is_refused(workdir):
    client = runs.client()
    entry = client.create_run(runs.experiment_id(client)).info.run_id  # what `mlflow run` makes first
    env = subprocess_env(workdir) | {"MLFLOW_RUN_ID": entry}
    command = [sys.executable, "-m", "moonvae", "tune", "--storage", "postgresql://me:secret@db/optuna"]
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "holds a password" in line and "PGPASSWORD" in line and "secret" not in line
    assert client.get_run(entry).info.status == "FAILED"


@pytest.mark.slow
def test_mlflow_run_tune_bad_input_fails_the_entry_run(workdir):
    done = mlflow_run(workdir, "tune", "model=vae", "n_trials=0")
    assert done.returncode != 0
    assert "moonvae: error: n_trials must be an integer >= 1, got 0" in done.stderr
    (run,) = all_runs(MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}"))
    assert run.info.status == "FAILED"


@pytest.mark.parametrize("pruner", ["median", "hyperband", "none"])
def test_the_pruner_is_skipped_only_where_its_answer_is_no(tmp_path, pruner):
    """On a real sqlite study: wherever `askable` skips the pruner, Optuna's should_prune says no."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(storage=storage, pruner=spaces.make_pruner(pruner, 200))
    steps = range(9, 200, trials.REPORT_EVERY)

    def answers(values):
        trial, found = study.ask(), []
        askable = spaces.askable(study.pruner, study.get_trials(states=(TrialState.COMPLETE,)))
        for step in steps:
            trial.report(values(step), step)
            found.append((step, askable(step), trial.should_prune()))
        return trial, found

    for complete in range(spaces.MEDIAN_STARTUP_TRIALS + 1):
        trial, found = answers(lambda step: 1.0 if step < 120 else 9.0)  # worse than any complete trial after 120
        assert all(not pruned for _, asked, pruned in found if not asked)
        if pruner == "none" or (pruner == "median" and complete < spaces.MEDIAN_STARTUP_TRIALS):
            assert not any(asked for _, asked, _ in found)
        if pruner == "median" and complete == spaces.MEDIAN_STARTUP_TRIALS:  # the complete trials reported to 99
            assert {step for step, asked, _ in found if asked} == set(range(59, 100, 10))
        study.tell(trial, state=TrialState.PRUNED)
        trial = study.ask()
        for step in range(9, 100, trials.REPORT_EVERY):
            trial.report(0.5, step)
        study.tell(trial, 0.5)
    if pruner == "median":  # past the complete trials' last step the median pruner has nothing to compare with
        _, found = answers(lambda step: 9.0)
        assert any(pruned for _, _, pruned in found) and not any(pruned for step, _, pruned in found if step > 99)
