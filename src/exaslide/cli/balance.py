"""``exaslide balance``: a balanced training set from an extraction's patch index."""

from __future__ import annotations

import click


@click.command("balance")
@click.argument("index_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="Parquet file to write (index schema).")
@click.option("--by", default="label", show_default=True,
              help="Comma-separated grouping columns, e.g. label,slide_id or label,centre.")
@click.option("--per-group", type=int, default=None,
              help="Patches per group [the smallest group's size].")
@click.option("--split", default=None, help="Only rows of this split (e.g. train).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
def command(index_dir, out_file, by, per_group, split, seed) -> None:
    """Draw the same number of patches from every group of INDEX_DIR (an extraction's
    output folder or its index/) and write them to --out (which must not be inside the
    index folder)."""
    import pyarrow.dataset as ds

    from exaslide.patches import balanced_sample, open_index, schema
    from exaslide.patches.balance import check_output
    from exaslide.patches.index import write_slide_index

    columns = [c.strip() for c in by.split(",") if c.strip()]
    unknown = [c for c in columns if c not in schema().names]
    if not columns or unknown:
        raise click.BadParameter(f"unknown column(s) {unknown or by!r}; choose from "
                                 f"{', '.join(schema().names)}", param_hint="--by")
    if per_group is not None and per_group < 1:
        raise click.BadParameter("must be at least 1", param_hint="--per-group")
    check_output(index_dir, out_file)
    dataset = open_index(index_dir)
    table = balanced_sample(dataset, tuple(columns), per_group, seed,
                            filter=ds.field("split") == split if split else None)
    write_slide_index(table, out_file)
    groups = table.group_by(columns).aggregate([([], "count_all")])
    click.echo(f"{table.num_rows} patches in {groups.num_rows} groups -> {out_file}")
