"""Each finding's rule on synthetic trial tables whose answer is known: reproduced, refuted, and inconclusive."""

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
from designed import agreeing, capacity, data_grid, importance, probabilistic

from moonvae.analysis import findings, intervals
from moonvae.analysis.verdicts import INCONCLUSIVE, REFUTED, REPRODUCED, Finding, verdict
from moonvae.config import SpaceName
from moonvae.tuning import tables
from moonvae.tuning.tables import StudyTable

SEPARATE = {"vae": [0.99, 0.98, 1.0, 0.99, 0.98], "cvae": [0.6, 0.62, 0.58, 0.61, 0.59]}


def checked(number: int, tables: dict, accuracy: dict = SEPARATE) -> Finding:
    return findings.all_findings(tables, accuracy)[number - 1]


def test_a_verdict_reads_only_the_interval():
    assert verdict(0.2, 0.4, 0.1) == REPRODUCED
    assert verdict(-0.3, 0.05, 0.1) == REFUTED
    assert verdict(0.05, 0.3, 0.1) == INCONCLUSIVE
    assert verdict(0.1, 0.2, 0.25, above=False) == REPRODUCED  # a claim that the effect is small
    assert verdict(0.3, 0.5, 0.25, above=False) == REFUTED
    assert verdict(math.nan, math.nan, 0.0) == INCONCLUSIVE


def test_every_finding_reproduced_when_the_studies_agree():
    result = findings.all_findings(agreeing(), SEPARATE)
    assert {f.number: f.verdict for f in result} == dict.fromkeys(range(1, 10), REPRODUCED), [
        f.evidence for f in result
    ]
    for finding in result:
        assert finding.low <= finding.effect <= finding.high


@pytest.mark.parametrize(
    ("number", "tables", "expected"),
    [
        (1, agreeing(vae_importance=importance(1, lr=1.0)), REFUTED),  # lr dominates the VAE's error
        (
            1,
            agreeing(
                vae_importance=importance(1, lr=0.15, noise=1.5, n=40), cvae_importance=importance(2, n=40, noise=1.5)
            ),
            INCONCLUSIVE,
        ),
        (2, agreeing(vae_capacity=capacity(together=0.0)), REFUTED),  # additive: each helps alone
        (2, agreeing(vae_capacity=capacity(together=0.1, noise=1.0)), INCONCLUSIVE),
        (3, agreeing(vae_capacity=capacity(encoder=-0.2)), REFUTED),
        (3, agreeing(vae_capacity=capacity(encoder=0.05, noise=1.0)), INCONCLUSIVE),
        (4, agreeing(vae_capacity=capacity(tiny_kept=0.9)), REFUTED),  # tiny networks keep what the others keep
        (4, agreeing(vae_capacity=capacity(tiny_kept=0.5, noise=0.5)), INCONCLUSIVE),
        (5, agreeing(cvae_importance=importance(2, spread=0.3), vae_importance=importance(1, spread=0.02)), REFUTED),
        (
            5,
            agreeing(cvae_importance=importance(2, n=30, noise=0.3), vae_importance=importance(1, n=30, noise=0.3)),
            INCONCLUSIVE,
        ),
        (6, agreeing(cvae_data=data_grid(4, size_effect=1.0)), REFUTED),  # size moves the CVAE's error like noise
        (6, agreeing(vae_data=data_grid(3, gap_shrinks=-0.3)), REFUTED),  # more data, more over-fitting
        (6, agreeing(vae_data=data_grid(3, gap_shrinks=0.02, noise=0.5)), INCONCLUSIVE),
        (7, agreeing(cvae_data=data_grid(4, zero_penalty=0.0)), REFUTED),  # noise 0 is the easiest
        (7, agreeing(vae_data=data_grid(3, zero_penalty=0.65, noise=0.5)), INCONCLUSIVE),
        (8, agreeing(cvae_probabilistic=probabilistic(6, textbook_kept=0.9)), REFUTED),  # eps_w 1 keeps 90%
        (8, agreeing(cvae_probabilistic=probabilistic(6, textbook_kept=0.5, noise=0.2)), INCONCLUSIVE),
    ],
)
def test_a_rule_refutes_or_stays_inconclusive(number, tables, expected):
    finding = checked(number, tables)
    assert finding.verdict == expected, finding.evidence


def test_latent_separation_from_per_fold_accuracies():
    assert checked(9, {}, SEPARATE).verdict == REPRODUCED
    same = {"vae": SEPARATE["vae"], "cvae": [0.99, 0.99, 0.98, 1.0, 0.99]}
    assert checked(9, {}, same).verdict == REFUTED
    spread = {"vae": [0.95, 0.7, 1.0, 0.85, 0.99], "cvae": [0.8, 0.9, 0.6, 0.95, 0.7]}
    assert checked(9, {}, spread).verdict == INCONCLUSIVE
    one_number = checked(9, {}, {"vae": 0.98, "cvae": 0.6})
    assert one_number.verdict == INCONCLUSIVE and "per-fold" in one_number.evidence


def test_the_bootstrap_is_seeded():
    first, second = findings.all_findings(agreeing(), SEPARATE), findings.all_findings(agreeing(), SEPARATE)
    assert [(f.effect, f.low, f.high) for f in first] == [(f.effect, f.low, f.high) for f in second]


def test_evidence_and_study_name_the_spaces():
    spaces = {
        1: SpaceName.IMPORTANCE,
        2: SpaceName.CAPACITY,
        3: SpaceName.CAPACITY,
        4: SpaceName.CAPACITY,
        5: SpaceName.IMPORTANCE,
        6: SpaceName.DATA_SEEDS,
        7: SpaceName.DATA_SEEDS,
        8: SpaceName.PROBABILISTIC_SEEDS,
    }
    for finding in findings.all_findings(agreeing(), SEPARATE)[:8]:
        assert spaces[finding.number] in finding.study
        assert spaces[finding.number] in finding.evidence


def test_missing_studies_leave_every_finding_inconclusive_and_say_what_is_missing():
    result = findings.all_findings({}, {})
    assert [f.verdict for f in result] == [INCONCLUSIVE] * 9
    assert all(math.isnan(f.effect) for f in result)
    assert f"no vae {SpaceName.IMPORTANCE} study" in result[0].evidence
    assert f"no cvae {SpaceName.PROBABILISTIC_SEEDS} study" in result[7].evidence


def test_a_missing_column_or_too_few_trials_is_named():
    without = StudyTable(capacity().trials.drop(columns="active_units"))
    assert "lack active_units" in checked(4, agreeing(vae_capacity=without)).evidence
    small = checked(1, agreeing(vae_importance=importance(1, n=10)))
    assert small.verdict == INCONCLUSIVE and "10 trials (need 30)" in small.evidence


def test_one_seed_per_cell_is_not_evidence_of_certainty():
    """Resampling within cells of one trial each would give a zero-width interval: such cells are left out."""
    finding = checked(6, agreeing(cvae_data=data_grid(4, seeds=(1,))))
    assert finding.verdict == INCONCLUSIVE
    assert "fewer than 2 seeds left out" in finding.evidence


def test_the_interaction_names_its_quadrants():
    """Only the decoder matters: its gain is the same with either latent, no interaction, and its quadrants are best."""
    trials = capacity().trials
    trials = trials.assign(value=10 ** (-1 - 0.4 * np.log2(trials["decoder_hidden"])))
    finding = checked(2, agreeing(vae_capacity=StudyTable(trials)))
    assert finding.verdict == REFUTED and finding.effect == pytest.approx(0.0, abs=1e-9)
    quadrants = dict(re.findall(r"(both small|latent large|decoder large|both large) (-?[0-9.]+)", finding.evidence))
    assert float(quadrants["decoder large"]) == float(quadrants["both large"]) < float(quadrants["latent large"])


def test_resampling_within_cells_varies_each_mean_as_much_as_new_seeds_would():
    y, cell = np.array([0.0, 1.0, 2.0, 5.0, 5.0, 7.0]), np.array([0, 0, 0, 1, 1, 1])
    widened = intervals.widened(y, cell)
    for c in (0, 1):  # the cell's mean stays; resampling it now varies it by the seeds' sample variance / n
        assert widened[cell == c].mean() == pytest.approx(y[cell == c].mean())
        assert np.var(widened[cell == c]) == pytest.approx(np.var(y[cell == c], ddof=1))


def test_a_finding_of_two_parts_reports_the_part_that_decided():
    finding = checked(6, agreeing(cvae_data=data_grid(4, size_effect=1.0)))  # (a) holds, (b) fails
    assert finding.verdict == REFUTED
    assert finding.rule.startswith("CVAE MSE range") and finding.low > findings.SIZE_OVER_NOISE
    assert "(a) over-fitting gap" in finding.evidence and "(b) CVAE MSE range" in finding.evidence


def test_findings_frame_has_one_row_per_finding():
    frame = findings.findings_frame(findings.all_findings(agreeing(), SEPARATE))
    assert list(frame.columns) == ["#", "finding", "effect", "interval", "verdict", "study", "evidence"]
    assert frame["#"].tolist() == list(range(1, 10))
    assert frame["interval"].str.match(r"\[.+, .+\]").all()


def test_trials_frame_keeps_completed_trials_with_numeric_widths():
    def trial(number, state, value, params):
        return SimpleNamespace(
            number=number,
            state=SimpleNamespace(name=state),
            value=value,
            params=params,
            user_attrs={"active_units": 2, "mlflow_run_id": "abc", "history": [1]},
        )

    frame = tables.trials_frame(
        [trial(0, "COMPLETE", 0.1, {"encoder_hidden": "8"}), trial(1, "PRUNED", None, {"encoder_hidden": "16"})]
    )
    assert frame.to_dict("records") == [
        {"active_units": 2, "mlflow_run_id": "abc", "encoder_hidden": 8, "value": 0.1, "number": 0}
    ]
