"""The trainer's reading of engine statistics, in-process: with `stats()` / `bucket_records()` present (shaped
as the engine documents them) the interval columns are counter deltas and each bucket's phases become
consecutive timeline events; without them the columns stay empty."""
import neptune_rt.engine as engine
from neptune_rt.train.monitor import Timeline, codec_label
from neptune_rt.train.telemetry import EngineTelemetry


def test_without_engine_stats(monkeypatch):
    monkeypatch.delattr(engine, "stats", raising=False)
    monkeypatch.delattr(engine, "bucket_records", raising=False)
    t = EngineTelemetry()
    assert not t.available and t.interval() == {}


def test_with_engine_stats(monkeypatch, tmp_path):
    counters = {"buckets": 0, "bytes_raw": 1000, "bytes_wire": 1000, "bytes_encoded": 1000, "encode_s": 0.5,
                "wire_s": 1.0, "decode_s": 0.25, "wait_s": 2.0, "codecs": {"none": 3}, "codec_bytes": {"none": 1000}}
    records = [[{"start": 0.0}], [{"start": 10.0, "codec": "int8", "tensors": 2, "bytes_raw": 4000,
                                   "bytes_wire": 1000, "encode_s": 0.1, "wire_s": 0.2, "decode_s": 0.05}]]
    monkeypatch.setattr(engine, "stats", lambda: dict(counters), raising=False)
    monkeypatch.setattr(engine, "bucket_records", lambda clear=True: records.pop(0), raising=False)
    t = EngineTelemetry()  # reads the baseline and drops the records of set-up
    # 8000 raw bytes went out as an int8 payload of 2000, which the ring sent 1.5 times (3000 on the wire): the
    # compression is the codec's 4x, not raw over wire.
    counters.update(bytes_raw=9000, bytes_wire=4000, bytes_encoded=3000, encode_s=0.75, wire_s=1.5, decode_s=0.5,
                    wait_s=2.5, codecs={"none": 3, "int8": 1}, codec_bytes={"none": 1000, "int8": 8000})
    got = t.interval()
    assert got["bytes_raw"] == 8000 and got["bytes_wire"] == 3000 and got["compression_ratio"] == 4.0
    assert got["codecs_used"] == {"int8": 8000}
    assert (got["encode_s"], got["wire_s"], got["decode_s"], got["engine_wait_s"]) == (0.25, 0.5, 0.25, 0.5)
    assert got["codecs"] == {"none": 3, "int8": 1}
    timeline = Timeline(tmp_path / "t.json", 0, origin=9.0)
    t.bucket_events(timeline, step=7)
    spans = [(e["name"], e["ts"], e["dur"], e["tid"], e["args"]["step"]) for e in timeline.events]
    assert spans == [("encode", 1e6, 1e5, 1, 7), ("wire", 1.1e6, 2e5, 1, 7), ("decode", 1.3e6, 5e4, 1, 7)]


def test_codec_label_names_the_codecs_that_carried_the_bytes():
    # The cost model may send a compressed bucket dense ("none"); evaluation's tiny dense all-reduces are not named.
    assert codec_label({"int8": 7_500_000, "none": 400}) == "int8"
    assert codec_label({"int8": 3_000, "none": 7_000}) == "none+int8"
    assert codec_label({}) == "-"


def test_final_summary_says_how_the_gradients_travelled():
    from neptune_rt.train.cli import gradients_summary
    forced = {"ranks": 2, "compression_ratio": 3.94, "codecs_used": {"int8": 7_000_000, "none": 300}}
    assert gradients_summary(forced, "int8") == "gradients sent as int8 (3.9x compression)\n"
    dense = {"ranks": 4, "compression_ratio": 1.0, "codecs_used": {"none": 7_000_000}}
    assert "the cost model found dense faster than --compression int8" in gradients_summary(dense, "int8")
    assert "cost model" not in gradients_summary(dense, "none")
    # fp16/bf16 are casts before the engine (which moves them as "none"): no cost model was asked.
    assert gradients_summary(dense, "bf16") == \
        "gradients sent as bf16 (cast before the engine: 2.0x compression of fp32)\n"
    assert gradients_summary({**dense, "ranks": 1}, "int8") == ""  # one rank: nothing travelled
    assert gradients_summary({"ranks": 2}, "int8") == ""  # an engine without statistics
