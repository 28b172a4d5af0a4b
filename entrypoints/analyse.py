"""MLproject entry point `analyse`: the registered models measured, the findings checked, report.html written.

`mlflow run . -e analyse` runs `python -m entrypoints.analyse ...` from the project folder;
`moonvae analyse` is the same command (moonvae/cli.py).
"""

from moonvae.cli import analyse

if __name__ == "__main__":
    analyse.main(prog_name="moonvae analyse")
