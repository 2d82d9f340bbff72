"""`neptune-rt status RUN_DIR`: where a running or finished run stands (state, step, last metrics, rate, time
left), read from its files only, so it works from another terminal or node. Exercised by
tests/train/test_train_status.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from neptune_rt.train import checkpoint as ckpt
from neptune_rt.train.monitor import codec_label, read_metrics

__all__ = ["describe"]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def describe(run: Path) -> str:
    try:
        state = json.loads((run / "run.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"{run} is not a run directory (no run.json); runs are under runs/ by default") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{run}/run.json is not valid JSON ({err})") from None
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    step, total = state.get("step", 0), state.get("total_steps") or 0
    lines = [f"run {run}: {state.get('state', '?')}, step {step}/{total or '?'}"
             + (f" ({100 * step / total:.0f}%)" if total else "")]
    if state.get("state") == "running":
        idle = time.time() - state.get("updated", time.time())
        if idle > 120:
            lines.append(f"  no update for {_duration(idle)}: the run may have stopped (resume it with "
                         f"--resume {run})")
    if state.get("state") == "failed":
        lines.append(f"  error: {state.get('error')}")
    if train:
        last = train[-1]
        lines.append(f"  last logged step {last['step']}: loss {last['loss']:.4f}, {last['samples_per_s']:.0f} "
                     f"samples/s, communication {last['comm_share'] * 100:.0f}% of step time"
                     # (runs logged before bytes_encoded have a raw-over-wire compression_ratio: not shown)
                     + (f", compression {last['compression_ratio']:.1f}x" if "bytes_encoded" in last else "")
                     + (f" ({codec_label(last['codecs_used'])})" if last.get("codecs_used") else ""))
        rate = last["step"] / last["wall"] if last["wall"] > 0 else 0.0
        lines.append(f"  elapsed {_duration(last['wall'])}, {rate:.1f} steps/s"
                     + (f", about {_duration((total - step) / rate)} left" if rate and total and
                        state.get("state") == "running" else ""))
    plans = [r for r in records if r.get("kind") == "plan"]
    if plans:
        p = plans[-1]
        lines.append(f"  batch-size plan v{p['version']} (from step {p['step']}): B={p['global_batch']}, per rank "
                     f"{p['local_batches']}" + (f", lr scale {p['lr_scale']:.3f}" if p["lr_scale"] != 1 else ""))
    if evals:
        lines.append(f"  test accuracy {evals[-1]['test_accuracy'] * 100:.2f}% at step {evals[-1]['step']}")
    last_ckpt = ckpt.latest(run / "checkpoints")
    lines.append(f"  last checkpoint: {last_ckpt.name if last_ckpt else 'none'}")
    return "\n".join(lines)
