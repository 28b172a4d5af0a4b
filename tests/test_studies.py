"""Studies are found by what they are (model and space), whatever their names, and read back as tables."""

import optuna
import pytest
from studies import write_studies

from moonvae.tuning import studies
from moonvae.tuning.spaces import SPACES

WRITTEN = ("basic", "data", "probabilistic")  # the spaces write_studies fills


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def test_read_tables_keeps_completed_trials_and_computes_importances(storage):
    write_studies(storage)
    read = studies.read_tables(storage)
    assert set(read) == {(model, space) for model in ("vae", "cvae") for space in WRITTEN}
    name, basic = read[("vae", "basic")]
    assert name == "moonvae-vae-basic"
    assert len(basic.trials) == 60  # the failed and the pruned trial are left out
    assert set(SPACES["basic"].distributions) | {"value", "test_kl"} <= set(basic.trials.columns)
    assert set(basic.importances) == set(SPACES["basic"].distributions)
    assert sum(basic.importances.values()) == pytest.approx(1.0)
    assert len(read[("cvae", "data")][1].trials) == 21


def test_studies_are_found_by_their_attributes_not_their_names(storage):
    write_studies(storage, prefix="mine")
    optuna.create_study(study_name="moonvae-vae-basic", storage=storage)  # the default name, but not ours
    found = studies.read_tables(storage)
    assert found[("vae", "basic")][0] == "mine-vae-basic"
    assert {name for name, _ in found.values()} == {f"mine-{m}-{s}" for m in ("vae", "cvae") for s in WRITTEN}


def test_the_study_with_the_most_completed_trials_is_read(storage):
    write_studies(storage, prefix="big")
    small = optuna.create_study(study_name="small", storage=storage)
    studies.mark(small, "vae", "basic", {})
    assert studies.read_tables(storage)[("vae", "basic")][0] == "big-vae-basic"


def test_reading_an_absent_default_storage_creates_nothing(workdir):
    assert studies.existing_default_storage() is None
    assert not (workdir / "optuna.db").exists()
