"""Global-batch sharding: every sample exactly once per epoch whatever the per-rank sizes, disjoint slices,
deterministic given the seed, and resumable from a position. In-process."""
import numpy as np
import pytest

from neptune_rt.train.sampler import EpochSampler, Position, equal_split


def _epoch(sampler, batch, world, pos=None, sizes_fn=None):
    pos, seen, steps = pos or Position(), [], 0
    start_epoch = pos.epoch
    while pos.epoch == start_epoch:
        total = sampler.batch_size_at(pos, batch)
        sizes = sizes_fn(steps, total) if sizes_fn else equal_split(total, world)
        slices = sampler.slices(pos, sizes)
        assert [len(s) for s in slices] == sizes
        seen.append(np.concatenate(slices))
        pos = sampler.advance(pos, total)
        steps += 1
    return np.concatenate(seen), steps


@pytest.mark.parametrize("n, batch, world", [(1437, 64, 4), (100, 7, 3), (10, 64, 4), (5, 2, 4)])
def test_each_sample_once_per_epoch(n, batch, world):
    sampler = EpochSampler(n, seed=3)
    seen, steps = _epoch(sampler, batch, world)
    assert sorted(seen.tolist()) == list(range(n))
    assert steps == sampler.steps_per_epoch(batch) == -(-n // batch)


def test_uneven_sizes_from_a_scheduler_still_cover_the_epoch():
    sampler = EpochSampler(500, seed=1)
    rng = np.random.default_rng(9)

    def sizes(step, total):  # arbitrary per-rank split of the global batch, as a scheduler might choose
        cuts = np.sort(rng.integers(0, total + 1, size=2))
        return [int(cuts[0]), int(cuts[1] - cuts[0]), int(total - cuts[1])]
    seen, _ = _epoch(sampler, 64, 3, sizes_fn=sizes)
    assert sorted(seen.tolist()) == list(range(500))


def test_deterministic_and_epochs_differ():
    a, b = EpochSampler(300, seed=5), EpochSampler(300, seed=5)
    assert np.array_equal(a.permutation(0), b.permutation(0))
    assert not np.array_equal(a.permutation(0), a.permutation(1))
    assert not np.array_equal(a.permutation(0), EpochSampler(300, seed=6).permutation(0))


def test_resume_mid_epoch_gives_the_same_slices():
    full = EpochSampler(200, seed=2)
    pos, batches = Position(), []
    for _ in range(7):
        batches.append(full.slices(pos, equal_split(full.batch_size_at(pos, 32), 4)))
        pos = full.advance(pos, full.batch_size_at(pos, 32))
    resumed = EpochSampler(200, seed=2)  # a fresh process after a restart at step 4
    pos = Position(0, 4 * 32)
    for k in range(4, 7):
        got = resumed.slices(pos, equal_split(resumed.batch_size_at(pos, 32), 4))
        assert all(np.array_equal(g, w) for g, w in zip(got, batches[k]))
        pos = resumed.advance(pos, resumed.batch_size_at(pos, 32))
    assert pos == Position(1, 0)


def test_equal_split_and_bad_sizes():
    assert equal_split(10, 4) == [3, 3, 2, 2]
    assert equal_split(3, 4) == [1, 1, 1, 0]
    with pytest.raises(ValueError, match="do not fit"):
        EpochSampler(10, 0).slices(Position(0, 8), [2, 2])
    with pytest.raises(ValueError, match="empty"):
        EpochSampler(0, 0)
