"""Optuna: search spaces, studies and their storage, a worker's trials, executors, what a finished study leaves."""
