"""Milliseconds per epoch at the study's default config: moonvae beside the original report's two stacks.

Trains the default model (encoder 8, latent 128, decoder 128, batch 256, 2000 points)
for the same number of epochs (early stopping off) and prints ms/epoch of:
  fit                 moonvae's train.fit alone
  fit + MetricBuffer  + moonvae's logging (log_batch to a fresh sqlite store, flush included)
  fit + log_metric    + one MlflowClient.log_metric call per metric point (the naive logging)
  fit_batch           moonvae's batched.fit_batch, --batch seeds at once, each logged with a
                      MetricBuffer; per trial (the batch's time over its trials' epochs)
  plain loop          the original report's loop: DataLoader over a TensorDataset, an nn.Module
                      VAE, Adam, mlflow.log_metrics per epoch to a fresh sqlite store
  Lightning           Trainer with EarlyStopping, ModelCheckpoint and MLFlowLogger
                      (only if `lightning` is importable; it is not a dependency)
and how many times faster than the plain loop and than Lightning each one is. Each
figure is the fastest of --repeats runs, as the machine may be shared.

Run: python bench/train_speed.py [--epochs 200] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from moonvae.config import RunConfig
from moonvae.core import data
from moonvae.core.batched import fit_batch
from moonvae.core.models import build_model
from moonvae.core.train import EpochMetrics, fit
from moonvae.tracking import runs

WARM_UP_EPOCHS = 10  # each stack's first epochs pay one-off costs (imports, sqlite tables, MKL)


def fit_ms(config: RunConfig, moons: data.MoonsData, on_epoch=None) -> float:
    network = build_model(config.model, config.train.seed)
    start = time.perf_counter()
    result = fit(network, moons.train, moons.val, config.train, on_epoch=on_epoch)
    return (time.perf_counter() - start) * 1000 / len(result.history)


def buffered_fit_ms(config: RunConfig, moons: data.MoonsData, client: MlflowClient) -> float:
    buffer = runs.MetricBuffer(client, client.create_run("0").info.run_id)
    ms = fit_ms(config, moons, lambda m: buffer.add(m.as_dict(), m.epoch))
    flush_start = time.perf_counter()
    buffer.close()
    return ms + (time.perf_counter() - flush_start) * 1000 / config.train.max_epochs


def per_point_fit_ms(config: RunConfig, moons: data.MoonsData, client: MlflowClient) -> float:
    run_id = client.create_run("0").info.run_id

    def log(m: EpochMetrics) -> None:
        for key, value in m.as_dict().items():
            client.log_metric(run_id, key, value, step=m.epoch)

    return fit_ms(config, moons, log)


def fit_batch_ms(config: RunConfig, moons: data.MoonsData, batch: int, client: MlflowClient) -> float:
    configs = [replace(config, train=replace(config.train, seed=seed)) for seed in range(batch)]
    buffers = [runs.MetricBuffer(client, client.create_run("0").info.run_id) for _ in configs]

    def log(index: int, metrics: EpochMetrics) -> None:
        buffers[index].add(metrics.as_dict(), metrics.epoch)

    start = time.perf_counter()
    members = fit_batch(configs, moons.train, moons.val, on_epoch=log)
    for buffer in buffers:
        buffer.close()
    return (time.perf_counter() - start) * 1000 / sum(len(member.result.history) for member in members)


# ---- the original report's plain loop ----


class PlainVAE(nn.Module):
    """The study's VAE as a report would write it: the same shapes and loss as moonvae.core.models.VAE."""

    def __init__(self, config: RunConfig) -> None:
        super().__init__()
        model = config.model
        self.eps_w, self.beta = model.eps_w, model.beta
        hidden, latent, decoder = model.encoder_hidden[0], model.latent_dim, model.decoder_hidden[0]
        self.encoder = nn.Sequential(nn.Linear(2, hidden), nn.ReLU())
        self.mean, self.logvar = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, decoder), nn.ReLU(), nn.Linear(decoder, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        mean, logvar = self.mean(h), self.logvar(h)
        z = mean + self.eps_w * torch.randn_like(mean) * torch.exp(0.5 * logvar) if self.training else mean
        return self.decoder(z), mean, logvar

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_hat, mean, logvar = self(x)
        mse = torch.sum((x_hat - x) ** 2) / x.numel()
        kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp()) / x.numel()
        return mse + self.beta * kl, mse, kl


def plain_loop_ms(config: RunConfig, moons: data.MoonsData, epochs: int, store: str) -> float:
    torch.manual_seed(config.train.seed)
    model = PlainVAE(config)
    loader = DataLoader(TensorDataset(moons.train.x), batch_size=config.train.batch_size, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=config.train.lr_patience)
    mlflow.set_tracking_uri(store)
    best, best_state, bad_epochs = float("inf"), None, 0
    with mlflow.start_run():
        start = time.perf_counter()
        for epoch in range(epochs):
            model.train()
            total = 0.0
            for (x,) in loader:
                loss = model.losses(x)[0]
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
                optimizer.step()
                total += loss.item() * len(x)
            model.eval()
            with torch.no_grad():
                val_loss, val_mse, val_kl = (term.item() for term in model.losses(moons.val.x))
            scheduler.step(val_loss)
            lr = optimizer.param_groups[0]["lr"]
            train_loss = total / len(moons.train)
            metrics = {"train_loss": train_loss, "val_loss": val_loss, "val_mse": val_mse, "val_kl": val_kl, "lr": lr}
            mlflow.log_metrics(metrics, step=epoch)
            if val_mse < best:
                best, best_state, bad_epochs = val_mse, copy.deepcopy(model.state_dict()), 0
            else:
                bad_epochs += 1
                if bad_epochs > config.train.patience:
                    break
        elapsed = time.perf_counter() - start
    model.load_state_dict(best_state)
    return elapsed * 1000 / epochs


# ---- the original report's Lightning stack (optional) ----


def lightning_ms(config: RunConfig, moons: data.MoonsData, epochs: int, store: str, folder: Path) -> float:
    import lightning as L  # noqa: N812 (Lightning's own spelling)
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger

    class LitVAE(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.vae = PlainVAE(config)

        def training_step(self, batch: list[torch.Tensor], index: int) -> torch.Tensor:
            loss = self.vae.losses(batch[0])[0]
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: list[torch.Tensor], index: int) -> None:
            loss, mse, kl = self.vae.losses(batch[0])
            self.log_dict({"val_loss": loss, "val_mse": mse, "val_kl": kl})

        def configure_optimizers(self) -> dict:
            optimizer = torch.optim.Adam(self.parameters(), lr=config.train.lr)
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=config.train.lr_patience)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # its advice on DataLoader workers
    warnings.filterwarnings("ignore", module="lightning")
    torch.manual_seed(config.train.seed)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        gradient_clip_val=config.train.grad_clip,
        callbacks=[
            EarlyStopping(monitor="val_mse", patience=config.train.patience),
            ModelCheckpoint(dirpath=folder / "checkpoints", monitor="val_mse"),
        ],
        logger=MLFlowLogger(tracking_uri=store),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    batch_size = config.train.batch_size
    train_loader = DataLoader(TensorDataset(moons.train.x), batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(TensorDataset(moons.val.x), batch_size=batch_size)
    start = time.perf_counter()
    trainer.fit(LitVAE(), train_loader, val_loader)
    return (time.perf_counter() - start) * 1000 / trainer.current_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8, help="configs fit_batch trains at once")
    parser.add_argument("--repeats", type=int, default=3, help="each figure is the fastest of this many runs")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `moonvae train` and `moonvae tune` train
    config = RunConfig()
    config = replace(config, train=replace(config.train, max_epochs=args.epochs, patience=args.epochs))
    warm_up = replace(config, train=replace(config.train, max_epochs=WARM_UP_EPOCHS))
    has_lightning = importlib.util.find_spec("lightning") is not None
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        moons = data.load(config.data, Path(tmp))
        client = MlflowClient(f"sqlite:///{tmp}/moonvae.db")
        fit_ms(warm_up, moons)
        fit_batch_ms(warm_up, moons, args.batch, client)
        plain_loop_ms(config, moons, WARM_UP_EPOCHS, f"sqlite:///{tmp}/warm-up.db")
        if has_lightning:
            lightning_ms(warm_up, moons, WARM_UP_EPOCHS, f"sqlite:///{tmp}/warm-up.db", Path(tmp) / "warm-up")
        for repeat in range(args.repeats):
            measured = {
                "fit": fit_ms(config, moons),
                "fit + MetricBuffer": buffered_fit_ms(config, moons, client),
                "fit + log_metric": per_point_fit_ms(config, moons, client),
                f"fit_batch, {args.batch} at once": fit_batch_ms(config, moons, args.batch, client),
                "plain loop": plain_loop_ms(config, moons, args.epochs, f"sqlite:///{tmp}/plain-{repeat}.db"),
            }
            if has_lightning:
                folder = Path(tmp) / f"lightning-{repeat}"
                measured["Lightning"] = lightning_ms(config, moons, args.epochs, f"sqlite:///{folder}.db", folder)
            figures = {name: min(ms, figures.get(name, ms)) for name, ms in measured.items()}
    print(f"torch {torch.__version__}, 1 thread, {args.epochs} epochs, study defaults, fastest of {args.repeats}")
    print(f"{'':36} {'ms/epoch':>9} {'x plain':>8} {'x Lightning':>12}")
    for name, ms in figures.items():
        versus_lightning = f"{figures['Lightning'] / ms:12.1f}" if has_lightning else ""
        print(f"{name:36} {ms:9.2f} {figures['plain loop'] / ms:8.1f} {versus_lightning}")
    if not has_lightning:
        print("Lightning: skipped, `lightning` is not importable (pip install lightning, best in another environment)")


if __name__ == "__main__":
    main()
