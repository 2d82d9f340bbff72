"""BatchScheduler on synthetic ranks (timings from known linear models plus noise): converges to the
brute-force-optimal split, does not flap, re-balances within 20 steps of a slowdown, accumulates when a share
passes a rank's micro-batch limit, backs off after an OOM, picks the goodput-optimal global batch only for a
> 5% gain, and round-trips its state through a (JSON) checkpoint."""
import json
import math

import numpy as np
import pytest

from neptune_rt.schedule import BatchScheduler, Plan, integer_split, makespan, stats_row


def rows_for(plan: Plan, slow, rng, a=0.002, c=0.001, noise=0.02, norms=None):
    rows = []
    for r, b in enumerate(plan.local_batches):
        t = (a + c * slow[r] * b) * (1 + noise * rng.standard_normal())
        local, avg = norms(plan, r) if norms else (-1.0, -1.0)
        rows.append(stats_row(b, t, local, avg, step_s=t + 0.001))
    step = max(r[1] for r in rows) + 0.001
    for r in rows:
        r[4] = step
    return rows


def ideal(slow, B, a=0.002, c=0.001):
    cs = [c * s for s in slow]
    split = integer_split([a] * len(slow), cs, B, [1] * len(slow), [10**6] * len(slow))
    return makespan([a] * len(slow), cs, split)


def test_converges_to_optimal_split_without_flapping():
    rng = np.random.default_rng(0)
    slow = [1, 1, 2, 4]
    s = BatchScheduler(4, 256)
    for _ in range(60):
        s.observe(rows_for(s.plan, slow, rng))
    got = makespan([0.002] * 4, [0.001 * x for x in slow], s.plan.local_batches)
    assert got <= 1.05 * ideal(slow, 256)
    changes = len(s.history)
    for _ in range(60):
        s.observe(rows_for(s.plan, slow, rng))
    assert len(s.history) - changes <= 1, "plan flaps under 2% timing noise"
    assert sum(s.plan.local_batches) == 256 and s.plan.weight(0) == s.plan.local_batches[0] / 256


def test_rebalances_within_20_steps_of_a_slowdown():
    rng = np.random.default_rng(1)
    s = BatchScheduler(4, 256)
    for _ in range(30):
        s.observe(rows_for(s.plan, [1, 1, 1, 1], rng))
    assert s.plan.local_batches == (64, 64, 64, 64)
    slow = [1, 1, 1, 4]
    for _ in range(20):
        s.observe(rows_for(s.plan, slow, rng))
    got = makespan([0.002] * 4, [0.001 * x for x in slow], s.plan.local_batches)
    assert got <= 1.10 * ideal(slow, 256), s.plan.describe()


def test_accumulation_when_share_exceeds_micro_batch():
    rng = np.random.default_rng(2)
    s = BatchScheduler(2, 200, max_micro=[40, 200])
    for _ in range(30):
        s.observe(rows_for(s.plan, [1, 3], rng))
    b0 = s.plan.local_batches[0]
    assert b0 > 120 and s.plan.accum_steps[0] == -(-b0 // 40) and s.plan.accum_steps[1] == 1
    assert sum(s.plan.micro_batches(0)) == b0 and max(s.plan.micro_batches(0)) <= 40


def test_oom_backs_off_that_rank_only():
    s = BatchScheduler(3, 96, max_micro=64)
    rows = [stats_row(32, 0.03), stats_row(32, 0.03, oom=True), stats_row(32, 0.03)]
    plan = s.observe(rows)
    assert plan.max_micro == (64, 24, 64)
    assert plan.local_batches == (32, 32, 32) and plan.accum_steps == (1, 2, 1)


def test_oom_backs_off_from_the_reported_micro_batch_and_says_so_in_the_plan():
    # Rows that come a step late (the Trainer's StatsPipe) carry the size that failed: the plan in force when they
    # are observed may differ from the one the rank ran.
    s = BatchScheduler(3, 96, max_micro=64)
    plan = s.observe([stats_row(32, 0.03), stats_row(32, 0.03, oom=20), stats_row(32, 0.03)])
    assert plan.max_micro == (64, 15, 64) and plan.accum_steps == (1, 3, 1)
    assert plan.reason == "out of memory (rank 1 at 20): max micro-batch 64/15/64"


def test_an_oom_reported_at_one_sample_is_not_read_as_the_plans_micro_batch():
    # oom=True means "the plan's micro-batch" (-1 in the row); a size of 1 means 1, whatever the plan says then.
    assert stats_row(8, 0.01, oom=True)[-1] == -1.0 and stats_row(8, 0.01, oom=1)[-1] == 1.0
    s = BatchScheduler(2, 64, max_micro=32)
    with pytest.raises(RuntimeError, match="rank 1 ran out of memory at a micro-batch of 1"):
        s.observe([stats_row(32, 0.03), stats_row(32, 0.03, oom=1)])
    s = BatchScheduler(2, 64, max_micro=32)
    assert s.observe([stats_row(32, 0.03), stats_row(32, 0.03, oom=True)]).max_micro == (32, 24)


def test_a_non_finite_time_is_refused_naming_the_rank_and_column():
    # A NaN kept in the time model would make every later comparison false: the split re-planned every step.
    s = BatchScheduler(2, 64)
    with pytest.raises(ValueError, match="rank 1's statistics row has compute_s = nan"):
        s.observe([stats_row(32, 0.03), stats_row(32, float("nan"))])
    s.observe([stats_row(32, 0.03, float("inf"), 1.0), stats_row(32, 0.03, 1.0, 1.0)])  # norms may overflow


def test_a_step_where_one_rank_has_samples_skips_the_noise_scale():
    # A short last batch of 1 sample on 2 ranks: the estimate needs two ranks with samples, the step goes on.
    s = BatchScheduler(2, 64, adaptive_batch=True, batch_bounds=(2, 256))
    s.observe([stats_row(1, 0.01, 2.0, 2.0), stats_row(0, 0.001, 0.0, 2.0)])
    assert s.noise.count == 0


def test_oom_at_a_micro_batch_of_one_fails_instead_of_skipping_every_step():
    # 3/4 of 1 is 1 again: the plan would stay as it was and the rank would run out of memory at every step.
    s = BatchScheduler(2, 4, max_micro=1)
    with pytest.raises(RuntimeError, match="rank 1 ran out of memory at a micro-batch of 1"):
        s.observe([stats_row(2, 0.03), stats_row(2, 0.03, oom=True)])
    # A rank with no samples that reports running out of memory (its optimizer step, say) ran no micro-batch: its
    # limit stays, every rank skips the step, nothing is raised.
    s = BatchScheduler(2, 4, max_micro=1)
    assert s.observe([stats_row(4, 0.03), stats_row(0, 0.0, oom=True)]).max_micro == (1, 1)


def noise_norms(phi, g2=1.0):
    # exact expectations of the squared norms for noise scale phi (S = phi * g2)
    def norms(plan, r):
        S = phi * g2
        return g2 + S / plan.local_batches[r], g2 + S / plan.global_batch
    return norms


def test_goodput_picks_the_best_batch_and_needs_a_5_percent_gain():
    rng = np.random.default_rng(3)
    s = BatchScheduler(4, 64, adaptive_batch=True, batch_bounds=(32, 4096), noise_warmup=5, goodput_interval=5)
    phi = 2000.0
    for _ in range(80):
        s.observe(rows_for(s.plan, [1, 1, 1, 1], rng, a=0.02, c=0.0001, noise=0.0, norms=noise_norms(phi)))
    B = s.plan.global_batch
    # reference: goodput over every candidate size with the true time model
    def goodput(b):
        per = integer_split([0.02] * 4, [0.0001] * 4, b, [1] * 4, [10**6] * 4)
        return b / (makespan([0.02] * 4, [0.0001] * 4, per) + 0.001) * (phi + 64) / (phi + b)
    best = max(goodput(b) for b in range(32, 4097, 8))
    assert B > 64 and goodput(B) >= 0.93 * best, (B, goodput(B), best)
    assert s.plan.lr_scale == pytest.approx(B / 64 * (phi + 64) / (phi + B), rel=0.05)
    # a small gain is not enough to move
    before = len(s.history)
    for _ in range(30):
        s.observe(rows_for(s.plan, [1, 1, 1, 1], rng, a=0.02, c=0.0001, noise=0.0, norms=noise_norms(phi)))
    assert len(s.history) == before


def test_goodput_explores_again_after_a_load_burst_spoils_the_first_exploration():
    # Ranks with a real per-step cost (a = 20 ms) gain from larger batches. A 3x load burst during the first
    # exploration (B=128, steps 12-17) reset the time models and left their intercept at 0: every batch then
    # looked equally fast per sample, and with one exploration per run the scheduler stayed at B0 = 64 for good.
    rng = np.random.default_rng(5)
    s = BatchScheduler(4, 64, adaptive_batch=True, base_batch=64, batch_bounds=(64, 4096))
    phi = 300.0
    trace = []
    for step in range(150):
        slow = [3.0] * 4 if 12 <= step < 18 else [1.0] * 4
        rows = rows_for(s.plan, [1, 1, 1, 1], rng, a=0.02, c=0.0001, noise=0.02, norms=noise_norms(phi))
        for row in rows:  # the burst slows the whole step (a and c alike)
            row[1] *= slow[0]
            row[4] *= slow[0]
        s.observe(rows)
        trace.append(s.plan.global_batch)
    assert trace[11] == 128, trace[:20]  # the first exploration, hit by the burst
    assert trace[25] == 64, trace[:30]   # ... sent the scheduler back to B0
    assert min(trace[120:]) >= 256, trace[::10]  # a later exploration found the larger batches again
    explorations = [p for p in s.history if p.reason.startswith("explore")]
    assert 2 <= len(explorations) <= 3, [p.reason for p in s.history]


def test_goodput_does_not_explore_again_once_the_intercept_is_known():
    rng = np.random.default_rng(6)
    s = BatchScheduler(4, 64, adaptive_batch=True, base_batch=64, batch_bounds=(64, 4096))
    for _ in range(300):
        s.observe(rows_for(s.plan, [1, 1, 1, 1], rng, a=0.02, c=0.0001, noise=0.02, norms=noise_norms(300.0)))
    assert [p.reason for p in s.history].count("explore throughput at B=128") == 1
    assert not any(p.reason.startswith("explore") for p in s.history[2:]), [p.reason for p in s.history]


def test_goodput_explorations_back_off_while_no_intercept_can_be_learned():
    # Time proportional to the batch (a = 0): no exploration finds a positive intercept, and the fit keeps falling
    # back to a line through 0. Explorations then come ever more rarely (the gap doubles) instead of every 3
    # goodput intervals for the whole run.
    rng = np.random.default_rng(7)
    s = BatchScheduler(4, 64, adaptive_batch=True, base_batch=64, batch_bounds=(64, 4096))
    for _ in range(400):
        s.observe(rows_for(s.plan, [1, 1, 1, 1], rng, a=0.0, c=0.0001, noise=0.02, norms=noise_norms(300.0)))
    steps = [p.step for p in s.history if p.reason.startswith("explore")]
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert 2 <= len(steps) <= 5, steps
    assert all(later >= 1.5 * earlier for earlier, later in zip(gaps, gaps[1:])), steps


def test_checkpoint_from_before_re_exploration_loads():
    rng = np.random.default_rng(8)
    kw = dict(adaptive_batch=True, base_batch=64, batch_bounds=(64, 4096))
    s = BatchScheduler(4, 64, **kw)
    for _ in range(25):
        s.observe(rows_for(s.plan, [1, 1, 1, 1], rng, a=0.02, c=0.0001, norms=noise_norms(300.0)))
    state = json.loads(json.dumps(s.state_dict()))
    assert state["explored"] is True  # what earlier code reads
    legacy = {k: v for k, v in state.items() if k not in ("explored_at", "explore_streak")}
    t = BatchScheduler(4, 64, **kw)
    t.load_state_dict(legacy)
    assert t.plan == s.plan
    # It goes on with the same plans as the original.
    for _ in range(20):
        rows = rows_for(s.plan, [1, 1, 1, 1], rng, a=0.02, c=0.0001, norms=noise_norms(300.0))
        assert s.observe(rows).digest() == t.observe(rows).digest()


def test_state_round_trip_through_a_checkpoint():
    rng = np.random.default_rng(4)
    kw = dict(adaptive_batch=True, batch_bounds=(64, 1024), noise_warmup=3, goodput_interval=4)
    s = BatchScheduler(3, 128, **kw)
    for _ in range(25):
        s.observe(rows_for(s.plan, [1, 2, 3], rng, norms=noise_norms(300.0)))
    saved = json.loads(json.dumps(s.state_dict()))
    t = BatchScheduler(3, 128, **kw)
    t.load_state_dict(saved)
    assert t.plan == s.plan
    for _ in range(25):
        rows = rows_for(s.plan, [1, 2, 3], rng, norms=noise_norms(300.0))
        assert s.observe(rows).digest() == t.observe(rows).digest()
    with pytest.raises(ValueError, match="3 ranks"):
        BatchScheduler(4, 128).load_state_dict(saved)


def test_resumed_plans_go_on_numbering_after_the_32_plans_a_checkpoint_keeps():
    # A checkpoint keeps the last 32 plans of the history; versions (and so digests, which the trainer checks on
    # every rank and logs) must continue from the plan in force, as in the run that was not interrupted.
    s = BatchScheduler(2, 64)
    for k in range(40):
        s.set_max_micro([8 + k % 2, 8])  # each call adopts a plan ("memory limits")
    assert s.plan.version == 40
    t = BatchScheduler(2, 64)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert len(t.history) == 32
    for sched in (s, t):
        sched.set_max_micro([16, 16])
    assert t.plan.version == s.plan.version == 41 and t.plan.digest() == s.plan.digest()


def test_first_step_at_a_new_global_batch_is_not_timed():
    # The step right after the global batch changes runs new shapes (allocator, caches): a 10x slower first step
    # there must not reach the time models that judge the new batch.
    rng = np.random.default_rng(5)
    s = BatchScheduler(4, 64, adaptive_batch=True, batch_bounds=(64, 4096), noise_warmup=5, goodput_interval=5)
    while s.plan.global_batch == 64:
        s.observe(rows_for(s.plan, [1, 1, 1, 1], rng, a=0.02, c=0.0001, noise=0.0, norms=noise_norms(2000.0)))
    before = [(m.a, m.c, m.count) for m in s.models]
    spike = rows_for(s.plan, [1, 1, 1, 1], rng, a=0.2, c=0.001, noise=0.0, norms=noise_norms(2000.0))
    s.observe(spike)
    assert [(m.a, m.c, m.count) for m in s.models] == before
    s.observe(rows_for(s.plan, [1, 1, 1, 1], rng, a=0.02, c=0.0001, noise=0.0, norms=noise_norms(2000.0)))
    assert all(m.count == b[2] + 1 for m, b in zip(s.models, before))


def test_skipping_replans_below_the_bound_changes_no_decision(monkeypatch):
    # The cheap lower bound on any split's makespan lets observe() skip water-filling when no split can beat
    # the current one by the hysteresis; the plans must be exactly those of the scheduler without the skip.
    def run(skip: bool):
        if not skip:
            monkeypatch.setattr(BatchScheduler, "_split_bound", lambda self, B: 0.0)
        rng = np.random.default_rng(6)
        s = BatchScheduler(4, 256)
        for step in range(150):
            slow = [1, 1, 1, 1] if step < 60 else [1, 1, 3, 1]
            s.observe(rows_for(s.plan, slow, rng, noise=0.05))
        monkeypatch.undo()
        return [p.digest() for p in s.history]
    with_skip, without = run(True), run(False)
    assert with_skip == without and len(with_skip) > 2


def test_split_bound_is_a_lower_bound_of_every_split():
    rng = np.random.default_rng(8)
    for _ in range(200):
        s = BatchScheduler(4, 97)
        for m in s.models:
            m.observe(10, float(rng.uniform(0.01, 0.2)))
            m.observe(30, float(rng.uniform(0.25, 0.9)))
        a, c = s._coeffs()
        best = makespan(a, c, integer_split(a, c, 97, [1] * 4, [10**6] * 4))
        assert s._split_bound(97) <= best + 1e-12


def test_fixed_batch_with_adascale_follows_the_measured_noise_scale():
    # A fixed B = 1024 with the lr tuned at B0 = 64: AdaScale's lr multiplier is the gain at the current noise
    # scale, every step (not frozen when the plan was made).
    rng = np.random.default_rng(9)
    s = BatchScheduler(4, 1024, base_batch=64)
    for phi in (100.0, 1000.0):
        for _ in range(150):
            s.observe(rows_for(s.plan, [1, 1, 1, 1], rng, noise=0.0, norms=noise_norms(phi)))
        gain = (phi + 64) * 1024 / ((phi + 1024) * 64)
        assert s.lr_scale == pytest.approx(gain, rel=0.02), (phi, s.lr_scale, gain)
    assert s.plan.global_batch == 1024 and len(s.history) == 1
    assert BatchScheduler(4, 1024, base_batch=64, lr_rule="sqrt").lr_scale == 4.0
    assert BatchScheduler(4, 256).lr_scale == 1.0


def test_goodput_with_the_sqrt_rule_maximises_the_sqrt_rule_efficiency():
    # Under the sqrt rule a large batch gets less than the AdaScale lr, so it is worth less: the scheduler must
    # use the efficiency of the rule it applies, (s/k)(2 - s/r), and pick a smaller batch than with AdaScale.
    rng = np.random.default_rng(10)
    phi, picks = 2000.0, {}
    for rule in ("adascale", "sqrt"):
        s = BatchScheduler(4, 64, adaptive_batch=True, batch_bounds=(64, 4096), noise_warmup=5, goodput_interval=5,
                           lr_rule=rule)
        for _ in range(80):
            s.observe(rows_for(s.plan, [1, 1, 1, 1], rng, a=0.02, c=0.0001, noise=0.0, norms=noise_norms(phi)))
        picks[rule] = s.plan.global_batch

    def goodput(b, rule):
        per = integer_split([0.02] * 4, [0.0001] * 4, b, [1] * 4, [10**6] * 4)
        k, r = b / 64, (phi + 64) * b / ((phi + b) * 64)
        sc = r if rule == "adascale" else math.sqrt(k)
        return b / (makespan([0.02] * 4, [0.0001] * 4, per) + 0.001) * sc / k * (2 - sc / r)
    for rule, B in picks.items():
        best = max(goodput(b, rule) for b in range(64, 4097, 8))
        assert goodput(B, rule) >= 0.93 * best, (rule, B, goodput(B, rule), best)
    assert picks["sqrt"] < picks["adascale"], picks


def test_goodput_under_momentum_maximises_the_critical_batch_efficiency():
    # Under heavy-ball momentum m the efficiency uses the critical batch phi / (1 - m): at phi = 200 momentum 0.9
    # must pick a larger batch than plain SGD, each the best under its own model, with the same AdaScale lr rule.
    rng = np.random.default_rng(11)
    phi, picks = 200.0, {}
    for m in (0.0, 0.9):
        s = BatchScheduler(4, 64, adaptive_batch=True, batch_bounds=(64, 4096), noise_warmup=5, goodput_interval=5,
                           momentum=m)
        for _ in range(80):
            s.observe(rows_for(s.plan, [1, 1, 1, 1], rng, a=0.02, c=0.0001, noise=0.0, norms=noise_norms(phi)))
        picks[m] = s.plan.global_batch
        B = picks[m]
        assert s.plan.lr_scale == pytest.approx(B / 64 * (phi + 64) / (phi + B), rel=0.05), (m, s.plan)

    def goodput(b, m):
        per = integer_split([0.02] * 4, [0.0001] * 4, b, [1] * 4, [10**6] * 4)
        crit = phi / (1 - m)
        return b / (makespan([0.02] * 4, [0.0001] * 4, per) + 0.001) * (crit + 64) / (crit + b)
    for m, B in picks.items():
        best = max(goodput(b, m) for b in range(64, 4097, 8))
        assert goodput(B, m) >= 0.93 * best, (m, B, goodput(B, m), best)
    assert picks[0.9] > 2 * picks[0.0], picks
    with pytest.raises(ValueError, match="momentum"):
        BatchScheduler(4, 64, momentum=1.0)


def test_one_slow_first_step_does_not_resplit_identical_ranks():
    # On identical ranks the first timed step had one rank 30% slow (a busy machine): a single step cannot tell
    # a slow rank from noise, so the equal split stays.
    rng = np.random.default_rng(11)
    s = BatchScheduler(4, 256, warmup_steps=2)
    for step in range(40):
        slow = [1.3, 1, 1, 1] if step == 2 else [1, 1, 1, 1]
        s.observe(rows_for(s.plan, slow, rng, noise=0.005))
    assert len(s.history) == 1 and s.plan.local_batches == (64, 64, 64, 64), s.plan.describe()


def test_the_oom_column_takes_flags_of_any_kind_and_refuses_anything_else():
    import torch
    for flag in (True, np.True_, torch.tensor(True)):
        assert stats_row(8, 0.01, oom=flag)[-1] == -1.0, flag
    for none in (False, np.False_, torch.tensor(False), 0):
        assert stats_row(8, 0.01, oom=none)[-1] == 0.0, none
    s = BatchScheduler(2, 64)
    for bad in (float("nan"), 2.5, -3.0):
        with pytest.raises(ValueError, match=f"rank 1's statistics row has oom = {bad}"):
            s.observe([stats_row(32, 0.03), stats_row(32, 0.03, oom=bad)])
