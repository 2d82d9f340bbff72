"""Water-filling against brute force: on random small synthetic costs, integer_split's makespan equals the
least makespan over every integer split within bounds; the continuous split levels the unclipped ranks."""
import itertools
import random

import pytest

from neptune_rt.schedule.waterfill import continuous_split, integer_split, makespan


def brute_force(a, c, total, lo, hi):
    best = None
    for split in itertools.product(*[range(l, h + 1) for l, h in zip(lo, hi)]):
        if sum(split) == total:
            t = makespan(a, c, split)
            best = t if best is None else min(best, t)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_integer_split_is_optimal(seed):
    rng = random.Random(seed)
    n = rng.choice([2, 3, 4])
    a = [rng.choice([0.0, rng.uniform(0, 5)]) for _ in range(n)]
    c = [rng.choice([1.0, 2.0, 4.0, rng.uniform(0.2, 5)]) for _ in range(n)]
    lo = [rng.choice([0, 1, 2]) for _ in range(n)]
    hi = [l + rng.randint(3, 12 if n == 4 else 25) for l in lo]
    total = rng.randint(sum(lo), sum(hi))
    split = integer_split(a, c, total, lo, hi)
    assert sum(split) == total
    assert all(l <= b <= h for b, l, h in zip(split, lo, hi))
    assert makespan(a, c, split) == pytest.approx(brute_force(a, c, total, lo, hi), rel=1e-12, abs=1e-12)


def test_profile_1124_levels_the_ranks():
    # slowdowns [1,1,2,4]: per-sample costs 1,1,2,4 -> shares proportional to 1/c: 8:8:4:2 of 256
    x, level = continuous_split([0.0] * 4, [1.0, 1.0, 2.0, 4.0], 256, [1] * 4, [10**6] * 4)
    assert x == pytest.approx([256 * 4 / 11, 256 * 4 / 11, 256 * 2 / 11, 256 / 11], rel=1e-9)
    assert level == pytest.approx(256 * 4 / 11, rel=1e-9)
    split = integer_split([0.0] * 4, [1.0, 1.0, 2.0, 4.0], 256, [1] * 4, [10**6] * 4)
    assert sum(split) == 256 and makespan([0.0] * 4, [1.0, 1.0, 2.0, 4.0], split) <= 94


def test_clipping_and_intercepts():
    # rank 0 is capped at 10; the rest share the remainder so that a_i + c_i b_i agree
    x, level = continuous_split([0.0, 2.0, 0.0], [0.1, 1.0, 1.0], 50, [1, 1, 1], [10, 100, 100])
    assert x[0] == 10
    assert x[1] + 2.0 == pytest.approx(x[2], rel=1e-9) and sum(x) == pytest.approx(50)


def test_bad_bounds_name_the_rank():
    with pytest.raises(ValueError, match="rank 1"):
        integer_split([0, 0], [1, 0], 4, [1, 1], [4, 4])
    with pytest.raises(ValueError, match="outside"):
        integer_split([0, 0], [1, 1], 20, [1, 1], [4, 4])
