"""`python -m moonvae`: what the MLproject entry points run."""

from moonvae.cli import main

main(prog_name="moonvae")
