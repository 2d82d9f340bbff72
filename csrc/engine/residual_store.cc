// The engine's error-feedback state (see residual_store.h): host memory, one entry per tensor name.
#include "engine/residual_store.h"

#include <algorithm>
#include <iostream>

namespace nrt {

ResidualStore::Residual* ResidualStore::lookup(const std::string& name, uint8_t codec, size_t count) {
  auto it = byName_.find(name);
  if (it == byName_.end()) return nullptr;
  Residual& r = it->second;
  if (r.codec != codec) {  // another codec: its error is not this codec's to send; one residual per name
    byName_.erase(it);
    return nullptr;
  }
  if (r.own.size() != count) {
    if (warned_.insert(name).second)
      std::cerr << "neptune_rt: warning: rank " << rank_ << ": discarding the " << (r.imported ? "imported " : "")
                << "error-feedback residual of tensor '" << name << "': it has " << r.own.size()
                << " values, the tensor now has " << count << " (error feedback restarts from zero)" << std::endl;
    byName_.erase(it);
    return nullptr;
  }
  return &r;
}

float* ResidualStore::find(const std::string& name, uint8_t codec, size_t count) {
  Residual* r = lookup(name, codec, count);
  return r ? r->own.data() : nullptr;
}

float* ResidualStore::acquire(const std::string& name, uint8_t codec, size_t count) {
  if (Residual* r = lookup(name, codec, count)) return r->own.data();
  Residual& r = byName_[name];
  r.codec = codec;
  r.own.assign(count, 0.0f);
  return r.own.data();
}

float* ResidualStore::reduced(const std::string& name, size_t offset, size_t len, float* spill) {
  Residual& r = byName_.at(name);
  const size_t oldOffset = r.reducedOffset, oldLen = r.reduced.size();
  if (oldOffset == offset && oldLen == len) return len ? r.reduced.data() : nullptr;
  std::vector<float> moved(len, 0.0f);
  for (size_t i = 0; i < oldLen; ++i) {
    const size_t element = oldOffset + i;
    const float v = r.reduced[i];
    if (element >= offset && element < offset + len) {
      moved[element - offset] = v;
    } else if (v != 0.0f) {  // skipping zeros keeps the sign of a zero slot (and the arithmetic) unchanged
      spill[element] += v;
    }
  }
  r.reduced.swap(moved);
  r.reducedOffset = offset;
  if (len == 0) r.reduced.shrink_to_fit();
  return len ? r.reduced.data() : nullptr;
}

void ResidualStore::release(const std::string& name) { byName_.erase(name); }

void ResidualStore::clear() {
  byName_.clear();
  warned_.clear();
}

size_t ResidualStore::bytes() const {
  size_t floats = 0;
  for (const auto& kv : byName_) floats += kv.second.own.size() + kv.second.reduced.size();
  return floats * sizeof(float);
}

std::vector<ResidualState> ResidualStore::exportAll() const {
  std::vector<ResidualState> out;
  out.reserve(byName_.size());
  for (const auto& kv : byName_) {
    const Residual& r = kv.second;
    ResidualState s;
    s.name = kv.first;
    s.codec = r.codec;
    s.own = r.own;
    if (!r.reduced.empty()) {
      s.reduced.assign(r.own.size(), 0.0f);
      std::copy(r.reduced.begin(), r.reduced.end(), s.reduced.begin() + static_cast<ptrdiff_t>(r.reducedOffset));
    }
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const ResidualState& a, const ResidualState& b) { return a.name < b.name; });
  return out;
}

void ResidualStore::importAll(std::vector<ResidualState> states) {
  clear();
  for (ResidualState& s : states) {
    Residual& r = byName_[s.name];
    r.codec = s.codec;
    r.own = std::move(s.own);
    r.reducedOffset = 0;
    r.reduced = std::move(s.reduced);  // whole-tensor coordinates; narrowed to this rank's range at first use
    r.imported = true;
  }
}

}  // namespace nrt
