"""The served CVAE at the study's default config: how often samples land on the requested moon, and how fast it answers.

Trains the default CVAE (encoder 8, latent 128, decoder 128, eps_w 0.1, seed 42, up to 1000
epochs with early stopping) into a throwaway sqlite store, logs and registers it, loads it back
by `models:/moonvae-cvae@champion` and prints:
  on-moon rate  share of samples (half labelled 0, half 1) that a k-NN classifier, trained on
                fresh make_moons data with the same noise, puts on the requested moon; for
                each source (the model's default named)
  timings       log_model, load_model, and milliseconds per predict call for each mode

Run: python bench/pyfunc_predict.py [--samples 10000] [--max-epochs 1000] [--threads N]
(On a busy 2-core machine, torch's default two threads made these small models up to 30x slower
than --threads 1; the printed rates and test_mse came out the same.)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from sklearn.datasets import make_moons
from sklearn.neighbors import KNeighborsClassifier

from moonvae.config import SOURCES, ModelConfig, RunConfig
from moonvae.serving import pyfunc
from moonvae.tracking import registry, runs
from moonvae.tracking.experiment import run_training


def ms_per_call(model: mlflow.pyfunc.PyFuncModel, frame: pd.DataFrame, params: dict, repeats: int = 20) -> float:
    model.predict(frame, params=params)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model.predict(frame, params=params)
    return (time.perf_counter() - start) * 1000 / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = RunConfig(model=ModelConfig(model="cvae"))
    config = replace(config, train=replace(config.train, max_epochs=args.max_epochs))
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        client = runs.client()
        with runs.run(client, "bench-cvae") as run_id:
            start = time.perf_counter()
            outcome = run_training(config, client, run_id, log_model=False, cache_dir=Path(tmp))
            trained = time.perf_counter() - start
            start = time.perf_counter()
            info = pyfunc.log_model(
                run_id,
                outcome.network,
                config,
                outcome.data.train,
                mixture=outcome.mixture,
                judgement=outcome.judgement,
            )
            logged = time.perf_counter() - start
        registry.register_model(client, info, "moonvae-cvae")
        start = time.perf_counter()
        model = mlflow.pyfunc.load_model("models:/moonvae-cvae@champion")
        loaded = time.perf_counter() - start

        x, y = make_moons(n_samples=20_000, noise=config.data.noise, random_state=1)
        classifier = KNeighborsClassifier(n_neighbors=25).fit(x, y)
        request = pd.DataFrame({"label": np.arange(args.samples) % 2})
        rates = {}
        for source in SOURCES:
            points = model.predict(request, params={"source": source, "seed": 0})
            rates[source] = (classifier.predict(points[["x1", "x2"]].to_numpy()) == request["label"].to_numpy()).mean()

        one = pd.DataFrame({"x1": [0.5], "x2": [0.25], "label": [1]})
        thousand = pd.concat([one] * 1000, ignore_index=True).assign(label=np.arange(1000) % 2)
        calls = {
            "sample posterior": {"mode": "sample", "source": "posterior", "seed": 0},
            "sample prior": {"mode": "sample", "source": "prior", "seed": 0},
            "sample mixture": {"mode": "sample", "source": "mixture", "seed": 0},
            "reconstruct": {"mode": "reconstruct"},
            "encode": {"mode": "encode"},
        }
        timings = {name: (ms_per_call(model, one, p), ms_per_call(model, thousand, p)) for name, p in calls.items()}
        traverse = ms_per_call(model, one, {"mode": "traverse"})

    metrics = outcome.final_metrics()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CVAE at the study's defaults")
    print(
        f"trained {metrics['epochs']} epochs in {trained:.1f} s, test_mse {metrics['test_mse']:.5f}; "
        f"log_model {logged:.2f} s, load_model {loaded:.2f} s"
    )
    shares = "   ".join(f"{source} {rate:.1%}" for source, rate in rates.items())
    print(f"on-moon rate, {args.samples} samples:  {shares}   (default: {outcome.judgement.default})")
    print("predict, ms per call:      1 row   1000 rows")
    for name, (single, batch) in timings.items():
        print(f"  {name:<20} {single:8.2f}  {batch:9.2f}")
    print(f"  {'traverse (1 row)':<20} {traverse:8.2f}   ({config.model.latent_dim} dims x 10 steps)")


if __name__ == "__main__":
    main()
