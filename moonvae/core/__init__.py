"""Pure torch: the moons data, the VAE and CVAE, the training loop, the vectorised trial stack. No MLflow, no Optuna."""
