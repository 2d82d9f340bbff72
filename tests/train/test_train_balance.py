"""`neptune-rt train --balance` under real mpirun on digits: with an emulated slow rank the scheduler ends with
per-rank sizes favouring the fast ranks while the model trains as with the equal split (same global-batch
gradient); the bar / lines, metrics.jsonl's plan records, the report and status show the plan; kill-and-resume
restores the scheduler (same plans, bitwise parameters in deterministic mode), a world-size change restarts it
with a warning; a misspelt mode or a bad slowdown list fails clearly on every rank; goodput mode keeps the global
batch in its bounds and the learning rate on the AdaScale gain."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _cli import final_params, metrics, mpi_env, mpirun_path, neptune, ok
from conftest import DENSE_ARGS

# conftest's dense run (3 ranks, equal split of 64) with rank 2 four times slower; the compute is emulated at
# 0.5 ms per sample (sleep), so the balance shows through the load of a shared 2-core machine. --max-micro 16
# makes the fast ranks' shares accumulate.
BALANCED = ["--balance", "hetero", "--max-micro", "16", "--emulate-slowdown", "1,1,4", "--emulate-per-sample-ms",
            "0.5", "--progress", "lines"]


@pytest.fixture(scope="module")
def equal_run(dense_run):
    return dense_run


@pytest.fixture(scope="module")
def balanced_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("balance") / "hetero"
    result = ok(neptune(3, "train", *DENSE_ARGS, *BALANCED, "--run-dir", run, timeout=300))
    (run / "stderr.txt").write_text(result.stderr)
    return run


def _plans(run):
    return [r for r in metrics(run) if r["kind"] == "plan"]


def test_hetero_favours_the_fast_ranks_and_learns_like_the_equal_split(equal_run, balanced_run):
    plans = _plans(balanced_run)
    assert plans[0]["local_batches"] == [22, 21, 21] and plans[0]["step"] == 0  # the initial equal split
    final = plans[-1]["local_batches"]
    # Water-filling on 0.5 / 0.5 / 2 ms per sample gives [28.4, 28.4, 7.1]. Timing noise on a shared machine moves
    # samples between the two fast ranks (a CI run ended at [32, 24, 8]), so: each fast rank above an equal share
    # (21.3), the slow one at most about half of it.
    assert sum(final) == 64 and final[2] <= 11 and min(final[:2]) >= 22, final
    accum = [-(-b // 16) for b in final]  # shares above --max-micro 16 run as accumulated micro-batches
    assert plans[-1]["accum_steps"] == accum and min(accum[:2]) >= 2
    train = [r for r in metrics(balanced_run) if r["kind"] == "train"]
    # A train record has the sizes its step ran and the digest of the plan for the next step; a plan record applies
    # from the step after its own (a re-plan at the last step once failed a check of the sizes against plans[-1]).
    in_force = [p for p in plans if p["step"] < train[-1]["step"]][-1]
    assert train[-1]["batch_sizes"] == in_force["local_batches"] and train[-1]["plan_digest"] == plans[-1]["digest"]
    assert all(r["batch_sizes"] == [22, 21, 21] or sum(r["batch_sizes"]) < 64
               for r in metrics(equal_run) if r["kind"] == "train")
    # Weights b_i / B keep the reduced gradient the global-batch mean: the parameters follow the equal split's
    # up to summation order (measured 6e-8 to 1.4e-7 relative), and so does the test accuracy (1 point = 3.6
    # samples).
    want, got = final_params(equal_run), final_params(balanced_run)
    for name in want:
        rel = ((want[name] - got[name]).norm() / want[name].norm()).item()
        assert rel < 1e-5, f"{name}: relative difference {rel:.3g} from the equal split"
    acc = [[r["test_accuracy"] for r in metrics(run) if r["kind"] == "eval"][-1] for run in (equal_run, balanced_run)]
    assert abs(acc[0] - acc[1]) <= 0.01 and acc[1] > 0.7, acc
    lines = [line for line in (balanced_run / "stderr.txt").read_text().splitlines() if line.startswith("step ")]
    assert lines[-1].endswith(f"batch={'/'.join(map(str, final))} accum={'/'.join(map(str, accum))}"), lines[-1]


def test_report_and_status_show_the_plan(balanced_run):
    ok(neptune(0, "report", balanced_run))
    md = (balanced_run / "report" / "report.md").read_text()
    final = _plans(balanced_run)[-1]
    assert f"per rank {final['local_batches']}" in md and "re-plans" in md
    status = ok(neptune(0, "status", balanced_run)).stdout
    assert f"B=64, per rank {final['local_batches']}" in status


# Deterministic: the scheduler sees the emulated compute (not the clock), so plans are reproducible. Checkpoint
# at step 4 and kill at 7: the resume lands while the split is still converging (plans change at steps 3-7).
RESUME = ["train", "--data", "digits", "--model", "dropout-mlp", "--dropout", "0.3", "--batch-size", "64",
          "--steps", "20", "--checkpoint-every", "4", "--deterministic", "--log-every", "1", "--eval-every", "10",
          "--lr", "0.1", "--seed", "1", "--balance", "hetero", "--max-micro", "20", "--emulate-slowdown", "1,3",
          "--emulate-per-sample-ms", "0.2"]


def _plan_trace(run):
    return [(r["step"], r["batch_sizes"], r["plan_digest"]) for r in metrics(run) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    run = tmp_path_factory.mktemp("balance") / "killed"
    result = neptune(2, *RESUME, "--run-dir", run, env={"NEPTUNE_RT_TRAIN_FAULT": "kill-at-step:7"}, timeout=300)
    assert result.returncode != 0, "the injected kill did not happen"
    return run


def test_kill_and_resume_restores_the_scheduler(killed, tmp_path):
    full = tmp_path / "full"
    ok(neptune(2, *RESUME, "--run-dir", full, timeout=300))
    run = shutil.copytree(killed, tmp_path / "run")
    assert torch.load(run / "checkpoints" / "step-00000004.pt", weights_only=False)["scheduler"]["mode"] == "hetero"
    ok(neptune(2, "train", "--resume", run, timeout=300))
    trace, want = _plan_trace(run), _plan_trace(full)
    assert [s for s, *_ in trace] == list(range(1, 21))
    assert len({d for *_, d in want[3:8]}) > 1, "the plans should still change after the checkpoint"
    assert trace == want  # the same split and plan digest at every step
    strip = lambda ps: [{k: v for k, v in p.items() if k not in ("wall", "time")} for p in ps]  # noqa: E731
    assert strip(_plans(run)) == strip(_plans(full))
    for name, value in final_params(full).items():
        assert torch.equal(value, final_params(run)[name]), f"{name} differs after kill-and-resume"


def test_a_lower_max_micro_given_on_resume_applies(killed, tmp_path):
    # The checkpoint's plan has micro-batch limits of 20; resuming with --max-micro 6 (as after running out of
    # memory) must lower them, not keep the checkpoint's.
    run = shutil.copytree(killed, tmp_path / "run")
    ok(neptune(2, "train", "--resume", run, "--max-micro", "6", timeout=300))
    after = [p for p in _plans(run) if p["step"] >= 4]
    assert after and after[0]["max_micro"] == [6, 6] and all(max(p["max_micro"]) <= 6 for p in after), after
    assert all(a == -(-b // 6) for p in after for a, b in zip(p["accum_steps"], p["local_batches"])), after


def test_resume_on_another_world_size_restarts_the_scheduler(killed, tmp_path):
    run = shutil.copytree(killed, tmp_path / "run")
    result = ok(neptune(3, "train", "--resume", run, "--emulate-slowdown", "1,1,3", timeout=300))
    assert "scheduler restarts from an equal split: the checkpoint's 2 ranks differ from this run's 3" in result.stderr
    plans = _plans(run)
    old, new = [p for p in plans if len(p["local_batches"]) == 2], [p for p in plans if len(p["local_batches"]) == 3]
    assert plans == old + new and all(p["step"] <= 4 for p in old)  # the 2-rank plans up to the checkpoint
    assert new[0]["step"] == 4 and new[0]["version"] == 0 and new[0]["local_batches"] == [22, 21, 21]


@pytest.mark.parametrize("args, message", [
    (["--balance", "hetro"], "unknown balance 'hetro' (choose one of: off, hetero, goodput); did you mean 'hetero'?"),
    (["--emulate-slowdown", "1,2,4"], "--emulate-slowdown '1,2,4' names 3 ranks but the job has 2"),
    (["--emulate-memory-cap", "0,-1"], "--emulate-memory-cap '0,-1': every cap must be a finite number of MiB >= 0"),
    (["--balance", "goodput", "--compression", "onebit"],
     "--balance goodput cannot measure the gradient noise scale under local momentum (--compression onebit with SGD "
     "momentum 0.9)"),
    (["--balance", "goodput", "--batch-size", "8", "--batch-bounds", "1,64"],
     "--batch-bounds 1,64: a global batch of 1 leaves some of the 2 ranks without a sample; make the lower bound at "
     "least 2"),
])
def test_bad_balance_settings_fail_on_every_rank(tmp_path, args, message):
    result = neptune(2, "train", "--data", "digits", "--steps", "2", "--run-dir", tmp_path / "run", *args,
                     timeout=120)
    assert result.returncode == 2, result.output[-3000:]
    assert result.stderr.count(message) == 1, result.output[-3000:]
    assert not (tmp_path / "run" / "run.json").exists()


# Out of memory in the Trainer, emulated on CPU: rank 1's forward may save about 10 KiB of activations (0.01 MiB),
# which 24 samples of conftest's MLP fit and 32 (its equal share of 64) do not. --max-micro (a limit given up front,
# too high here) skips the memory probe, so the out-of-memory happens in training.
def _oom_run(run, cap, *extra):
    return neptune(2, "train", *DENSE_ARGS, "--balance", "hetero", "--emulate-memory-cap", cap, "--progress", "lines",
                   "--run-dir", run, *extra, timeout=300)


def _fits(b, capacity):
    from neptune_rt.schedule import CpuMemoryMeter
    from neptune_rt.train.models import build_model
    torch.manual_seed(0)
    model = build_model("mlp", 64, 10, [32], 0.0)  # conftest's model on digits: 64 features, 10 classes
    try:
        with CpuMemoryMeter(capacity).measure():
            loss = torch.nn.functional.cross_entropy(model(torch.randn(b, 64)), torch.randint(0, 10, (b,)))
        torch.autograd.grad(loss, list(model.parameters()))
        return True
    except MemoryError:
        return False


def _oom_steps(run, rank):
    trace = json.loads((run / f"timeline.rank{rank}.json").read_text())["traceEvents"]
    return [e["args"]["step"] for e in trace if e.get("name") == "step" and "out_of_memory_at" in e.get("args", {})]


def test_out_of_memory_on_one_rank_lowers_its_micro_batch_and_the_run_goes_on(tmp_path):
    result = ok(_oom_run(tmp_path / "oom", "0,0.01", "--max-micro", "64"))
    assert "rank 1: out of memory at a micro-batch of 32 samples in step 1" in result.stderr, result.stderr[-3000:]
    # The row saying so rides in step 2's gradients: the plan of step 2 on lowers rank 1's limit to 3/4 of 32, and
    # rank 1 ran smaller micro-batches at once, so step 1 is its only out-of-memory.
    oom_plans = [p for p in _plans(tmp_path / "oom") if p["reason"].startswith("out of memory")]
    assert [(p["step"], p["reason"], p["max_micro"]) for p in oom_plans] == \
        [(2, "out of memory (rank 1 at 32): max micro-batch 64/24", [64, 24])]
    assert "step 2: out of memory (rank 1 at 32)" in result.stderr
    assert _oom_steps(tmp_path / "oom", 1) == [1] and _oom_steps(tmp_path / "oom", 0) == []
    train = [r for r in metrics(tmp_path / "oom") if r["kind"] == "train"]
    assert train[-1]["step"] == 30 and all(math.isfinite(r["loss"]) for r in train)


def test_out_of_memory_at_a_micro_batch_of_one_stops_every_rank_with_one_error(tmp_path):
    result = _oom_run(tmp_path / "oom", "0,0.0001", "--max-micro", "64")  # not even one sample fits rank 1
    assert result.returncode != 0
    message = "rank 1 ran out of memory at a micro-batch of 1 sample"
    assert result.stderr.count(message) == 2, result.output[-3000:]  # each rank raises it


def test_memory_probe_sets_each_ranks_micro_batch_before_training(tmp_path):
    result = ok(_oom_run(tmp_path / "probe", "0,0.01"))
    plans = _plans(tmp_path / "probe")
    assert [p["reason"] for p in plans[:2]] == ["initial equal split", "memory probe: max micro-batch 64/" +
                                               str(plans[1]["max_micro"][1])] and plans[1]["step"] == 0
    # Rank 1's limit keeps the probe's margin (0.9 x the cap) and is near the largest that does; rank 0 has no
    # cap and gets the largest share possible, the global batch.
    limit, cap = plans[1]["max_micro"][1], 0.01 * 2**20
    best = max(b for b in range(1, 65) if _fits(b, 0.9 * cap))
    assert plans[1]["max_micro"][0] == 64 and _fits(limit, 0.9 * cap) and limit >= 0.9 * best, (limit, best)
    assert f"memory probe: largest micro-batch per rank 64/{limit}" in result.stderr
    # Training then stays within the limit: no out-of-memory anywhere.
    assert not [p for p in plans if p["reason"].startswith("out of memory")]
    assert _oom_steps(tmp_path / "probe", 0) == _oom_steps(tmp_path / "probe", 1) == []


def test_memory_probe_allows_unused_parameters_and_leaves_no_trace(tmp_path):
    worker = Path(__file__).parent / "workers" / "probe_worker.py"
    proc = subprocess.run([mpirun_path(), "-np", "2", "--oversubscribe", "--bind-to", "none", sys.executable,
                           str(worker), str(tmp_path / "run")], cwd=tmp_path, env=mpi_env(), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("OK [64, ") == 2, proc.stdout


def test_memory_probe_where_one_sample_does_not_fit_stops_every_rank(tmp_path):
    result = _oom_run(tmp_path / "probe", "0,0.0001")
    assert result.returncode != 0
    assert result.stderr.count("rank(s) [1] cannot fit even a micro-batch of 1 sample") == 2, result.output[-3000:]


# Goodput mode inside the Trainer: the global batch may move within --batch-bounds, the learning rate follows the
# AdaScale gain (1 at the base batch, between 1 and B/B0 above it) and every plan is a split of its global batch.
GOODPUT = ["--balance", "goodput", "--batch-bounds", "64,512", "--steps", "40", "--emulate-slowdown", "1,1,1",
           "--emulate-per-sample-ms", "0.05", "--progress", "lines"]


def test_goodput_mode_moves_the_global_batch_and_scales_the_lr(tmp_path):
    run = tmp_path / "goodput"
    at = DENSE_ARGS.index("--steps")
    ok(neptune(3, "train", *DENSE_ARGS[:at], *DENSE_ARGS[at + 2:], *GOODPUT, "--run-dir", run, timeout=300))
    plans = _plans(run)
    assert plans[0]["global_batch"] == 64 and plans[0]["local_batches"] == [22, 21, 21]
    for p in plans:
        assert 64 <= p["global_batch"] <= 512 and sum(p["local_batches"]) == p["global_batch"], p
    assert any(p["noise_scale"] > 0 for p in plans[1:]), "no noise scale was estimated"
    # Step s runs under the last plan adopted after fewer than s steps (an epoch's last step may hold fewer samples).
    def batch_at(step):
        return [p["global_batch"] for p in plans if p["step"] < step][-1]
    train = [(r, batch_at(r["step"])) for r in metrics(run) if r["kind"] == "train"]
    for r, batch in train:
        if batch == 64:
            assert r["lr"] == pytest.approx(0.1, rel=1e-12), r
        else:  # AdaScale gain r = (phi + B0) B / ((phi + B) B0): between 1 (phi = 0) and B/B0
            assert 0.1 <= r["lr"] < 0.1 * batch / 64, (batch, r)
    assert {batch for _, batch in train} != {64}, "the scheduler never changed the global batch"
    assert any(r["lr"] > 0.1 for r, batch in train if batch > 64), "the AdaScale gain never reached the lr"
