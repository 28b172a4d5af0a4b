"""The two-moons data: generated once, cached as .npz with its split, 60/20/20 per class.

scikit-learn (make_moons, train_test_split) is imported only to generate a data set:
a cached one, which holds its split's row indices, loads without it (1-2 s of a run's
start). A cache written before the indices were stored is split as it was then.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moonvae.config import DataConfig

DEFAULT_CACHE_DIR = Path("data")
SPLITS = ("train", "val", "test")  # also the cache's keys of each split's row indices


@dataclass(frozen=True)
class Split:
    """One split as preloaded tensors: x (N x 2, float32) and y (N, int64 moon label)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class MoonsData:
    train: Split
    val: Split
    test: Split
    path: Path  # the cached .npz the splits came from


def cache_path(config: DataConfig, cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    return Path(cache_dir) / f"moons_{config.n_samples}_{config.noise}_{config.data_seed}.npz"


def generate(config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=config.n_samples, noise=config.noise, random_state=config.data_seed)
    return x.astype(np.float32), y.astype(np.int64)


def split_indices(y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Row indices of a stratified 60/20/20 train/val/test split, seeded so every run sees the same points."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    train, rest = train_test_split(rows, test_size=0.4, stratify=y, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    return {"train": train, "val": val, "test": test}


def cached(config: DataConfig, cache_dir: Path = DEFAULT_CACHE_DIR) -> tuple[dict[str, np.ndarray], Path]:
    """The cache's arrays (X, y, each split's indices), generated and written atomically if missing.

    The file is written to a temporary name in the same folder and renamed into
    place, so a crash never leaves a half-written cache and concurrent workers
    never read one.
    """
    path = cache_path(config, cache_dir)
    if not path.exists():
        x, y = generate(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                np.savez(file, X=x, y=y, **split_indices(y, config.data_seed))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    with np.load(path) as arrays:
        return {key: arrays[key] for key in arrays.files}, path


def load_or_generate(config: DataConfig, cache_dir: Path = DEFAULT_CACHE_DIR) -> tuple[np.ndarray, np.ndarray, Path]:
    """The cached points and labels (generated first if missing), and the cache's path."""
    arrays, path = cached(config, cache_dir)
    return arrays["X"], arrays["y"], path


def load(config: DataConfig, cache_dir: Path = DEFAULT_CACHE_DIR) -> MoonsData:
    arrays, path = cached(config, cache_dir)
    x, y = arrays["X"], arrays["y"]
    indices = arrays if all(name in arrays for name in SPLITS) else split_indices(y, config.data_seed)
    train, val, test = (
        Split(torch.from_numpy(x[indices[name]]), torch.from_numpy(y[indices[name]])) for name in SPLITS
    )
    return MoonsData(train=train, val=val, test=test, path=path)
