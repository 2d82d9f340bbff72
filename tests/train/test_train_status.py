"""`neptune-rt status` from a run's files alone, in-process: a running run (rate, time left), a stale one (a
hint to resume), a failed one (its error), and a torn last metrics line (a kill mid-write) ignored."""
import json
import time

from neptune_rt.train.status import describe


def _run(tmp_path, state: dict, steps: int = 40):
    (tmp_path / "run.json").write_text(json.dumps(state))
    lines = [json.dumps({"kind": "train", "step": s, "loss": 1.0 / s, "samples_per_s": 500.0, "comm_share": 0.25,
                         "wall": s * 0.5}) for s in range(10, steps + 1, 10)]
    lines.append(json.dumps({"kind": "eval", "step": 40, "test_accuracy": 0.875}))
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"kind": "train", "st')
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step-00000030.pt").write_bytes(b"x")
    return describe(tmp_path)


def test_running(tmp_path):
    text = _run(tmp_path, {"state": "running", "step": 40, "total_steps": 100, "updated": time.time()})
    assert "running, step 40/100 (40%)" in text
    assert "last logged step 40: loss 0.0250, 500 samples/s, communication 25% of step time" in text
    assert "2.0 steps/s, about 30s left" in text  # 60 steps at 2 steps/s
    assert "test accuracy 87.50% at step 40" in text and "last checkpoint: step-00000030.pt" in text


def test_stale_and_failed(tmp_path):
    stale = _run(tmp_path, {"state": "running", "step": 40, "total_steps": 100, "updated": time.time() - 600})
    assert "no update for 10m00s" in stale and f"--resume {tmp_path}" in stale
    (tmp_path / "checkpoints" / "step-00000030.pt").unlink()
    (tmp_path / "checkpoints").rmdir()
    failed = _run(tmp_path, {"state": "failed", "step": 40, "total_steps": 100, "error": "TimeoutError: rank 2"})
    assert "failed, step 40/100" in failed and "error: TimeoutError: rank 2" in failed
