"""Error-feedback residuals of the engine under real mpirun (tests/workers/residuals_worker.py): kept per
(name, codec) in unweighted units, bounded in memory, exported and imported bitwise."""
import pytest

from mpi_helpers import assert_ok, run_mpi

# Small blocks and segments so that a 1000-value tensor spans several blocks, segments and chunks.
ENV = {"NEPTUNE_RT_CODEC_BLOCK": "64", "NEPTUNE_RT_SEGMENT_BYTES": "1024"}


@pytest.mark.parametrize("np_", [2, 3])
def test_weight_change_matches_unweighted_reference(np_):
    """Per-rank weights (prescale) that change mid-run, one rank at weight 0 for two steps: results and
    exported residuals bitwise equal to a numpy two-phase reference whose residuals stay unweighted."""
    env = dict(ENV, NEPTUNE_RT_COMPRESSED_ALGORITHM="two_phase")
    assert_ok(run_mpi("residuals_worker.py", np_, "weights", timeout=240, env=env), np_)


@pytest.mark.parametrize("algorithm", ["two_phase", "ring"])
def test_export_import_round_trip_is_bitwise(algorithm):
    """Export mid-run, import into a fresh engine, continue: the same bits as an uninterrupted run."""
    env = dict(ENV, NEPTUNE_RT_COMPRESSED_ALGORITHM=algorithm)
    assert_ok(run_mpi("residuals_worker.py", 3, "roundtrip", timeout=240, env=env), 3)


def test_keys_release_unnamed_and_memory():
    """(name, codec) keys, release(), unnamed calls (one warning, no residual), bounded memory across
    buckets, import refused while in flight, size mismatch discarded with a warning, freed at shutdown."""
    proc = run_mpi("residuals_worker.py", 2, "keys", timeout=240, env=ENV)
    assert_ok(proc, 2)
    assert proc.stderr.count("discarding the imported error-feedback residual of tensor 's'") == 2, proc.stderr
