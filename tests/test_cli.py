"""The `moonvae train` command and the `mlflow run . -e train` entry point, on a temporary sqlite store."""

import subprocess
import sys

import pytest
from conftest import ROOT, mlflow_run, moonvae
from mlflow.tracking import MlflowClient


def runs(workdir):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments) if experiments else []


def test_train_logs_a_complete_run(workdir):
    done = moonvae(workdir, "train", "--model", "cvae", "--max-epochs", "12", "--n-samples", "400", "--latent-dim", "8")
    assert done.returncode == 0, done.stderr
    assert "best val_mse" in done.stdout
    client, found = runs(workdir)
    (run,) = found
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "cvae" and run.data.params["latent_dim"] == "8"
    for key in ("train_loss", "val_loss", "val_mse", "val_kl", "lr"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(point.step for point in history) == list(range(12))
    for key in ("best_val_mse", "test_mse", "test_kl"):
        assert run.data.metrics[key] > 0
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {
        "plots/data.png",
        "plots/reconstruction.png",
    }
    assert run.inputs.dataset_inputs[0].dataset.name == "moons_400_0.15_42"
    assert len(run.outputs.model_outputs) == 1
    # lineage: a run of this checkout's code names its source and commit, in the project's experiment
    assert client.get_experiment(run.info.experiment_id).name == "moonvae"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == commit
    assert run.data.tags["mlflow.source.name"].endswith("__main__.py") and run.data.tags["mlflow.user"]
    assert run.data.tags["moonvae.kind"] == "train"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--latent-dim", "-3"], "latent_dim"),
        (["--noise", "-1"], "noise"),
        (["--model", "gan"], "model"),
        (["--eps-w", "0"], "eps_w"),
        (["--likelihood", "laplace"], "likelihood"),
        (["--prior", "flow"], "prior"),
        (["--prior", "vamp", "--pseudo-inputs", "0"], "pseudo_inputs"),
        (["--lr", "abc"], "--lr"),
        (["--n-sample", "5"], "--n-sample"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_run(workdir, args, named):
    done = moonvae(workdir, "train", *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moonvae: error:") and named in lines[0]
    assert runs(workdir)[1] == []


def test_mlflow_run_train_entry_point(workdir):
    done = mlflow_run(workdir, "train", "model=cvae", "max_epochs=40", "lr=1e-3")
    assert done.returncode == 0, done.stderr[-3000:]
    client, (run,) = runs(workdir)
    assert run.info.status == "FINISHED"
    assert run.data.params["max_epochs"] == "40" and run.data.params["lr"] == "1e-3"  # the user's spelling kept
    assert run.data.params["eps_w"] == "0.1" and run.data.params["grad_clip"] == "0.5"
    assert len(client.get_metric_history(run.info.run_id, "val_mse")) == 40
    assert run.data.metrics["test_mse"] < 0.05
    assert len(client.list_artifacts(run.info.run_id, "plots")) >= 2
    assert len(run.outputs.model_outputs) == 1


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("latent_dim=-3", "latent_dim must be an integer >= 1, got -3"),
        ("pseudo_inputs=0", "pseudo_inputs must be an integer >= 1, got 0"),
    ],
)
def test_mlflow_run_bad_parameter_fails_cleanly(workdir, param, message):
    done = mlflow_run(workdir, "train", param)
    assert done.returncode != 0
    assert f"moonvae: error: {message}" in done.stderr
    _, (run,) = runs(workdir)
    assert run.info.status == "FAILED"


HEAVY = ("torch", "mlflow", "optuna", "plotly", "umap", "sklearn")


@pytest.mark.parametrize("args", [["--help"], ["tune", "--help"], ["train", "--n-sample", "5"]])
def test_help_and_typos_answer_without_the_heavy_stack(workdir, args):
    script = (
        "import sys\nfrom moonvae.cli import main\n"
        f"try:\n    code = main({args!r}, prog_name='moonvae')\nexcept SystemExit as done:\n    code = done.code\n"
        f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1] == ("0 []" if "--help" in args else "2 []"), done.stderr
