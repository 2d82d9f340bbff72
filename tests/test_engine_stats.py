"""The engine's counters and bucket records against a known workload, grouped all-reduces against numpy, and
the cost model's logged, reproducible decisions (NEPTUNE_RT_DETERMINISTIC). Real mpirun;
workers/engine_stats_worker.py."""
import pytest

from mpi_helpers import assert_ok, run_mpi

NO_EAGER = {"NEPTUNE_RT_EAGER_BYTES": "0"}


@pytest.mark.parametrize("np_", [1, 2, 3, 4])
def test_stats_agree_with_a_known_workload(np_):
    assert_ok(run_mpi("engine_stats_worker.py", np_, "stats", timeout=120, env=NO_EAGER), np_)


@pytest.mark.parametrize("np_", [1, 3])
def test_grouped_allreduce(np_):
    assert_ok(run_mpi("engine_stats_worker.py", np_, "groups", timeout=120), np_)


@pytest.mark.parametrize("deterministic", ["0", "1"])
def test_cost_model_decisions_are_logged_once(deterministic):
    env = {"NEPTUNE_RT_DETERMINISTIC": deterministic}
    assert_ok(run_mpi("engine_stats_worker.py", 2, "cost_model_log", timeout=120, env=env), 2)
