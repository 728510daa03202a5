"""Run by test_train under torchrun: train, then write this rank's weight digest."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from exaslide.train import load_config, train

if __name__ == "__main__":
    config_path, results = sys.argv[1], Path(sys.argv[2])
    result = train(load_config(config_path), progress=False)
    rank = int(os.environ["RANK"])
    (results / f"rank{rank}.json").write_text(json.dumps(
        {"digest": result.weights_digest, "world_size": int(os.environ["WORLD_SIZE"])}))
