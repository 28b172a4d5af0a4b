import pytest
import yaml
from conftest import ROOT

from moonvae import cli
from moonvae.config import N_TRIALS, ConfigError, DataConfig, ModelConfig, RunConfig, parse_widths
from moonvae.metrics import N_EVAL
from moonvae.tracking import names


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"latent_dim": -3}, "latent_dim"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"n_samples": -5}, "n_samples"),
        ({"noise": -0.1}, "noise"),
        ({"noise": float("nan")}, "noise"),
        ({"model": "gan"}, "model"),
        ({"eps_w": 0.0}, "eps_w"),
        ({"beta": -1.0}, "beta"),
        ({"lr": 0.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"lr_factor": 1.0}, "lr_factor"),
        ({"likelihood": "laplace"}, "likelihood must be one of mse, gaussian, got 'laplace'"),
        ({"prior": "flow"}, "prior must be one of normal, vamp, got 'flow'"),
        ({"pseudo_inputs": 0}, "pseudo_inputs must be an integer >= 1, got 0"),
        ({"lr_factor": 0.0}, "lr_factor"),
        ({"encoder_hidden": "8,-1"}, "encoder_hidden"),
        ({"decoder_hidden": "wide"}, "decoder_hidden"),
        ({"latent_dimension": 3}, "latent_dimension"),
    ],
)
def test_bad_values_name_the_parameter(values, named):
    with pytest.raises(ConfigError, match=named):
        RunConfig.from_flat(values).validate()


def test_defaults_are_the_studys():
    config = RunConfig().validate()
    assert config.data == DataConfig(2000, 0.15, 42)
    assert (config.model.encoder_hidden, config.model.latent_dim, config.model.decoder_hidden) == ((8,), 128, (128,))
    assert (config.model.beta, config.model.eps_w) == (1.0, 0.1)
    assert (config.train.batch_size, config.train.lr, config.train.patience, config.train.seed) == (256, 1e-3, 100, 42)


def test_widths_parse_from_strings_and_lists():
    assert parse_widths("16, 8", "w") == (16, 8)
    assert parse_widths(32, "w") == (32,)
    assert ModelConfig(encoder_hidden=[4, 2]).encoder_hidden == (4, 2)


def test_round_trips_through_flat_params_and_dict():
    config = RunConfig.from_flat({"model": "cvae", "encoder_hidden": "16,8", "lr": 0.01, "n_samples": 300})
    assert config.params()["encoder_hidden"] == "16,8"
    assert RunConfig.from_dict(config.to_dict()) == config
    assert set(config.params()) >= {"model", "n_samples", "noise", "data_seed", "batch_size", "lr", "latent_dim"}


def test_mlproject_and_the_cli_take_their_defaults_from_the_configs():
    """One home for each default: a config default changed alone makes this fail."""
    entry_points = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    config_defaults = RunConfig().params()
    options = {option.name: option.default for option in cli.train.params}
    for name, _, default, _ in cli.TRAINING_PARAMETERS:
        assert str(entry_points["train"]["parameters"][name]["default"]) == str(default), name
        assert str(options[name]) == str(default), name
        if name != "model":
            assert str(default) == config_defaults[name], name
    assert entry_points["tune"]["parameters"]["n_trials"]["default"] == N_TRIALS
    assert {option.name: option.default for option in cli.tune.params}["n_trials"] == N_TRIALS
    analyse = entry_points["analyse"]["parameters"]
    assert analyse["n_eval"]["default"] == N_EVAL
    assert (analyse["vae"]["default"], analyse["cvae"]["default"]) == (
        names.model_uri("vae"),
        names.model_uri("cvae"),
    )


def test_every_entry_point_runs_its_script_with_every_parameter():
    entry_points = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    for name, entry in entry_points.items():
        assert entry["command"].startswith(f"python -m entrypoints.{name} ")
        assert (ROOT / "entrypoints" / f"{name}.py").exists()
        for parameter in entry["parameters"]:
            assert f"={{{parameter}}}" in entry["command"], (name, parameter)
