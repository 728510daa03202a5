"""``exaslide figures``: synthetic figures with captions, and a joint image-text store.

Not yet registered in :mod:`exaslide.cli.main`; add ``cli.add_command(figures.command)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group("figures")
def command() -> None:
    """Figures and captions (PubMed Central-like): synthesise, embed for text search."""


@command.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("-n", "count", type=int, default=200, show_default=True, help="Figures.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--size", type=(int, int), default=(192, 256), show_default=True,
              help="Height and width of each figure.")
def synth_command(out_dir, count, seed, size) -> None:
    """Write OUT_DIR/images/*.png with OUT_DIR/captions.jsonl and captions.csv."""
    from exaslide.synth.figures import make_figures

    if count < 1:
        raise click.BadParameter("at least one figure", param_hint="-n")
    folder = make_figures(out_dir, count, seed=seed, size=tuple(size))
    click.echo(f"{count} figures; captions: {folder / 'captions.jsonl'}")


@command.command("embed")
@click.argument("collection", type=click.Path(exists=True))
@click.argument("out_store", type=click.Path(file_okay=False))
@click.option("--text-model", default=None,
              help="Local sentence-transformers folder [bundled all-MiniLM-L6-v2].")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, exists=True),
              default=None, help="An exaslide model file whose features join the "
                                 "colour/texture descriptor [descriptor only].")
@click.option("--patch-size", type=int, default=224, show_default=True)
@click.option("--held-out", type=float, default=0.2, show_default=True,
              help="Fraction of figures kept out of training to measure recall@k.")
@click.option("--steps", type=int, default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def embed_command(collection, out_store, text_model, model_path, patch_size, held_out,
                  steps, seed) -> None:
    """Train CLIP projection heads on COLLECTION's figure-caption pairs and write the
    joint image vectors to OUT_STORE (kind 'figures'; text queries work on it)."""
    import numpy as np

    from exaslide.retrieval.multimodal import (
        embed_figures,
        image_features,
        read_figure_collection,
        recall_at_k,
        train_projection,
    )
    from exaslide.retrieval.text import TextEncoder

    if not 0.0 <= held_out < 1.0:
        raise click.BadParameter("must be in [0, 1)", param_hint="--held-out")
    figures = read_figure_collection(collection)
    model = None
    if model_path:
        from exaslide.models import load_model

        model, _ = load_model(model_path)
    encoder = TextEncoder(text_model)
    feats = image_features(figures, model, patch_size)
    texts = encoder.encode([f.caption for f in figures])
    order = np.random.default_rng(seed).permutation(len(figures))
    n_test = round(held_out * len(figures))
    train, test = order[n_test:], order[:n_test]
    heads = train_projection(feats[train], texts[train], steps=steps, seed=seed)
    if n_test >= 2:
        recall = recall_at_k(heads.embed_image(feats[test]), heads.embed_text(texts[test]))
        click.echo("held-out recall@k: " + json.dumps(recall))
    from exaslide.jobs import OutputLock

    with OutputLock(out_store):
        out = embed_figures(figures, out_store, heads, image_model=model,
                            text_model=encoder.name, patch_size=patch_size,
                            model_path=str(Path(model_path).resolve()) if model_path
                            else None)
    click.echo(f"{len(figures)} figures embedded; store: {out}")
