"""The two-moons data: generated once, cached as .npz, split 60/20/20 per class."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import make_moons
from sklearn.model_selection import train_test_split

from moonvae.config import DataConfig

DEFAULT_CACHE_DIR = Path("data")


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
    x, y = make_moons(n_samples=config.n_samples, noise=config.noise, random_state=config.data_seed)
    return x.astype(np.float32), y.astype(np.int64)


def load_or_generate(config: DataConfig, cache_dir: Path = DEFAULT_CACHE_DIR) -> tuple[np.ndarray, np.ndarray, Path]:
    """Reuse the cached arrays when present; otherwise generate and write them atomically.

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
                np.savez(file, X=x, y=y)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    with np.load(path) as arrays:
        return arrays["X"], arrays["y"], path


def split(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[Split, Split, Split]:
    """Stratified 60/20/20 train/val/test split, seeded so every run sees the same points."""
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    return tuple(  # type: ignore[return-value]
        Split(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b)))
        for a, b in ((x_train, y_train), (x_val, y_val), (x_test, y_test))
    )


def load(config: DataConfig, cache_dir: Path = DEFAULT_CACHE_DIR) -> MoonsData:
    x, y, path = load_or_generate(config, cache_dir)
    train, val, test = split(x, y, config.data_seed)
    return MoonsData(train=train, val=val, test=test, path=path)
