"""The findings' verdicts follow the evidence: studies built to agree, to disagree, and missing."""

import pytest
from studies import write_studies

from moonvae import findings, studies
from moonvae.findings import NOT_ENOUGH, NOT_REPRODUCED, REPRODUCED


def tables(tmp_path_factory, agree):
    storage = f"sqlite:///{tmp_path_factory.mktemp('studies') / 'optuna.db'}"
    write_studies(storage, agree=agree)
    return {key: table for key, (_, table) in studies.read_tables(storage).items()}


@pytest.fixture(scope="module")
def agreeing(tmp_path_factory):
    return tables(tmp_path_factory, agree=True)


@pytest.fixture(scope="module")
def disagreeing(tmp_path_factory):
    return tables(tmp_path_factory, agree=False)


def test_every_finding_reproduced_when_the_studies_agree(agreeing):
    verdicts = {f.number: f.verdict for f in findings.all_findings(agreeing, {"vae": 0.98, "cvae": 0.6})}
    assert verdicts == dict.fromkeys(range(1, 10), REPRODUCED)


def test_findings_not_reproduced_when_the_studies_disagree(disagreeing):
    result = {f.number: f for f in findings.all_findings(disagreeing, {"vae": 0.98, "cvae": 0.97})}
    assert result[1].verdict == NOT_REPRODUCED  # lr dominates
    assert "lr" in result[1].evidence
    assert result[7].verdict == NOT_REPRODUCED  # noise 0 is the easiest
    assert result[9].verdict == NOT_REPRODUCED  # the CVAE latent separates the moons as well


def test_no_studies_means_not_enough_data():
    result = findings.all_findings({}, {})
    assert [f.verdict for f in result] == [NOT_ENOUGH] * 9
    assert all(f.evidence for f in result)


def test_a_small_study_is_not_enough(agreeing):
    small = {key: findings.StudyTable(table.trials.head(10), table.importances) for key, table in agreeing.items()}
    verdicts = {f.number: f.verdict for f in findings.all_findings(small, {})}
    assert verdicts[1] == verdicts[2] == verdicts[3] == verdicts[8] == NOT_ENOUGH
