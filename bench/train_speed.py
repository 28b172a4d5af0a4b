"""Milliseconds per epoch at the study's default config, with and without MLflow logging.

Prints three figures for the same 200 epochs (early stopping off):
  bare       the training loop alone
  batched    + moonvae's MetricBuffer (log_batch to a fresh sqlite store)
  per-point  + one MlflowClient.log_metric call per metric point (the naive baseline)

Run: python bench/train_speed.py [--epochs 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from moonvae import data, tracking
from moonvae.config import RunConfig
from moonvae.models import build_model
from moonvae.train import EpochMetrics, fit


def ms_per_epoch(config: RunConfig, moons: data.MoonsData, on_epoch=None) -> float:
    network = build_model(config.model, config.train.seed)
    start = time.perf_counter()
    result = fit(network, moons.train, moons.val, config.train, on_epoch=on_epoch)
    return (time.perf_counter() - start) * 1000 / len(result.history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `moonvae train` and `moonvae tune` train
    config = RunConfig()
    config = replace(config, train=replace(config.train, max_epochs=args.epochs, patience=args.epochs))
    with tempfile.TemporaryDirectory() as tmp:
        moons = data.load(config.data, Path(tmp))
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        ms_per_epoch(config, moons)  # warm-up: first-call costs of torch and sqlite
        bare = ms_per_epoch(config, moons)

        batched_run = client.create_run("0").info.run_id
        buffer = tracking.MetricBuffer(client, batched_run)

        def batched_log(m: EpochMetrics) -> None:
            buffer.add(m.as_dict(), m.epoch)

        batched = ms_per_epoch(config, moons, batched_log)
        flush_start = time.perf_counter()
        buffer.close()
        batched += (time.perf_counter() - flush_start) * 1000 / args.epochs

        point_run = client.create_run("0").info.run_id

        def per_point_log(m: EpochMetrics) -> None:
            for key, value in m.as_dict().items():
                client.log_metric(point_run, key, value, step=m.epoch)

        per_point = ms_per_epoch(config, moons, per_point_log)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs, study defaults")
    print(f"bare       {bare:7.2f} ms/epoch")
    print(f"batched    {batched:7.2f} ms/epoch  (moonvae's logging, flush included)")
    print(f"per-point  {per_point:7.2f} ms/epoch  (one log_metric call per point)")


if __name__ == "__main__":
    main()
