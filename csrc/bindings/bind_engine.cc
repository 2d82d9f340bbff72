// placeholder until the engine lands
#include "bindings/bindings.h"
namespace nrt { void registerEngine(pybind11::module_& m) {} }
