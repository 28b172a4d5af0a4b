"""MLproject entry point `train`: one model trained and logged as an MLflow run.

`mlflow run . -e train -P latent_dim=8` runs `python -m entrypoints.train --latent-dim=8 ...`
from the project folder; `moonvae train` is the same command (moonvae/cli.py holds its
options and body, so the two cannot drift apart).
"""

from moonvae.cli import train

if __name__ == "__main__":
    train.main(prog_name="moonvae train")
