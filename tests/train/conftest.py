"""Shared real runs for the train tests: `neptune-rt train` on digits under mpirun, once per session."""
from pathlib import Path

import pytest

from _cli import neptune, ok

DENSE_ARGS = ["--data", "digits", "--model", "mlp", "--hidden", "32", "--batch-size", "64", "--steps", "30",
              "--lr", "0.1", "--momentum", "0.9", "--lr-schedule", "constant", "--eval-every", "10",
              "--log-every", "1", "--seed", "4"]


@pytest.fixture(scope="session")
def dense_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "dense"
    result = ok(neptune(3, "train", *DENSE_ARGS, "--run-dir", run, "--tensorboard", "--progress", "lines",
                        timeout=300))
    (run / "stdout.txt").write_text(result.stdout)
    (run / "stderr.txt").write_text(result.stderr)
    return run


@pytest.fixture(scope="session")
def int8_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "int8"
    ok(neptune(2, "train", *DENSE_ARGS, "--compression", "int8", "--force-codec", "--run-dir", run, timeout=300))
    return run
