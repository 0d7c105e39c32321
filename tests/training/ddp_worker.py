"""One rank of the DDP test: `torchrun --nproc-per-node 2 ddp_worker.py OUT_DIR`.

Trains the tiny demo recipe for two short epochs with gloo on the CPU and writes
`OUT_DIR/rank<r>.json` with this rank's final weight digest, so the test can check that both
ranks ended with the same weights and that rank 0 alone wrote the run files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from tests.training.conftest import tiny_recipe
from training.engine import train


def main() -> int:
    out = Path(sys.argv[1])
    # Two epochs with airbench's mechanics: the stem bias freezes after epoch 1 (DDP re-wraps),
    # alternating flips and the ramped Lookahead with averaged BatchNorm statistics.
    recipe = tiny_recipe(
        epochs=2,
        batch_size=32,
        whiten_images=64,
        whiten_bias_epochs=1,
        flip_mode="alternate",
        lookahead_k=2,
        lookahead_alpha_power=3.0,
        lookahead_buffers=True,
    )
    result = train(
        recipe,
        data_root=None,
        out_dir=out / "run",
        device="cpu",
        progress=False,
        limit_per_class=16,
    )
    rank = dist.get_rank() if dist.is_initialized() else result.rank
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": result.rank,
                "digest": result.weights_digest,
                "best_val_accuracy": result.best_val_accuracy,
                "epochs_run": result.epochs_run,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
