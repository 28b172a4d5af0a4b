"""moonvae: a VAE and a CVAE on the two-moons data, trained, tuned and served with MLflow and Optuna."""

__version__ = "0.2.0"  # the one home of the version: pyproject.toml reads it
