"""Run by test_shard_dataset under torchrun: each rank streams two exactly-once epochs with
2 workers and writes the keys it saw (the ranks all-reduce their counts over gloo), then
one ``even`` epoch with an all-reduce after every batch, like DDP's gradient sync."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import get_worker_info

from exaslide.data import ShardDataset, make_loader


class Tagged(torch.nn.Module):
    """Transform that records which worker decoded a sample (in the image's first pixel)."""

    def forward(self, image):
        info = get_worker_info()
        image = image.clone()
        image[0, 0, 0] = info.id if info is not None else 255
        return image


def main(out_dir: str, results: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    dataset = ShardDataset(out_dir, seed=7, shuffle_buffer=16, transform=Tagged(),
                           even=False)
    loader = make_loader(dataset, batch_size=8, workers=2)
    for epoch in range(2):
        dataset.set_epoch(epoch)
        keys, workers = [], set()
        for images, _, meta in loader:
            keys += meta["key"]
            workers |= {int(v) for v in images[:, 0, 0, 0]}
        count = torch.tensor([len(keys)])
        dist.all_reduce(count)
        Path(results, f"epoch{epoch}-rank{rank}.json").write_text(json.dumps(
            {"keys": keys, "workers": sorted(workers), "gathered_total": int(count)}))
    even = ShardDataset(out_dir, seed=7, shuffle_buffer=16)
    keys, batches = [], 0
    for _, _, meta in make_loader(even, batch_size=8, workers=2):
        step = torch.ones(1)
        dist.all_reduce(step)  # every rank must reach every batch's collective
        keys += meta["key"]
        batches += 1
    Path(results, f"even-rank{rank}.json").write_text(json.dumps(
        {"keys": keys, "batches": batches}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
