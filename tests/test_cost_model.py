"""The cost model's decision function (engine/cost_model.h): compression where the link is the bottleneck,
dense where it is not, and never a choice predicted slower than the dense path or dense fp16. "auto" picks
among {fp16, int8}; "auto_lowbit" (what the PyTorch binding asks for under local momentum) among {fp16, int8,
int4, onebit}."""
import itertools

import pytest

from neptune_rt import _C

CODECS = ["fp16", "bf16", "int8", "int4", "onebit"]
RATIO = {"fp16": 0.5, "bf16": 0.5, "int8": 0.254, "int4": 0.129, "onebit": 0.035}


def model(bandwidth_gbps: float, codec_gbps: float, n: int = 4, alpha_us: float = 20.0) -> "_C.CostModel":
    """A model as the probe would measure it: the ring moves 2(n-1)/n bytes per buffer byte; a codec moves
    RATIO of that and costs about four passes of codec work per byte."""
    share = 2 * (n - 1) / n
    cm = _C.CostModel()
    cm.alpha = alpha_us * 1e-6
    cm.dense_sec_per_byte = share / (bandwidth_gbps * 1e9)
    for codec in CODECS:
        cm.set_codec_cost(codec, share * RATIO[codec] / (bandwidth_gbps * 1e9) + 4 / (codec_gbps * 1e9))
    return cm


def test_slow_link_compresses_large_buckets():
    cm = model(bandwidth_gbps=0.125, codec_gbps=5.0)  # 1 Gbit Ethernet, fast codecs
    count = 16 << 20
    assert cm.choose("int8", count, count * 4, 4) == "int8"
    assert cm.choose("auto", count, count * 4, 4) == "int8"
    assert cm.choose("onebit", count, count * 4, 4) == "onebit"


CANDIDATES = {"auto": ["fp16", "int8"], "auto_lowbit": ["fp16", "int8", "int4", "onebit"]}


def test_slow_link_auto_lowbit_takes_onebit_and_auto_never_does():
    count = 2 << 20  # the race MLP's 7.5 MB of gradients, about
    for gbps in (0.0125, 0.125):  # 100 Mbit and 1 Gbit per node, fast codecs
        cm = model(bandwidth_gbps=gbps, codec_gbps=5.0)
        assert cm.choose("auto_lowbit", count, count * 4, 4) == "onebit", gbps
        assert cm.choose("auto", count, count * 4, 4) == "int8", gbps


def test_auto_lowbit_picks_int4_where_onebit_codec_work_is_slow():
    # onebit's probed cost made slower than int4's: the choice follows the prediction, not the ratio.
    cm = model(bandwidth_gbps=0.125, codec_gbps=5.0)
    share = 2 * 3 / 4
    cm.set_codec_cost("onebit", share * RATIO["int4"] / 0.125e9 + 4 / 5e9 + 1e-9)
    count = 2 << 20
    assert cm.choose("auto_lowbit", count, count * 4, 4) == "int4"


def test_auto_lowbit_keeps_the_required_speedup_over_dense():
    cm = model(bandwidth_gbps=0.125, codec_gbps=5.0)
    count = 2 << 20
    dense = cm.predict_dense(count * 4, 4)
    for codec in CANDIDATES["auto_lowbit"]:  # every codec just short of the required margin: dense
        cm.set_codec_cost(codec, dense / _C.COMPRESSION_REQUIRED_SPEEDUP / (count * 4) * 1.01)
    assert cm.choose("auto_lowbit", count, count * 4, 4) == "none"
    cm.set_codec_cost("int4", dense / _C.COMPRESSION_REQUIRED_SPEEDUP / (count * 4) * 0.9)
    assert cm.choose("auto_lowbit", count, count * 4, 4) == "int4"


def test_decisions_are_deterministic_and_ties_go_to_the_earlier_candidate():
    cm = model(bandwidth_gbps=0.0125, codec_gbps=5.0)
    count = 2 << 20
    for codec in ("int8", "int4", "onebit"):  # an exact tie: the earlier in the candidate list wins
        cm.set_codec_cost(codec, 1e-11)
    first = cm.choose("auto_lowbit", count, count * 4, 4)
    assert first == "int8"
    assert all(cm.choose("auto_lowbit", count, count * 4, 4) == first for _ in range(100))


def test_fast_link_stays_dense():
    cm = model(bandwidth_gbps=50.0, codec_gbps=2.0)  # link much faster than the codecs
    count = 16 << 20
    for codec in CODECS + ["auto", "auto_lowbit"]:
        assert cm.choose(codec, count, count * 4, 4) == "none", codec


def test_tiny_buckets_stay_dense():
    cm = model(bandwidth_gbps=0.125, codec_gbps=5.0, alpha_us=50)
    # A handful of values: latency dominates, and two-phase needs as many messages as the ring.
    assert cm.choose("int8", 16, 64, 4) == "none"


def test_small_buckets_stay_dense_even_on_slow_links():
    cm = model(bandwidth_gbps=0.01, codec_gbps=50.0)
    assert cm.choose("int8", (64 << 10) // 4, 64 << 10, 4) == "none"
    assert cm.choose("int8", (1 << 20) // 4, 1 << 20, 4) == "int8"


def test_fp16_buffer_dense_path_counts_its_own_bytes():
    cm = model(bandwidth_gbps=0.125, codec_gbps=5.0)
    count = 16 << 20
    # An fp16 gradient's dense ring moves half the bytes: the fp16 codec cannot beat it, int8 still can.
    assert cm.choose("fp16", count, count * 2, 4) == "none"
    assert cm.choose("int8", count, count * 2, 4) == "int8"


@pytest.mark.parametrize("bandwidth,codec_speed,n", list(itertools.product([0.01, 0.125, 1.0, 10.0],
                                                                           [0.5, 5.0, 50.0], [2, 4, 16])))
def test_choice_is_the_fastest_and_clearly_beats_dense(bandwidth, codec_speed, n):
    cm = model(bandwidth, codec_speed, n)
    for count in [1 << 10, 1 << 16, 1 << 22, 1 << 26]:
        for requested in ["int8", "int4", "onebit", "auto", "auto_lowbit"]:
            chosen = cm.choose(requested, count, count * 4, n)
            if count * 4 < _C.MIN_COMPRESSED_BYTES:
                assert chosen == "none"  # below the threshold by rule
                continue
            dense = cm.predict_dense(count * 4, n)
            options = {c: cm.predict_compressed(c, count, n)
                       for c in CANDIDATES.get(requested, ["fp16", requested])}
            if chosen == "none":  # no candidate was clearly (by the required margin) faster than dense
                assert all(t * _C.COMPRESSION_REQUIRED_SPEEDUP >= dense for t in options.values())
            else:  # the fastest candidate, and clearly faster than dense
                assert options[chosen] == min(options.values())
                assert options[chosen] * _C.COMPRESSION_REQUIRED_SPEEDUP < dense
            assert chosen == "none" or chosen in options
