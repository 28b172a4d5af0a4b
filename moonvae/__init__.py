"""moonvae: a VAE and a CVAE on the two-moons data, trained, tuned and served with MLflow and Optuna."""
