"""The cost model's decision function (engine/cost_model.h): compression where the link is the bottleneck,
dense where it is not, and never a choice predicted slower than the dense path or dense fp16."""
import itertools

import pytest

from neptune_rt import _C

CODECS = ["fp16", "bf16", "int8", "int4", "onebit"]


def model(bandwidth_gbps: float, codec_gbps: float, alpha_us: float = 20.0) -> "_C.CostModel":
    cm = _C.CostModel()
    cm.alpha = alpha_us * 1e-6
    cm.beta = 1e-9 / bandwidth_gbps
    cm.reduce_sec_per_byte = 1e-9 / 5.0
    for codec in CODECS:
        cm.set_codec_speed(codec, 1e-9 / codec_gbps, 1e-9 / codec_gbps)
    return cm


def test_slow_link_compresses_large_buckets():
    cm = model(bandwidth_gbps=0.125, codec_gbps=5.0)  # 1 Gbit Ethernet, fast codecs
    count = 16 << 20
    assert cm.choose("int8", count, count * 4, 4) == "int8"
    assert cm.choose("auto", count, count * 4, 4) == "int8"
    assert cm.choose("onebit", count, count * 4, 4) == "onebit"


def test_fast_link_stays_dense():
    cm = model(bandwidth_gbps=50.0, codec_gbps=2.0)  # link much faster than the codecs
    count = 16 << 20
    for codec in CODECS + ["auto"]:
        assert cm.choose(codec, count, count * 4, 4) == "none", codec


def test_tiny_buckets_stay_dense():
    cm = model(bandwidth_gbps=0.125, codec_gbps=5.0, alpha_us=50)
    # A handful of values: latency dominates, and two-phase needs as many messages as the ring.
    assert cm.choose("int8", 16, 64, 4) == "none"


@pytest.mark.parametrize("bandwidth,codec_speed,n", list(itertools.product([0.01, 0.125, 1.0, 10.0], [0.5, 5.0, 50.0],
                                                                           [2, 4, 16])))
def test_choice_is_never_predicted_slower_than_dense_or_fp16(bandwidth, codec_speed, n):
    cm = model(bandwidth, codec_speed)
    for count in [1 << 10, 1 << 16, 1 << 22, 1 << 26]:
        for requested in ["int8", "int4", "onebit", "auto"]:
            chosen = cm.choose(requested, count, count * 4, n)
            predicted = cm.predict_dense(count * 4, n) if chosen == "none" else \
                cm.predict_compressed(chosen, count, n)
            assert predicted <= cm.predict_dense(count * 4, n) + 1e-12
            assert predicted <= cm.predict_compressed("fp16", count, n) + 1e-12
            assert chosen in ("none", "fp16", requested if requested != "auto" else "int8")
