"""`neptune-rt train` end to end on digits under mpirun: the dense run matches a single-process reference
trained on the same global batches (plain torch), a cast, a blockwise and the 1-bit codec train (each codec
trains within a point of dense in tests/torch/test_compression.py), and metrics.jsonl, the per-rank Chrome
traces, config.toml, TensorBoard files and `neptune-rt status` agree with each other."""
import json
import math
import sys

import numpy as np
import pytest
import torch

from _cli import final_params, metrics, mpi_env, mpirun_path, neptune, ok
from mpi_helpers import launch
from conftest import DENSE_ARGS
from neptune_rt.train.config import load_toml
from neptune_rt.train.datasets import load
from neptune_rt.train.models import build_model


def _reference(steps: int, batch: int, seed: int, lr: float, momentum: float) -> dict:
    """Single process, whole global batch per step; epoch order = default_rng([seed, epoch]).permutation."""
    data = load("digits")
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    torch.manual_seed(seed)
    model = build_model("mlp", 64, 10, [32], 0.0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    per_epoch = math.ceil(len(x) / batch)
    for step in range(steps):
        epoch, k = divmod(step, per_epoch)
        idx = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(x))[k * batch:(k + 1) * batch])
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.state_dict()


def test_dense_matches_single_process_reference(dense_run):
    got, want = final_params(dense_run), _reference(30, 64, 4, 0.1, 0.9)
    assert got.keys() == want.keys()
    for name in want:
        err = (got[name] - want[name]).abs().max().item()
        assert err < 1e-4, f"{name}: max abs difference {err} from the single-process reference"


def test_metrics_and_timeline_agree(dense_run):
    records = metrics(dense_run)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 31))
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert all(r["batch_sizes"] == [22, 21, 21] or sum(r["batch_sizes"]) < 64 for r in train)
    assert train[-1]["samples"] == 30 * 64 - (23 * 64 - 1437)  # one short batch at the end of epoch 1
    assert all(0 <= r["comm_share"] <= 1 and r["samples_per_s"] > 0 for r in train)
    assert evals[-1]["test_accuracy"] > 0.85
    walls = [r["wall"] for r in train]
    assert walls == sorted(walls)
    for rank in range(3):
        trace = json.loads((dense_run / f"timeline.rank{rank}.json").read_text())["traceEvents"]
        steps = [e for e in trace if e["ph"] == "X" and e["name"] == "step"]
        assert [e["args"]["step"] for e in steps] == list(range(1, 31)), f"rank {rank}"
        assert all(e["pid"] == rank and e["dur"] >= 0 for e in trace if e["ph"] == "X")
        for phase in ("forward", "backward", "comm wait", "optimizer"):
            assert sum(e["name"] == phase for e in trace) == 30, (rank, phase)
        assert sum(e["name"] == "eval" for e in trace) == len(evals)
        assert sum(e["name"] == "checkpoint" for e in trace) >= 1


def test_run_files(dense_run):
    config = load_toml(dense_run / "config.toml")
    assert config["batch_size"] == 64 and config["steps"] == 30 and config["tensorboard"] is True
    state = json.loads((dense_run / "run.json").read_text())
    assert state["state"] == "finished" and state["step"] == 30 and state["world_size"] == 3
    assert list((dense_run / "tensorboard").glob("events.out.tfevents.*"))
    stdout = (dense_run / "stdout.txt").read_text()
    assert stdout.count("final test accuracy:") == 1 and str(dense_run) in stdout
    lines = [line for line in (dense_run / "stderr.txt").read_text().splitlines() if line.startswith("step ")]
    assert len(lines) == 30  # --progress lines, --log-every 1: one line per step from rank 0 only
    status = ok(neptune(0, "status", dense_run)).stdout
    assert "finished, step 30/30 (100%)" in status and "test accuracy" in status


def test_tensorboard_events_are_readable(dense_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(dense_run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 31))
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [10, 20, 30]


# The bf16 run also covers bf16 autocast on CPU, AdamW, warm-up, cosine decay and gradient clipping.
EXTRA = {"bf16": ["--amp", "bf16", "--optimizer", "adamw", "--lr", "0.01", "--warmup-steps", "5",
                  "--lr-schedule", "cosine", "--clip-grad", "1.0"]}


# Each launch costs seconds of start-up, so the CLI runs the codecs whose set-up differs: a cast (bf16), a blockwise
# codec through local momentum (int4) and 1 bit; int8 is int8_run's (below). Every codec, fp16 and auto included,
# trains within a point of dense through DistributedOptimizer in tests/torch/test_compression.py.
@pytest.mark.parametrize("codec", ["bf16", "int4", "onebit"])
def test_each_codec_trains(tmp_path, codec):
    result = ok(neptune(2, "train", *DENSE_ARGS, "--compression", codec, "--run-dir", tmp_path / "r", "--steps", "46",
                        "--eval-every", "0", *EXTRA.get(codec, []), timeout=300))
    acc = [r for r in metrics(tmp_path / "r") if r["kind"] == "eval"][-1]["test_accuracy"]
    assert acc > (0.80 if codec != "onebit" else 0.70), f"{codec}: test accuracy {acc}"
    assert "final test accuracy" in result.stdout


def test_digits_are_scikit_learns_without_importing_it():
    # digits_arrays reads the CSV scikit-learn ships: the very arrays load_digits returns, same dtypes.
    from sklearn.datasets import load_digits
    from neptune_rt.train.datasets import digits_arrays
    data, target = digits_arrays()
    want = load_digits()
    assert data.dtype == want.data.dtype and target.dtype == want.target.dtype
    assert np.array_equal(data, want.data) and np.array_equal(target, want.target)


def test_int8_run_is_close_to_dense(dense_run, int8_run):
    dense, int8 = final_params(dense_run), final_params(int8_run)
    rel = max(((dense[k] - int8[k]).norm() / dense[k].norm()).item() for k in dense)
    assert 0 < rel < 0.1, f"int8 parameters differ from dense by {rel:.3g} (relative norm)"
    acc = [r for r in metrics(int8_run) if r["kind"] == "eval"][-1]["test_accuracy"]
    assert acc > 0.80, f"int8: test accuracy {acc}"


@pytest.mark.parametrize("args, message", [
    (["--data", "cifar"], "unknown data set 'cifar' (choose one of: digits, fashion-mnist, mnist, or csv:DIR)"),
    (["--model", "resnet"], "unknown model 'resnet' (choose one of: auto, mlp, dropout-mlp, linear)"),
    (["--compression", "int3"], "unknown compression 'int3' (choose one of: none, fp16, bf16, int8"),
    (["--data", "fashion-mnist", "--data-dir", "/nonexistent"], "directory /nonexistent does not exist"),
    ("config", "unknown key 'learning_rate'; did you mean 'lr'?"),
])
def test_bad_input_fails_every_rank_with_one_message(tmp_path, args, message):
    if args == "config":
        (tmp_path / "c.toml").write_text("learning_rate = 0.1\n")
        args = ["--config", tmp_path / "c.toml"]
    result = neptune(2, "train", *args, "--run-dir", tmp_path / "run", timeout=240)
    assert result.returncode != 0, result.output[-2000:]
    assert result.stderr.count(message) == 1, result.output[-3000:]
    assert not (tmp_path / "run").exists()


def test_bad_data_on_one_rank_only_is_reported_by_that_rank(tmp_path):
    # The data is read before MPI_Init; a rank whose node lacks it fails alone (here an MPMD launch gives rank 1 a
    # CSV directory that does not exist): it names itself, once, and the job ends; nobody waits for it.
    def app(data: str) -> list[str]:
        return ["-np", "1", sys.executable, "-m", "neptune_rt", "train", "--data", data, "--steps", "2",
                "--run-dir", str(tmp_path / "run")]
    missing = tmp_path / "missing"
    result, hung = launch([mpirun_path(), "--oversubscribe", "--bind-to", "none", *app("digits"), ":",
                           *app(f"csv:{missing}")], mpi_env({"NEPTUNE_RT_TIMEOUT_SECONDS": "60"}), timeout=120)
    assert not hung and result.returncode != 0, result.output[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("neptune-rt: error")]
    assert len(lines) == 1 and lines[0].startswith("neptune-rt: error on rank 1 (rank 0 did not stop on it): ") \
        and str(missing) in lines[0], result.output[-3000:]
    assert not (tmp_path / "run").exists()
