"""torchrun DDP on the CPU: two gloo processes, two short epochs on the demo set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from training.checkpoint import load_checkpoint
from training.engine import state_digest


@pytest.mark.slow
def test_two_process_gloo_run_agrees(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "0",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "localhost:0",
        str(Path(__file__).with_name("ddp_worker.py")),
        str(tmp_path),
    ]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, check=False, text=True, timeout=300, env=_env()
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["epochs_run"] == 2 for r in ranks)
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["best_val_accuracy"] == ranks[1]["best_val_accuracy"]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state_digest(ckpt.state_dict) == ranks[1]["digest"]
    # Only rank 0 wrote: one metrics line per epoch.
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    # The worker imports `tests.training...`: make the checkout importable, one thread a rank.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env
