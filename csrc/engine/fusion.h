// Fusion: which negotiated all-reduces travel together. Deterministic (same input order on every rank,
// same buckets): tensors join the open bucket of their (dtype, op, codec) until it would pass the threshold.
#pragma once

#include <vector>

#include "engine/matching.h"

namespace nrt {

std::vector<std::vector<const ReadyTensor*>> planBuckets(const std::vector<const ReadyTensor*>& tensors,
                                                         size_t fusionBytes);

}  // namespace nrt
