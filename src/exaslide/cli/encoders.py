"""``exaslide encoders``: the registry of foundation-model patch encoders.

``exaslide encoders list [--json]`` prints every encoder's embedding dimension, input
resolution and size, embedding rule, licence and whether its weights are on this machine
(in the local Hugging Face cache; nothing is downloaded).
"""

from __future__ import annotations

import click


@click.group("encoders")
def command() -> None:
    """Foundation-model patch encoders (UNI, Virchow2, H-optimus, ...): see
    docs/encoders.md. Weights are read from local files only."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of objects (name, dim, mpp, size, weights, ...).")
@click.option("--hf-cache", type=click.Path(file_okay=False), default=None,
              help="Hugging Face hub cache to look for weights in [huggingface_hub's: "
                   "$HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub].")
def list_command(as_json: bool, hf_cache: str | None) -> None:
    """List the registered encoders and whether their weights are found locally.
    Gated models (licence column) need an access request on their model card."""
    from exaslide.encoders import all_specs, weights_status

    rows = []
    for spec in all_specs():
        status = weights_status(spec, hf_cache)
        rows.append({**spec.describe(), "weights": status.state,
                     "weights_path": status.describe()["path"],
                     "weights_expected": status.describe()["expected"]})
    if as_json:
        import json

        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(rows))


def _table(rows: list[dict]) -> str:
    header = ("name", "dim", "µm/px", "size", "embedding", "licence", "weights")
    lines = [header]
    for r in rows:
        licence = r["licence"].split(",")[0] + (" (gated)" if r["gated"] else "")
        weights = r["weights"] + (f": {r['weights_path']}" if r["weights_path"] else "")
        lines.append((r["name"], _cell(r["dim"]), _cell(r["mpp"]), _cell(r["size"]),
                      r["pooling"], licence, weights))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) +
                     "  " + line[-1] for line in lines)


def _cell(value) -> str:
    return "-" if value is None else str(value)
