"""``exaslide train``: train a patch classifier from an extraction's output."""

from __future__ import annotations

import click


@click.command("train")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False, exists=True))
@click.option("--data", default=None, help="Extraction output folder [config: data].")
@click.option("--out", default=None, help="Output folder [config: out].")
@click.option("--model", default=None, help="Registered model name [config: model].")
@click.option("--epochs", type=int, default=None, help="Epochs [config: epochs].")
@click.option("--batch-size", type=int, default=None, help="Batch size per process.")
@click.option("--lr", type=float, default=None, help="Learning rate.")
@click.option("--source", type=click.Choice(["slides", "shards"]), default=None,
              help="Read patches from the slides or from materialised shards.")
@click.option("--workers", type=int, default=None, help="DataLoader workers per process.")
@click.option("--device", default=None, help="auto, cpu or cuda.")
@click.option("--seed", type=int, default=None, help="Random seed.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any config option, dotted for nested ones (augment.hed.sigma=0.03).")
@click.option("--resume", is_flag=True,
              help="Continue from OUT/checkpoints/last.pt (a killed run).")
def command(config_file, data, out, model, epochs, batch_size, lr, source, workers, device,
            seed, sets, resume) -> None:
    """Train on CONFIG_FILE (YAML; see docs/training.md), with command-line overrides.

    Multi-GPU and multi-node: launch with torchrun, e.g.
    ``torchrun --nproc-per-node 4 -m exaslide train config.yaml``.
    """
    from exaslide.train import load_config, train

    overrides = {"data": data, "out": out, "model": model, "epochs": epochs,
                 "batch_size": batch_size, "lr": lr, "source": source, "workers": workers,
                 "device": device, "seed": seed}
    config = load_config(config_file, overrides, list(sets))
    result = train(config, resume=resume)
    if result.resumed_from is not None:
        click.echo(f"resumed at epoch {result.resumed_from}")
    if result.history:
        last = result.history[-1]
        auc = f"{result.best_val_auc:.4f}" if result.best_val_auc is not None else "n/a"
        click.echo(f"trained {len(result.history)} epoch(s); best validation AUC {auc} at "
                   f"epoch {result.best_epoch}; last train loss {last['train_loss']:.4f}; "
                   f"model: {result.model_path}"
                   + (" (stopped early)" if result.stopped_early else ""))
