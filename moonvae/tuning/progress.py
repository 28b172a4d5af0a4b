"""What the call that starts a study's workers shows and logs while they run, wherever they run.

Workers in other processes or on other machines print nothing: this call reads the
study from its storage every second and draws the one progress bar, writes one line
per trial its own workers finished, and logs the study run's convergence series,
as its one writer, so each step is logged once whatever the workers' interleaving.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from moonvae.tracking import runs
from moonvae.tracking.runs import Client
from moonvae.tuning import results, studies
from moonvae.tuning.heartbeats import stale_reason
from moonvae.tuning.studies import WORKER_ATTR


class Progress:
    """The executor's watcher of one study: `poll` every second, `say` for its own lines."""

    def __init__(
        self,
        study: optuna.Study,
        mlflow_client: Client,
        run_id: str,
        n_trials: int,
        call: str,
        objectives: tuple[str, ...] = (studies.OBJECTIVE,),
        position: int = 0,  # the bar's line, for studies side by side
    ) -> None:
        self.study, self.mlflow_client, self.run_id = study, mlflow_client, run_id
        self.objectives = objectives
        self.n_trials, self.call = n_trials, call  # call: whose trials get a line (other calls print theirs)
        self.seen: set[int] = set()  # finished trials already looked at
        done = min(studies.count(study.get_trials(deepcopy=False))["done"], n_trials)
        self.bar = tqdm(
            total=n_trials, initial=done, desc=study.study_name, unit="trial", leave=True, position=position
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def say(self, line: str) -> None:
        self.bar.write(line)

    def poll(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        ended = [trial for trial in trials if trial.state.is_finished() and trial.number not in self.seen]
        if not ended:
            return  # nothing new: a bar redrawn every second fills a log file
        for trial in sorted(ended, key=lambda trial: trial.datetime_complete or trial.datetime_start):
            self.seen.add(trial.number)
            if trial.user_attrs.get(WORKER_ATTR, {}).get("call") == self.call:
                self.bar.write(trial_line(self.study.study_name, trial, self.objectives))
        counts = studies.count(trials)
        self.bar.n = min(counts["done"], self.n_trials)
        self.bar.set_postfix(results.best_so_far(self.study) | {"failed": counts["failed"]}, refresh=False)
        self.bar.refresh()
        first = f"best_{results.short(self.objectives[0])}"
        logged = runs.metric_steps(self.mlflow_client, self.run_id, first)  # other calls log too
        for step, best in results.convergence(self.study, logged, self.objectives).items():
            runs.log_metrics(self.mlflow_client, self.run_id, best, step=step)


def trial_line(study_name: str, trial: FrozenTrial, objectives: tuple[str, ...] = (studies.OBJECTIVE,)) -> str:
    """`moonvae-vae-basic trial-007 complete: val_mse 0.00213 (4.1 s)`, or the reason it did not complete."""
    if trial.state == TrialState.COMPLETE and trial.values:
        outcome = results.values_text(objectives, trial.values, results.summary_error(trial))
    else:
        outcome = trial.user_attrs.get("reason", stale_reason())
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_start else 0.0
    return f"{study_name} trial-{trial.number:03d} {trial.state.name.lower()}: {outcome} ({seconds:.1f} s)"
