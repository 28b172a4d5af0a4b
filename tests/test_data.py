import subprocess
import sys

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from moonvae.config import DataConfig
from moonvae.core import data


@pytest.fixture
def config() -> DataConfig:
    return DataConfig(n_samples=1000, noise=0.1, data_seed=3)


def test_cache_file_is_named_after_the_config(tmp_path, config):
    _, _, path = data.load_or_generate(config, tmp_path)
    assert path == tmp_path / "moons_1000_0.1_3.npz"
    with np.load(path) as arrays:
        assert arrays["X"].shape == (1000, 2) and arrays["X"].dtype == np.float32
        assert arrays["y"].shape == (1000,)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_cache_is_reused_not_regenerated(tmp_path, config, monkeypatch):
    first_x, _, path = data.load_or_generate(config, tmp_path)

    def must_not_generate(_config):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(data, "generate", must_not_generate)
    again_x, _, again = data.load_or_generate(config, tmp_path)
    assert again == path
    np.testing.assert_array_equal(first_x, again_x)


def test_failed_write_leaves_no_partial_file(tmp_path, config, monkeypatch):
    def broken_savez(file, **arrays):
        file.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        data.load_or_generate(config, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_split_is_60_20_20_and_stratified(tmp_path, config):
    moons = data.load(config, tmp_path)
    assert (len(moons.train), len(moons.val), len(moons.test)) == (600, 200, 200)
    for part in (moons.train, moons.val, moons.test):
        assert part.y.float().mean().item() == pytest.approx(0.5, abs=0.01)
        assert part.x.dtype.is_floating_point and part.x.shape[1] == 2
    seen = {tuple(row) for part in (moons.train, moons.val, moons.test) for row in part.x.tolist()}
    assert len(seen) == 1000  # disjoint and complete


def test_split_depends_on_the_seed_only(tmp_path, config):
    a, b = data.load(config, tmp_path), data.load(config, tmp_path)
    assert a.train.x.equal(b.train.x)
    other = data.load(DataConfig(n_samples=1000, noise=0.1, data_seed=4), tmp_path)
    assert not other.train.x.equal(a.train.x)


def todays_split(x: np.ndarray, y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The split as it was defined before the cache held it: train_test_split twice, stratified."""
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    return [(x_train, y_train), (x_val, y_val), (x_test, y_test)]


def assert_split(moons: data.MoonsData, expected: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for part, (x, y) in zip((moons.train, moons.val, moons.test), expected, strict=True):
        np.testing.assert_array_equal(part.x.numpy(), x)
        np.testing.assert_array_equal(part.y.numpy(), y)


def test_the_cache_holds_the_split_it_always_was(tmp_path, config):
    x, y, path = data.load_or_generate(config, tmp_path)
    with np.load(path) as arrays:
        assert sorted(arrays.files) == sorted(["X", "y", *data.SPLITS])
    assert_split(data.load(config, tmp_path), todays_split(x, y, config.data_seed))


def test_a_cache_without_the_split_is_split_as_before(tmp_path, config):
    x, y = data.generate(config)
    np.savez(data.cache_path(config, tmp_path), X=x, y=y)  # a cache as written before it held the split
    assert_split(data.load(config, tmp_path), todays_split(x, y, config.data_seed))


def test_a_cached_data_set_loads_without_scikit_learn(tmp_path, config):
    """scikit-learn's import is 1-2 s of a run's start: only generating the data needs it."""
    data.load(config, tmp_path)
    script = (
        "import sys; from moonvae.config import DataConfig; from moonvae.core import data\n"
        f"moons = data.load(DataConfig(n_samples=1000, noise=0.1, data_seed=3), {str(tmp_path)!r})\n"
        "print(len(moons.train), 'sklearn' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["600", "False"]
