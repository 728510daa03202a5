"""``exaslide train``: train a patch classifier from an extraction's output."""

from __future__ import annotations

import click

from exaslide.cli.options import check_config, run_locked

#: Named options whose values are read as YAML, then validated with the rest of the config.
_TYPED = ("epochs", "batch_size", "lr", "workers", "seed")


@click.command("train")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False, exists=True))
@click.option("--data", default=None, help="Extraction output folder [config: data].")
@click.option("--out", default=None, help="Output folder [config: out].")
@click.option("--model", default=None, help="Registered model name [config: model].")
@click.option("--epochs", default=None, metavar="INTEGER", help="Epochs [config: epochs].")
@click.option("--batch-size", default=None, metavar="INTEGER", help="Batch size per process.")
@click.option("--lr", default=None, metavar="FLOAT", help="Learning rate.")
@click.option("--source", type=click.Choice(["slides", "shards"]), default=None,
              help="Read patches from the slides or from materialised shards.")
@click.option("--workers", default=None, metavar="INTEGER",
              help="DataLoader workers per process.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--seed", default=None, metavar="INTEGER", help="Random seed.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any config option, dotted for nested ones (augment.hed.sigma=0.03).")
@click.option("--resume", is_flag=True,
              help="Continue from OUT/checkpoints/last.pt (a killed run).")
@click.option("--check", is_flag=True,
              help="Validate the configuration and the device, print the resolved "
                   "configuration (YAML) and stop: nothing is trained or written.")
def command(config_file, data, out, model, epochs, batch_size, lr, source, workers, device,
            seed, sets, resume, check) -> None:
    """Train on CONFIG_FILE (YAML; see docs/training.md), with command-line overrides.

    Every value (from the file, an option or --set) is validated before anything is
    written. Multi-GPU and multi-node: launch with torchrun, e.g.
    ``torchrun --nproc-per-node 4 -m exaslide train config.yaml``.
    """
    from exaslide.train.config import dump_config, load_config

    overrides = {"data": data, "out": out, "model": model, "epochs": epochs,
                 "batch_size": batch_size, "lr": lr, "source": source, "workers": workers,
                 "device": device, "seed": seed}
    config = load_config(config_file, _typed(overrides), list(sets))
    if check:
        check_config(config, dump_config)
        return
    from exaslide.train import train

    _report(run_locked(config.out, lambda: train(config, resume=resume)))


def _typed(overrides: dict) -> dict:
    """Numeric options as YAML values (``--lr 1e-3`` -> 0.001 after validation, ``--epochs
    2.5`` -> the config's one-line error)."""
    import contextlib

    import yaml

    typed = dict(overrides)
    for key in _TYPED:
        if typed[key] is not None:
            with contextlib.suppress(yaml.YAMLError):  # else text: validation names it
                typed[key] = yaml.safe_load(typed[key])
    return typed


def _report(result) -> None:
    if result.resumed_from is not None:
        click.echo(f"resumed at epoch {result.resumed_from}")
    if result.history:
        last = result.history[-1]
        auc = f"{result.best_val_auc:.4f}" if result.best_val_auc is not None else "n/a"
        click.echo(f"trained {len(result.history)} epoch(s); best validation AUC {auc} at "
                   f"epoch {result.best_epoch}; last train loss {last['train_loss']:.4f}; "
                   f"model: {result.model_path}"
                   + (" (stopped early)" if result.stopped_early else ""))
