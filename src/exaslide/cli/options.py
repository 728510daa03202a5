"""Options shared by several commands."""

from __future__ import annotations

import click

from exaslide.slides.open import BACKEND_NAMES

backend_option = click.option(
    "--backend", type=click.Choice(BACKEND_NAMES), default=None,
    help="Force a slide backend (default: the first that opens the file).",
)


def progress_bar(total: int, desc: str):
    """A tqdm progress bar on stderr (hidden when stderr is not a terminal)."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tile" if "tile" in desc else "it",
                disable=not sys.stderr.isatty(), file=sys.stderr, leave=False)
