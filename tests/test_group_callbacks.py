"""A grouped submission's completion callback (HandleGroup::addCallback) on handles completed by hand, in every
order, without MPI: it runs once, once every member is done. The engine completes a group's members in one cycle,
so the MPI tests only see the in-order case; the countdown for members still pending when the last one completes
is tested here."""
import itertools

import pytest

_C = pytest.importorskip("neptune_rt._C")


def completed_in(order: tuple[int, ...], register_after: int = 0) -> list[int]:
    """Completes members in `order`, registering the callback after the first `register_after` of them; returns
    after which completion (its position in `order`) the callback ran, once per run."""
    group = _C._test_handle_group(len(order))
    runs: list[int] = []
    done = 0

    def callback() -> None:
        assert group.done(), f"callback ran with members pending (order {order})"
        runs.append(done)

    for position, index in enumerate(order):
        if position == register_after:
            group.add_callback(callback)
        _C._test_complete(group, index)
        done = position + 1
    if register_after >= len(order):
        group.add_callback(callback)  # all done already: at once
    return runs


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_group_callback_runs_once_after_the_last_member_whatever_the_order(order):
    assert completed_in(order) == [len(order) - 1], order  # ran during the last completion, once


@pytest.mark.parametrize("register_after", [1, 2, 3, 4])
def test_group_callback_registered_after_some_members_completed(register_after):
    for order in [(0, 1, 2, 3), (3, 2, 1, 0), (3, 0, 2, 1)]:
        want = [len(order)] if register_after == len(order) else [len(order) - 1]
        assert completed_in(order, register_after) == want, (order, register_after)


def test_group_callback_of_one_member():
    assert completed_in((0,)) == [0]
