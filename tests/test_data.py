import numpy as np
import pytest

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
