"""``exaslide search`` (query an index by image, slide region or text) and
``exaslide evaluate-retrieval`` (precision@k and mAP of held-out queries)."""

from __future__ import annotations

import json

import click


def _region(value: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in value.split(","))
    except ValueError as exc:
        raise click.BadParameter("expected x,y,w,h (level-0 pixels)",
                                 param_hint="--region") from exc
    return x, y, w, h


def _text_encoder(index):
    from exaslide.errors import RetrievalError

    try:
        from exaslide.retrieval.text import encode_query_text
    except ImportError as exc:
        raise RetrievalError("text search needs the multimodal index (exaslide.retrieval."
                             "text is not available)") from exc
    return lambda text: encode_query_text(text, index.info.get("store", {}))


@click.command("search")
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False))
@click.option("--image", type=click.Path(dir_okay=False, exists=True),
              help="Query image (resized and centre-cropped to the model's patch).")
@click.option("--slide", type=click.Path(dir_okay=False, exists=True),
              help="Query slide (with --region).")
@click.option("--region", help="x,y,w,h in level-0 pixels of --slide.")
@click.option("--text", help="Query text (a multimodal index).")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Hits to return.")
@click.option("--gallery", type=click.Path(dir_okay=False),
              help="Write a PNG of the query and its hits.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
def command(index_dir, image, slide, region, text, k, gallery, as_json) -> None:
    """Find the K entries of INDEX most similar to an image, a slide region or a text."""
    import numpy as np

    from exaslide.retrieval import search as q
    from exaslide.retrieval.index import load_index

    if sum(v is not None for v in (image, slide, text)) != 1:
        raise click.UsageError("give exactly one of --image, --slide (with --region), --text")
    if (slide is None) != (region is None):
        raise click.UsageError("--slide and --region go together")
    if k < 1:
        raise click.BadParameter("must be at least 1", param_hint="-k")
    index = load_index(index_dir)
    query_image = None
    if image is not None:
        query_image = q.read_image(image)
        vector = q.embed_image(index, query_image)
    elif slide is not None:
        x, y, w, h = _region(region)
        vector = q.embed_region(index, slide, x, y, w, h)
        query_image = _region_picture(slide, x, y, w, h)
    else:
        vector = q.embed_text(text, _text_encoder(index))
    hits = index.search(np.asarray(vector)[None, :], k)[0]
    if as_json:
        click.echo(json.dumps([{"rank": r, "score": h.score, "id": h.id, **h.meta}
                               for r, h in enumerate(hits, 1)], default=str))
    else:
        _print_table(hits)
    if gallery:
        from exaslide.retrieval.gallery import hit_image, write_gallery

        write_gallery(query_image, hits, gallery, lambda h: hit_image(index, h))
        if not as_json:
            click.echo(f"gallery: {gallery}")


def _region_picture(slide_path, x, y, w, h):
    from exaslide.slides import open_slide

    with open_slide(slide_path) as s:
        level = s.best_level(downsample=max(w, h) / 512) if max(w, h) > 512 else 0
        d = s.level_downsamples[level]
        return s.read_region((x, y), (max(1, round(w / d)), max(1, round(h / d))), level)


def _print_table(hits) -> None:
    click.echo(f"{'rank':>4} {'score':>7} {'id':<24} {'x':>7} {'y':>7} label")
    for rank, h in enumerate(hits, 1):
        m = h.meta
        name = str(m.get("figure_id") or m.get("slide_id") or m.get("key") or h.id)
        click.echo(f"{rank:>4} {h.score:7.4f} {name:<24} {_cell(m.get('x')):>7} "
                   f"{_cell(m.get('y')):>7} {_cell(m.get('label'))}")


def _cell(value) -> str:
    return "-" if value in (None, "") else str(value)


@click.command("evaluate-retrieval")
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False))
@click.option("--queries", required=True, type=click.Path(file_okay=False),
              help="Embedding store of the queries.")
@click.option("--split", default="test", show_default=True,
              help="Query rows of this split; hits of this split are not gallery "
                   "('' for all rows).")
@click.option("-k", "k", type=int, default=10, show_default=True)
@click.option("--same-slide", is_flag=True, help="Count hits from the query's own slide.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def evaluate_command(index_dir, queries, split, k, same_slide, as_json) -> None:
    """Precision@k and mAP@k, by label, of held-out QUERIES against INDEX."""
    from exaslide.retrieval.index import load_index
    from exaslide.retrieval.metrics import evaluate_retrieval

    if k < 1:
        raise click.BadParameter("must be at least 1", param_hint="-k")
    result = evaluate_retrieval(load_index(index_dir), queries, k, split=split or None,
                                exclude_same_slide=not same_slide)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{result['queries']} queries, k={k}: precision@{k} "
               f"{result['precision_at_k']:.3f}, mAP@{k} {result['map']:.3f}")
    for label, row in result["per_label"].items():
        click.echo(f"  {label}: {row['queries']} queries, precision@{k} "
                   f"{row['precision_at_k']:.3f}, mAP@{k} {row['map']:.3f}")
