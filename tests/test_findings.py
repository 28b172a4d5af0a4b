"""The findings' verdicts follow the evidence: studies built to agree, to disagree, and missing."""

import pytest
from studies import write_studies

from moonvae import analyse, findings
from moonvae.findings import NOT_ENOUGH, NOT_REPRODUCED, REPRODUCED


@pytest.fixture(scope="module")
def agreeing(tmp_path_factory):
    storage = f"sqlite:///{tmp_path_factory.mktemp('agree') / 'optuna.db'}"
    write_studies(storage, agree=True)
    return analyse.load_studies(storage)


@pytest.fixture(scope="module")
def disagreeing(tmp_path_factory):
    storage = f"sqlite:///{tmp_path_factory.mktemp('disagree') / 'optuna.db'}"
    write_studies(storage, agree=False)
    return analyse.load_studies(storage)


def test_load_studies_keeps_completed_trials_and_computes_importances(agreeing):
    assert set(agreeing) == {f"moonvae-{m}-{s}" for m in ("vae", "cvae") for s in ("basic", "data", "probabilistic")}
    basic = agreeing["moonvae-vae-basic"]
    assert len(basic.trials) == 60  # the failed and the pruned trial are left out
    assert {"lr", "batch_size", "encoder_hidden", "latent_dim", "decoder_hidden", "value", "test_kl"} <= set(
        basic.trials.columns
    )
    assert set(basic.importances) == {"lr", "batch_size", "encoder_hidden", "latent_dim", "decoder_hidden"}
    assert sum(basic.importances.values()) == pytest.approx(1.0)
    assert len(agreeing["moonvae-cvae-data"].trials) == 21


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
    small = {name: findings.StudyTable(table.trials.head(10), table.importances) for name, table in agreeing.items()}
    verdicts = {f.number: f.verdict for f in findings.all_findings(small, {})}
    assert verdicts[1] == verdicts[2] == verdicts[3] == verdicts[8] == NOT_ENOUGH


def test_no_storage_no_studies(tmp_path):
    assert analyse.load_studies(None) == {}
    assert not (tmp_path / "optuna.db").exists()
