"""The neptune_rt DDP communication hook against DDP's own hooks on 4 real MPI ranks (and backward raising, not
hanging, when the engine fails); and its local momentum
(CommHookState(momentum=...)): exact with exact communication, and onebit through it trains load_digits within
1 point of dense DDP."""
import pytest

from neptune_rt import engine

from mpi_helpers import assert_ok, assert_part_passed, run_workers


def test_ddp_hook_matches_ddp_default_hooks() -> None:
    assert_ok(run_workers("ddp_hook_worker.py", 4), 4)


def test_ddp_hook_raises_in_backward_when_the_engine_fails() -> None:
    proc = run_workers("ddp_hook_failure_worker.py", 2, env={"NEPTUNE_RT_TIMEOUT_SECONDS": "60"})
    oks = [line for line in proc.stdout.splitlines() if line.startswith("OK")]
    assert len(oks) == 2, proc.output
    # After any engine failure the exit handler aborts the job, so it ends non-zero (docs/failures.md).
    assert proc.returncode != 0 and "aborting the MPI job at exit after an earlier failure" in proc.output, \
        proc.output


MODE = "onebit:0.9"  # forced onebit through the hook, the hook's momentum = the optimizer's


def _can_train_onebit() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return "onebit" in engine.CODECS


@pytest.fixture(scope="module")
def momentum_hook_run():
    """The exact part and (where onebit is built) the digits training share one 4-rank launch."""
    parts = ["exact"] + (["digits", "ddp", MODE] if _can_train_onebit() else [])
    return run_workers("momentum_hook_worker.py", 4, *parts, timeout=360)


def test_momentum_hook_with_exact_communication_is_plain_ddp(momentum_hook_run) -> None:
    assert_part_passed(momentum_hook_run, "PASSED exact rank ", 4)
    if not _can_train_onebit():  # the launch's only part: it must also end cleanly (the digits test checks it)
        assert_ok(momentum_hook_run, 4)


def test_momentum_hook_auto_asks_for_the_low_bit_candidates() -> None:
    import neptune_rt.torch as nrt
    assert nrt.comm_hook.CommHookState(codec="auto", momentum=0.9).compressor.codec == "auto_lowbit"
    forced = nrt.comm_hook.CommHookState(codec="auto", momentum=0.9, adaptive=False).compressor
    assert forced.codec == "auto_lowbit" and not forced.adaptive
    assert nrt.comm_hook.CommHookState(codec="auto").compressor.codec == "auto"  # raw gradients: fp16/int8 only


def test_onebit_hook_with_local_momentum_trains_within_one_point_of_dense_ddp(momentum_hook_run) -> None:
    """SGD momentum 0.9 on 4 ranks: the final test accuracy, and the mean test accuracy over epochs 3-12 (how
    fast it gets there, which is what the race measures), within 1 point of dense DDP's. Without the hook's
    momentum (mode onebit:0, raw gradients compressed) the final accuracy still matches here, but the mean over
    epochs 3-12 was 88.9% against dense's 95.1%: this test fails for it."""
    if not _can_train_onebit():
        pytest.skip("needs scikit-learn and the onebit codec in this engine build")
    proc = momentum_hook_run
    assert_ok(proc, 4)
    print(proc.stdout)
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("ACC", "CURVE"))]
    checksum = {r[1]: float(r[4]) for r in rows if r[0] == "ACC"}
    curve = {r[1]: [float(a) for a in r[2:]] for r in rows if r[0] == "CURVE"}
    assert checksum[MODE] != checksum["ddp"]  # compression was really on
    dense, ours = curve["ddp"], curve[MODE]
    assert len(dense) == len(ours) == 12 and dense[-1] > 90, curve
    assert ours[-1] >= dense[-1] - 1.0, curve
    assert sum(ours[2:]) / 10 >= sum(dense[2:]) / 10 - 1.0, curve
