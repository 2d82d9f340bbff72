"""PlanSampler (the one sampler: the Trainer's and a hand-written loop's): per-rank slices are disjoint, cover the
data set exactly once per epoch with equal splits and while the sizes change every step, follow the plan, are
deterministic given the seed, and resume from state_dict mid-epoch (also on another world size). In-process."""
import numpy as np
import pytest

from neptune_rt.schedule.sampler import PlanSampler, equal_split


def run_epochs(n, world, seed, sizes_for_step, steps, start_states=None):
    samplers = [PlanSampler(n, r, world, seed=seed) for r in range(world)]
    if start_states:
        for s, st in zip(samplers, start_states):
            s.load_state_dict(st)
    out = []
    for step in range(steps):
        want = sizes_for_step(step)
        batches = [s.next(want) for s in samplers]
        assert len({b.local_batches for b in batches}) == 1, "ranks disagree on the sizes"
        out.append(batches)
    return out, samplers


def changing_sizes(step):
    rng = np.random.default_rng(step)
    return [int(v) for v in rng.integers(0, 9, size=3)] if step % 5 else [7, 1, 3]


def test_every_sample_once_per_epoch_with_changing_sizes():
    n = 97
    out, _ = run_epochs(n, 3, seed=5, sizes_for_step=lambda s: changing_sizes(s) if sum(changing_sizes(s))
                        else [1, 1, 1], steps=60)
    by_epoch = {}
    for batches in out:
        for r, b in enumerate(batches):
            assert len(b.indices) == b.local_batches[r]
            by_epoch.setdefault(b.epoch, []).append(b.indices)
    complete = [e for e in by_epoch if e < max(by_epoch)]
    assert complete, "the test should cover at least one full epoch"
    for e in complete:
        seen = np.concatenate(by_epoch[e])
        assert sorted(seen.tolist()) == list(range(n)), f"epoch {e}: not every sample exactly once"


def test_slices_follow_the_plan_and_are_disjoint():
    out, _ = run_epochs(1000, 4, seed=1, sizes_for_step=lambda s: [10, 20, 30, 40], steps=3)
    for batches in out:
        assert [len(b.indices) for b in batches] == [10, 20, 30, 40]
        allidx = np.concatenate([b.indices for b in batches])
        assert len(set(allidx.tolist())) == 100


def test_last_batch_shrinks_in_proportion():
    out, _ = run_epochs(110, 2, seed=0, sizes_for_step=lambda s: [75, 25], steps=2)
    assert out[1][0].local_batches == (8, 2)  # 10 samples left, split 3:1 with least makespan
    assert out[1][0].weight(0) == pytest.approx(0.8)


def test_deterministic_and_seed_dependent():
    a, _ = run_epochs(50, 2, 3, lambda s: [4, 6], 8)
    b, _ = run_epochs(50, 2, 3, lambda s: [4, 6], 8)
    c, _ = run_epochs(50, 2, 4, lambda s: [4, 6], 8)
    flat = lambda o: np.concatenate([x.indices for bs in o for x in bs]).tolist()  # noqa: E731
    assert flat(a) == flat(b)
    assert flat(a) != flat(c)


def test_resume_mid_epoch():
    full, _ = run_epochs(61, 3, 9, changing_sizes, 30)
    first, samplers = run_epochs(61, 3, 9, changing_sizes, 13)
    states = [s.state_dict() for s in samplers]
    rest, _ = run_epochs(61, 3, 9, lambda s: changing_sizes(s + 13), 17, start_states=states)
    for x, y in zip(full[13:], rest):
        for bx, by in zip(x, y):
            assert bx.epoch == by.epoch and bx.indices.tolist() == by.indices.tolist()


def test_bad_sizes_are_rejected():
    s = PlanSampler(10, 0, 2)
    with pytest.raises(ValueError, match="rank 0"):
        s.next([1, 2, 3])


@pytest.mark.parametrize("n, batch, world", [(1437, 64, 4), (100, 7, 3), (10, 64, 4), (5, 2, 4)])
def test_equal_splits_cover_each_epoch_once(n, batch, world):
    samplers = [PlanSampler(n, r, world, seed=3) for r in range(world)]
    for epoch in range(2):
        seen, steps = [], 0
        while steps == 0 or not samplers[0].epoch_done:  # the next epoch starts at the next call
            batches = [s.next(equal_split(batch, world)) for s in samplers]
            assert all(b.epoch == epoch for b in batches)
            seen += [i for b in batches for i in b.indices.tolist()]
            steps += 1
        assert sorted(seen) == list(range(n)) and steps == -(-n // batch)


def test_resume_on_another_world_size_continues_the_epoch():
    """A checkpoint of 4 ranks resumed on 3: the data position carries over, the epoch is still covered once."""
    old = [PlanSampler(200, r, 4, seed=2) for r in range(4)]
    seen = []
    for _ in range(3):
        seen += [i for s in old for i in s.next(equal_split(32, 4)).indices.tolist()]
    new = [PlanSampler(200, r, 3, seed=2) for r in range(3)]
    for s in new:
        s.load_state_dict(old[0].state_dict())
    while not new[0].epoch_done:
        seen += [i for s in new for i in s.next(equal_split(32, 3)).indices.tolist()]
    assert sorted(seen) == list(range(200))


def test_equal_split_and_bad_input():
    assert equal_split(10, 4) == [3, 3, 2, 2]
    assert equal_split(3, 4) == [1, 1, 1, 0]
    with pytest.raises(ValueError, match="cannot split"):
        equal_split(5, 0)
    with pytest.raises(ValueError, match="dataset_size must be >= 1"):
        PlanSampler(0, 0, 1)
    with pytest.raises(ValueError, match="rank 0: checkpoint is for 10 samples"):
        PlanSampler(11, 0, 1).load_state_dict(PlanSampler(10, 0, 1).state_dict())
