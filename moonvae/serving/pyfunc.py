"""The trained VAE/CVAE as an MLflow pyfunc model: sample, reconstruct, encode, traverse.

What a logged model holds, and why:
- `weights.pt`: the state dict, loaded with `weights_only=True` (no pickled module); with the
  Gaussian likelihood it holds `log_sigma`, with the VampPrior its `pseudo_inputs`, plain tensors;
- `config.json`: the run config, to rebuild the network;
- `latents.pt`: the training split's q(z|x) (means, log-variances, labels), the bank that
  `source=posterior` samples from, and the traversal's reference statistics (per-dimension
  min, median and max of the training latents), computed once at logging time;
- `mixture.pt`: the latent mixture `source=mixture` samples from (`density`), plain tensors;
- `sources.json`: the validation judgement of every source (scores, standard errors, sets) and
  the default source it chose (`sampling.sources`), also in the model's metadata (`source`,
  `sources`) and description. The
  signature's default for `source` is that source, so omitting it samples from the best one;
  a model logged before mixtures existed has neither file and samples from posterior or prior;
- the model is logged "from code" (`model_code.py`), so loading runs that file rather than
  unpickling a Python object, and the moonvae package travels with it (`code_paths`), so it
  loads where moonvae is not installed.

Bad requests raise `MlflowException(..., INVALID_PARAMETER_VALUE)`: in process that is the
error users see; `mlflow models serve` answers it with HTTP 400 and keeps serving.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from moonvae.config import SOURCES, RunConfig
from moonvae.core.models import VAE, LatentBank, build_model, latent_bank, traversal_latents
from moonvae.sampling.density import sample_mixture

if TYPE_CHECKING:  # only types: loading a model must not need scikit-learn
    from moonvae.core.data import Split
    from moonvae.sampling.sources import Judgement

WEIGHTS, CONFIG, LATENTS, MIXTURE, JUDGEMENT = "weights", "config", "latents", "mixture", "sources"
LEGACY_SOURCE = "posterior"  # the default of models logged before they chose their own
MODEL_CODE = Path(__file__).with_name("model_code.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the whole moonvae package travels with the model
PIP_REQUIREMENTS = [  # explicit: what loading needs, at the versions that logged it (inferred ones keep torch's +cpu)
    f"mlflow=={mlflow.__version__}",
    f"torch=={torch.__version__.split('+')[0]}",
    f"pandas=={pd.__version__}",
    f"numpy=={np.__version__}",
]

MODES = ("sample", "reconstruct", "encode", "traverse")
MAX_ROWS = 100_000  # rows in, and rows out for traverse (rows x dims x steps): bounds memory per request
PARAMS = ParamSchema(
    [
        ParamSpec("mode", "string", "sample"),
        ParamSpec("source", "string", LEGACY_SOURCE),  # sample: where z comes from; each model logs its own default
        ParamSpec("seed", "long", None),  # sample, reconstruct with stochastic: unset draws fresh noise
        ParamSpec("stochastic", "boolean", False),  # reconstruct: z drawn from q(z|x) instead of its mean
        ParamSpec("logvar", "boolean", False),  # encode: add the log-variances
        ParamSpec("dim", "long", None),  # traverse: one latent dimension; unset sweeps them all
        ParamSpec("steps", "long", 10),  # traverse: points per sweep
    ]
)
DEFAULTS = {spec.name: spec.default for spec in PARAMS.params}

DESCRIPTION = f"""\
A VAE or CVAE of scikit-learn's two moons. Input columns x1, x2 (floats) and label (0 or 1; required
by the CVAE, optional for the VAE, which ignores it). params["mode"] chooses what predict does:
- sample (default): one generated point per input row -> x1, x2. The CVAE draws from the moon named
  by the row's label. source chooses where z comes from: posterior, the aggregate posterior (a training
  point's q(z|x), noise scaled by eps_w: what the decoder was trained on); prior, the model's prior
  (N(0, I), which with a small eps_w and the study's loss lands far less often on the requested moon,
  or its VampPrior: config.json's "prior"); mixture, a Gaussian mixture fitted to the training latents.
  Unset, the model's default source: the one chosen on its validation sample quality when it was logged
  (metadata "source"; every source's scores, with their standard errors (_se) and the sets behind them,
  in metadata "sources"; the figures and the rule below). A model with the Gaussian likelihood
  (config.json's "likelihood") adds its learned noise to every sample: x = decode(z) + sigma_x * eps.
- reconstruct: x1, x2 -> x1, x2 decoded from the posterior mean (stochastic=true: a draw of the model,
  z from q(z|x), then, with the Gaussian likelihood, x with its sigma_x noise).
- encode: x1, x2 -> z0 .. z{{d-1}}, the posterior mean (logvar=true adds logvar0 ..).
- traverse: per input row, each latent dimension (or only dim) swept in `steps` steps (default 10)
  from its min to its max over the training latents, the others at their median, and decoded
  (the CVAE with the row's label) -> dim, step, value, x1, x2.
seed makes the random modes reproducible. Every output keeps the input's label column. At most
{MAX_ROWS} rows in, and out for traverse. Bad input is an INVALID_PARAMETER_VALUE error (HTTP 400).
"""


def invalid(message: str) -> MlflowException:
    """The error MLflow's scoring server turns into HTTP 400 (any other exception becomes a 500)."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def load_network(weights_path: str | Path, config_path: str | Path) -> tuple[VAE, RunConfig]:
    """Rebuild the network from the saved config and load its weights safely."""
    config = RunConfig.from_dict(json.loads(Path(config_path).read_text()))
    network = build_model(config.model, seed=0)
    network.load_state_dict(torch.load(weights_path, weights_only=True))
    return network.eval(), config


def traversal_reference(latents: torch.Tensor) -> torch.Tensor:
    """Three rows, the per-dimension min, median and max of `latents`.

    `traversal_latents` on these three rows sweeps exactly as on all the latents,
    so the model stores 3 x d numbers instead of recomputing them per request.
    """
    return torch.stack([latents.min(dim=0).values, latents.median(dim=0).values, latents.max(dim=0).values])


class MoonVAEModel(mlflow.pyfunc.PythonModel):
    """The served model. After loading: `network` (the torch VAE/CVAE, eval mode), `config` (RunConfig),
    `bank` (LatentBank of the training split), `reference` (the traversal's min/median/max rows),
    `mixture` (the latent mixture's tensors, None in older models), `sources` (those the model holds)
    and `default_source` (what `source` unset samples from)."""

    network: VAE
    config: RunConfig
    bank: LatentBank
    reference: torch.Tensor
    mixture: dict[str, torch.Tensor] | None
    sources: tuple[str, ...]
    default_source: str

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.network, self.config = load_network(context.artifacts[WEIGHTS], context.artifacts[CONFIG])
        latents = torch.load(context.artifacts[LATENTS], weights_only=True)
        self.bank = LatentBank(latents["mean"], latents["logvar"], latents["y"])
        self.reference = latents["reference"]
        mixture_path, judgement_path = context.artifacts.get(MIXTURE), context.artifacts.get(JUDGEMENT)
        self.mixture = torch.load(mixture_path, weights_only=True) if mixture_path else None
        self.sources = tuple(source for source in SOURCES if source != "mixture" or self.mixture is not None)
        self.default_source = (
            json.loads(Path(judgement_path).read_text())["default"] if judgement_path else LEGACY_SOURCE
        )

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        options = {**DEFAULTS, "source": self.default_source, **(params or {})}
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        mode = options["mode"]
        if mode not in MODES:
            raise invalid(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        if len(frame) == 0:
            raise invalid("the input has no rows: send one row per point, each with at least one column (e.g. label)")
        if len(frame) > MAX_ROWS:
            raise invalid(f"the input has {len(frame)} rows; at most {MAX_ROWS} per request")
        labels = self._labels(frame)
        with torch.inference_mode():
            if mode == "sample":
                out = self._sample(len(frame), labels, options)
            elif mode == "reconstruct":
                out = self._reconstruct(points(frame), labels, options)
            elif mode == "encode":
                out = self._encode(points(frame), labels, options)
            else:
                out = self._traverse(len(frame), labels, options)
        if labels is not None:  # traverse returns a block of rows per input row
            out["label"] = labels.repeat_interleave(len(out) // len(frame)).numpy()
        return out

    def _labels(self, frame: pd.DataFrame) -> torch.Tensor | None:
        """The label column as int64, required by the CVAE; None when absent (VAE only)."""
        if "label" not in frame:
            if self.network.config.conditional:
                raise invalid("the CVAE needs a 'label' column (0 or 1: the moon) in every row")
            return None
        values = pd.to_numeric(frame["label"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        bad = ~np.isin(values, (0, 1))
        if bad.any():
            row = int(np.argmax(bad))
            raise invalid(f"label must be 0 or 1 in every row; row {row} has {shown(frame['label'].iloc[row])}")
        return torch.from_numpy(values.astype("int64"))

    def _sample(self, n: int, labels: torch.Tensor | None, options: dict[str, Any]) -> pd.DataFrame:
        source = options["source"]
        held = " or ".join(self.sources)
        if source not in SOURCES:
            raise invalid(f"unknown source {source!r}: this model samples from {held}")
        if source not in self.sources:
            raise invalid(f"this model holds no latent {source} (it was logged before moonvae fitted one): use {held}")
        rng = make_rng(options["seed"])
        y = labels if self.network.config.conditional else None  # the VAE ignores labels: it samples both moons
        if source == "prior":
            x = self.network.sample(n, labels, rng)
        elif source == "posterior":
            x = self.network.sample_posterior(self.bank, n, y, rng)
        else:
            x = self.network.draw_point(sample_mixture(self.mixture, n, y, rng), y, rng)
        return xy_frame(x)

    def _reconstruct(self, x: torch.Tensor, labels: torch.Tensor | None, options: dict[str, Any]) -> pd.DataFrame:
        """The decoded posterior mean; stochastic: a draw of the model, z from q(z|x), then x from p(x|z)."""
        mean, logvar = self.network.encode(x, labels)
        if not options["stochastic"]:
            return xy_frame(self.network.decode(mean, labels))
        rng = make_rng(options["seed"])
        return xy_frame(self.network.draw_point(self.network.draw_latent(mean, logvar, rng), labels, rng))

    def _encode(self, x: torch.Tensor, labels: torch.Tensor | None, options: dict[str, Any]) -> pd.DataFrame:
        mean, logvar = self.network.encode(x, labels)
        out = pd.DataFrame(mean.numpy(), columns=[f"z{i}" for i in range(mean.shape[1])])
        if options["logvar"]:
            out[[f"logvar{i}" for i in range(logvar.shape[1])]] = logvar.numpy()
        return out

    def _traverse(self, n: int, labels: torch.Tensor | None, options: dict[str, Any]) -> pd.DataFrame:
        """A sweep per dimension for each of the `n` input rows; the CVAE decodes each with its row's label."""
        latent_dim = self.network.config.latent_dim
        dim, steps = options["dim"], int(options["steps"])
        if dim is not None and not 0 <= int(dim) < latent_dim:
            raise invalid(f"dim must be between 0 and {latent_dim - 1} (the latent size is {latent_dim}), got {dim}")
        if steps < 2:
            raise invalid(f"steps must be at least 2 (min and max), got {steps}")
        dims = range(latent_dim) if dim is None else [int(dim)]
        n_out = n * len(dims) * steps
        if n_out > MAX_ROWS:
            raise invalid(
                f"traverse would return {n_out} rows (rows x dims x steps); at most {MAX_ROWS}: "
                "send fewer rows, fewer steps or one dim"
            )
        sweep = torch.cat([traversal_latents(self.reference, d, steps) for d in dims])
        y = labels.repeat_interleave(len(sweep)) if labels is not None else None
        x = self.network.decode(sweep.repeat(n, 1), y)
        swept_dim = torch.tensor(dims).repeat_interleave(steps)
        out = pd.DataFrame(
            {
                "dim": swept_dim.repeat(n).numpy(),
                "step": torch.arange(steps).repeat(len(dims) * n).numpy(),
                "value": sweep[torch.arange(len(sweep)), swept_dim].repeat(n).numpy(),
            }
        )
        out[["x1", "x2"]] = x.numpy()
        return out


def points(frame: pd.DataFrame) -> torch.Tensor:
    """Columns x1, x2 as an N x 2 float32 tensor; every value must be a finite number."""
    missing = [column for column in ("x1", "x2") if column not in frame]
    if missing:
        raise invalid(f"missing column(s) {', '.join(missing)}: this mode needs x1 and x2")
    for column in ("x1", "x2"):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            raise invalid(
                f"{column} must be a finite number in every row; row {row} has {shown(frame[column].iloc[row])}"
            )
    return torch.tensor(frame[["x1", "x2"]].to_numpy(dtype="float32"))


def shown(value: Any) -> str:
    """A cell as users wrote it: 7, nan or 'abc' (not np.int64(7))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def xy_frame(x: torch.Tensor) -> pd.DataFrame:
    return pd.DataFrame(x.numpy(), columns=["x1", "x2"])


def make_rng(seed: int | None) -> torch.Generator:
    """A torch random generator, seeded for reproducible draws; without a seed, fresh ones on every call."""
    rng = torch.Generator()
    if seed is None:
        rng.seed()
    else:
        rng.manual_seed(int(seed))
    return rng


def signature(default_source: str) -> ModelSignature:
    """Inputs and params, `source` defaulting to the model's own; outputs differ per mode (see DESCRIPTION)."""
    inputs = Schema(
        [
            ColSpec("double", "x1", required=False),
            ColSpec("double", "x2", required=False),
            ColSpec("long", "label", required=False),
        ]
    )
    params = [ParamSpec(p.name, p.dtype, default_source) if p.name == "source" else p for p in PARAMS.params]
    return ModelSignature(inputs=inputs, params=ParamSchema(params))


def input_example(train: Split) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Two training points, one per moon: valid input for every mode, for both models."""
    rows = [int((train.y == label).nonzero()[0]) for label in (0, 1)]
    frame = pd.DataFrame(train.x[rows].double().numpy(), columns=["x1", "x2"])
    frame["label"] = train.y[rows].numpy()
    return frame, {"mode": "sample", "seed": 0}


def log_model(
    run_id: str,
    network: VAE,
    config: RunConfig,
    train: Split,
    *,
    mixture: dict[str, torch.Tensor],
    judgement: Judgement,
    name: str = "model",
) -> ModelInfo:
    """Log the network, latents, mixture, judgement and config to the run (no active run needed: trials use threads).

    The judgement's default source becomes the signature's default for `source`, and its
    figures the model's description (metadata `description`, `source`, `sources`).
    """
    bank = latent_bank(network, train.x, train.y)
    latents = {"mean": bank.mean, "logvar": bank.logvar, "y": bank.y, "reference": traversal_reference(bank.mean)}
    sources = {"default": judgement.default, "scores": judgement.scores}
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            WEIGHTS: Path(tmp) / "weights.pt",
            CONFIG: Path(tmp) / "config.json",
            LATENTS: Path(tmp) / "latents.pt",
            MIXTURE: Path(tmp) / "mixture.pt",
            JUDGEMENT: Path(tmp) / "sources.json",
        }
        torch.save(network.state_dict(), files[WEIGHTS])
        files[CONFIG].write_text(json.dumps(config.to_dict(), indent=2))
        torch.save(latents, files[LATENTS])
        torch.save(mixture, files[MIXTURE])
        files[JUDGEMENT].write_text(json.dumps(sources, indent=2))
        # created here so it belongs to the run's experiment: Model.log alone would put it in the fluent
        # API's current experiment, which is Default for a run made through the client
        run = MlflowClient().get_run(run_id)
        logged = mlflow.initialize_logged_model(
            name=name, source_run_id=run_id, params=run.data.params, experiment_id=run.info.experiment_id
        )
        return Model.log(
            artifact_path=None,
            name=name,
            model_id=logged.model_id,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(MODEL_CODE),
            code_paths=[str(PACKAGE_DIR)],
            artifacts={key: str(path) for key, path in files.items()},
            signature=signature(judgement.default),
            input_example=input_example(train),
            pip_requirements=PIP_REQUIREMENTS,
            metadata={
                "description": f"{DESCRIPTION}\n{judgement.note()}",
                "model": config.model.model,
                "source": judgement.default,
                "sources": {source: rounded(scores) for source, scores in judgement.scores.items()},
            },
        )


def rounded(scores: dict[str, float]) -> dict[str, float]:
    """Scores to 4 significant digits, for the MLmodel file (NaN, the error of one set, left out: YAML has no NaN)."""
    return {key: float(f"{value:.4g}") for key, value in scores.items() if value == value}
