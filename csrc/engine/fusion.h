// Fusion: which negotiated all-reduces travel together. Deterministic (same input order on every rank, same
// buckets). Grouped tensors (TensorMeta::group, submitted together by Engine::enqueueGroup) form one bucket
// per group, members in submission order, once the whole group is ready everywhere; until then they wait.
// So a grouped bucket's composition depends only on what the caller submitted, never on arrival timing, and
// compressed results are bit-reproducible. Ungrouped tensors join the open bucket of their (dtype, op,
// codec) in the negotiated order until it would pass the threshold: their composition depends on which
// tensors happened to be ready in the same cycle. Exercised by tests/test_engine.py ("groups", "stats").
#pragma once

#include <vector>

#include "engine/matching.h"

namespace nrt {

// The buckets to run now; members of groups not yet complete in `tensors` are left out (they stay pending).
std::vector<std::vector<const ReadyTensor*>> planBuckets(const std::vector<const ReadyTensor*>& tensors,
                                                         size_t fusionBytes);

}  // namespace nrt
