// The engine's statistics as Python objects: stats() totals and bucket_records() rows (their keys are documented in
// neptune_rt/engine.py). Exercised by tests/test_engine_stats.py.
#include "bindings/bindings.h"
#include "codecs/codec.h"

namespace py = pybind11;

namespace nrt {

py::dict engineStatsDict(const EngineStats::Totals& t) {
  py::dict codecs, codecBytes;
  for (Codec c : allCodecs()) {
    const int i = static_cast<int>(c);
    if (t.codecBuckets[i]) codecs[codecName(c)] = t.codecBuckets[i];
    if (t.codecBytesRaw[i]) codecBytes[codecName(c)] = t.codecBytesRaw[i];
  }
  py::dict d;
  d["buckets"] = t.buckets;
  d["tensors"] = t.tensors;
  d["bytes_raw"] = t.bytesRaw;
  d["bytes_wire"] = t.bytesWire;
  d["bytes_encoded"] = t.bytesEncoded;
  d["negotiate_s"] = t.negotiateSeconds;
  d["encode_s"] = t.encodeSeconds;
  d["wire_s"] = t.wireSeconds;
  d["decode_s"] = t.decodeSeconds;
  d["wait_s"] = t.waitSeconds;
  d["codecs"] = codecs;
  d["codec_bytes"] = codecBytes;
  d["cycles"] = t.cycles;
  d["handoffs"] = t.handoffs;
  d["submit_wakeups"] = t.submitWakeups;
  d["caller_driven"] = t.callerDriven;
  d["build_s"] = t.buildSeconds;
  d["exchange_s"] = t.exchangeSeconds;
  d["match_s"] = t.matchSeconds;
  d["execute_s"] = t.executeSeconds;
  d["cache_hits"] = t.cacheHits;
  d["cache_misses"] = t.cacheMisses;
  d["cache_invalidations"] = t.cacheInvalidations;
  d["cache_evictions"] = t.cacheEvictions;
  return d;
}

py::list bucketRecordList(const std::vector<BucketRecord>& records) {
  py::list out;
  for (const BucketRecord& r : records) {
    py::dict d;
    d["start"] = r.start;
    d["codec"] = r.codec;
    d["tensors"] = r.tensors;
    d["bytes_raw"] = r.bytesRaw;
    d["bytes_wire"] = r.bytesWire;
    d["bytes_encoded"] = r.bytesEncoded;
    d["encode_s"] = r.encodeSeconds;
    d["wire_s"] = r.wireSeconds;
    d["decode_s"] = r.decodeSeconds;
    d["algorithm"] = r.algorithm;
    d["packed"] = r.packed;
    out.append(d);
  }
  return out;
}

}  // namespace nrt
