"""A study's trials as a plain table: what the analysis reads of a study, with no Optuna object in it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class StudyTable:
    trials: pd.DataFrame  # completed trials: params, value, recorded metrics
    importances: dict[str, float] = field(default_factory=dict)  # Optuna's fANOVA, quoted beside our own shares


def trials_frame(trials: list[object]) -> pd.DataFrame:
    """Completed trials (Optuna `FrozenTrial`s or alike) as rows: params, `value`, plain user attributes.

    `value` is the first objective (the validation MSE) also of a multi-objective study.
    """
    rows = []
    for trial in trials:
        values = getattr(trial, "values", None)
        value = values[0] if values else getattr(trial, "value", None)
        if getattr(trial.state, "name", str(trial.state)) != "COMPLETE" or value is None:
            continue
        metrics = {key: value for key, value in trial.user_attrs.items() if isinstance(value, (int, float, str))}
        rows.append({**metrics, **trial.params, "value": float(value), "number": trial.number})
    frame = pd.DataFrame(rows)
    params = {name for trial in trials for name in trial.params}
    for column in params & set(frame.columns):  # widths stored as strings ("8") compare as numbers
        converted = pd.to_numeric(frame[column], errors="coerce")
        if converted.notna().all():
            frame[column] = converted
    return frame
