"""PNG figures and per-epoch images: drawn without pyplot, logged to a real sqlite store, opened with Pillow."""

import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from moonvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from moonvae.tracking import images, runs
from moonvae.tracking.experiment import run_training
from moonvae.tuning import search

OPTUNA_PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "slice")
MAX_RUN_BYTES = 1_000_000  # every image a run stores, together
# the default data (400 test points a panel), a small model, a few epochs: images as big as a default trial's
RUN = RunConfig(
    data=DataConfig(), model=ModelConfig(latent_dim=8, decoder_hidden=(32,)), train=TrainConfig(max_epochs=12)
)


@pytest.fixture
def client(workdir):
    return runs.client()


def rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def has_colour(pixels: np.ndarray, colour: str) -> bool:
    return bool((pixels == rgb(colour)).all(axis=-1).any())


def stepped_images(client, run_id):
    """{(key, step): artifact path} of the run's log_image PNGs (MLflow names them key+step+N+timestamp+...)."""
    found = {}
    for artifact in client.list_artifacts(run_id, "images"):
        key, _, step, *_ = Path(artifact.path).name.split("+")
        if not artifact.path.endswith("+compressed.webp"):
            found[(key, int(step))] = artifact.path
    return found


def stored_bytes(client, run_id):
    return sum(a.file_size for folder in ("images", "plots") for a in client.list_artifacts(run_id, folder))


def opened(client, run_id, path, folder):
    image = Image.open(client.download_artifacts(run_id, path, str(folder)))
    assert image.format == "PNG"
    return image


def test_panels_colour_by_moon_grey_without_one_and_keep_points_beyond_the_frame():
    panels = images.Panels(2, (0.0, 1.0, 0.0, 1.0))
    inside = np.array([[0.2, 0.2], [0.8, 0.8]])
    pixels = panels.draw({"moons": (inside, np.array([0, 1])), "no moon": (inside, None)})
    left, right = np.hsplit(pixels[:, : pixels.shape[1] // 2 * 2], 2)
    assert has_colour(left, images.MOON_COLOURS[0]) and has_colour(left, images.MOON_COLOURS[1])
    assert has_colour(right, images.NO_MOON) and not has_colour(right, images.MOON_COLOURS[0])
    far = panels.draw({"a": (np.array([[50.0, -50.0]]), np.array([1])), "b": (np.empty((0, 2)), None)})
    assert has_colour(far, images.MOON_COLOURS[1])  # drawn on the frame's edge, not dropped


def test_pyplot_png_closes_the_figures_it_opened_also_on_error():
    before = plt.get_fignums()

    def two_figures():
        plt.subplots()
        return plt.subplots(1, 2)[1]  # an array of Axes, as Optuna's slice plot returns

    png = images.pyplot_png(two_figures)
    assert Image.open(io.BytesIO(png)).format == "PNG"

    def fails():
        plt.subplots()
        raise ValueError("nothing to plot")

    with pytest.raises(ValueError):
        images.pyplot_png(fails)
    assert plt.get_fignums() == before


def test_a_run_logs_png_plots_and_images_at_several_steps(client, tmp_path):
    with runs.run(client, "images") as run_id:
        outcome = run_training(RUN, client, run_id, log_model=False)
    final = RUN.train.max_epochs  # the kept model's step, one past any epoch
    assert len(outcome.result.history) == final  # every epoch ran: snapshots after the 1st and 10th of 12
    found = stepped_images(client, run_id)
    assert set(found) == {(key, step) for key in ("reconstructions", "samples") for step in (0, 9, final)}
    assert client.get_run(run_id).data.tags["mlflow.loggedImages"] == "True"  # what the UI looks for

    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/data.png", "plots/reconstruction.png"}
    training = opened(client, run_id, "plots/data.png", tmp_path)
    panels = opened(client, run_id, "plots/reconstruction.png", tmp_path)
    assert 100 <= training.width <= 1000 and 50 <= training.height <= 1000
    assert panels.height == training.height and 3.5 < panels.width / training.width < 4.5  # four panels

    def pixels(key, step):
        return np.asarray(opened(client, run_id, found[(key, step)], tmp_path / f"{key}-{step}").convert("RGB"))

    # the run's plot is the kept model's snapshot, and training changed the picture
    kept = np.hstack([pixels("reconstructions", final), pixels("samples", final)])
    assert np.array_equal(np.asarray(panels.convert("RGB")), kept)
    assert not np.array_equal(pixels("reconstructions", 0), pixels("reconstructions", final))
    assert stored_bytes(client, run_id) < MAX_RUN_BYTES


def test_a_study_logs_optunas_plots_as_png_and_its_trials_images(client, tmp_path):
    before = plt.get_fignums()
    fixed = {"n_samples": 200, "max_epochs": 10}
    (result,) = search.run(search.plan(model="vae", n_trials=3, fixed=fixed), client)
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert plots == {f"plots/{name}.png" for name in OPTUNA_PLOTS}
    for path in plots:
        image = opened(client, result.run_id, path, tmp_path)
        assert 200 <= image.width <= 3000 and 200 <= image.height <= 2000
    assert plt.get_fignums() == before  # Optuna draws through pyplot: every figure was closed
    trial_run = client.get_run(result.run_id).data.tags["moonvae.best_run_id"]
    assert {step for _, step in stepped_images(client, trial_run)} == {10}  # a trial: its kept model's only
    assert stored_bytes(client, trial_run) < MAX_RUN_BYTES
