"""Run by test_mil_train under torchrun: train a MIL model, write this rank's digest."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from exaslide.mil import load_mil_config, train_mil

if __name__ == "__main__":
    config_path, results = sys.argv[1], Path(sys.argv[2])
    result = train_mil(load_mil_config(config_path))
    rank = int(os.environ["RANK"])
    (results / f"rank{rank}.json").write_text(json.dumps(
        {"digest": result.weights_digest, "world_size": int(os.environ["WORLD_SIZE"])}))
