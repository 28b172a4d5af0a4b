"""MLproject entry point `tune`: Optuna studies, one nested MLflow run per trial, the best model registered.

`mlflow run . -e tune -P model=cvae -P max_epochs=25` runs `python -m entrypoints.tune ...`
from the project folder; parameters the MLproject does not declare reach it as
`--max_epochs 25`. `moonvae tune` is the same command (moonvae/cli.py).
"""

from moonvae.cli import tune

if __name__ == "__main__":
    tune.main(prog_name="moonvae tune")
