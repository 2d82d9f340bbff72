// Bindings for what the engine hands out: Handle (one enqueued operation), HandleGroup (a grouped submission,
// waited on as one) and the CostModel behind its per-bucket dense-vs-compressed decision, plus two test-only
// entries that complete a group's handles by hand. The engine itself: bind_engine.cc.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>

#include "bindings/bindings.h"
#include "engine/engine.h"

namespace py = pybind11;

namespace nrt {

void registerHandles(py::module_& m) {
  py::class_<Handle, std::shared_ptr<Handle>>(m, "Handle", "Completion of one enqueued operation")
      .def_property_readonly("name", &Handle::name)
      .def("done", &Handle::done)
      .def("wait", &Handle::wait, py::arg("timeout") = 0.0, py::call_guard<py::gil_scoped_release>(),
           "Block until done or timeout seconds pass (<= 0: no limit). Returns False on timeout.")
      .def_property_readonly("error", &Handle::error)
      .def_property_readonly("timed_out", &Handle::timedOut)
      .def("add_callback", &Handle::addCallback, py::arg("fn"),
           "Call fn() on the engine's completion thread when done (at once, on this thread, if already done)")
      .def_property_readonly("output_shape", [](const Handle& h) { return h.outputShape; })
      .def_property_readonly("value", [](const Handle& h) { return h.value; })
      .def_property_readonly("codec_used", [](const Handle& h) { return h.codecUsed; })
      .def_property_readonly("wire_bytes", [](const Handle& h) { return h.wireBytes; })
      .def("take_output", [](Handle& h) {
        // Hand the bytes to numpy without a copy: a capsule owns the moved vector.
        auto* owned = new std::vector<char>(std::move(h.output));
        py::capsule free(owned, [](void* p) { delete static_cast<std::vector<char>*>(p); });
        return py::array_t<uint8_t>({static_cast<py::ssize_t>(owned->size())}, {1},
                                    reinterpret_cast<uint8_t*>(owned->data()), free);
      });

  py::class_<HandleGroup, std::shared_ptr<HandleGroup>>(m, "HandleGroup",
                                                       "The handles of one grouped submission, waited on as one")
      .def("__len__", [](const HandleGroup& g) { return g.members.size(); })
      .def("__getitem__",
           [](const HandleGroup& g, py::ssize_t i) {
             const auto n = static_cast<py::ssize_t>(g.members.size());
             if (i < 0) i += n;
             if (i < 0 || i >= n) throw py::index_error("HandleGroup index out of range");
             return g.members[static_cast<size_t>(i)];
           })
      .def("done", &HandleGroup::done, "True once every member is done")
      .def("first_error", &HandleGroup::firstError, "Index of the first failed member, or -1")
      .def("wait", &HandleGroup::wait, py::arg("timeout") = 0.0, py::call_guard<py::gil_scoped_release>(),
           "Wait for every member without running the engine's cycles on this thread; False on timeout")
      .def("add_callback", &HandleGroup::addCallback, py::arg("fn"),
           "Calls fn() once every member is done, on the engine's completion thread (at once if all are)");
  // For tests only (tests/test_group_callbacks.py): a group of fresh handles outside any engine, completed one by one
  // in any order, its callbacks run on the calling thread; the engine itself always completes a group in one cycle.
  m.def("_test_handle_group", [](size_t n) {
    auto group = std::make_shared<HandleGroup>();
    for (size_t i = 0; i < n; ++i) group->members.push_back(std::make_shared<Handle>("test." + std::to_string(i)));
    return group;
  }, py::arg("n"));
  m.def("_test_complete", [](HandleGroup& group, size_t index) {
    for (auto& callback : group.members.at(index)->complete("")) callback();
  }, py::arg("group"), py::arg("index"));

  py::class_<CostModel>(m, "CostModel", "Per-bucket dense-vs-compressed decision (engine/cost_model.h)")
      .def(py::init<>())
      .def_readwrite("alpha", &CostModel::alpha, "seconds per message")
      .def_readwrite("dense_sec_per_byte", &CostModel::denseSecPerByte, "dense ring, per buffer byte")
      .def("set_codec_cost",
           [](CostModel& cm, const std::string& codec, double secPerByte) {
             cm.codecSecPerByte[static_cast<int>(codecFromName(codec))] = secPerByte;
           },
           py::arg("codec"), py::arg("sec_per_byte"), "compressed all-reduce, per fp32 input byte")
      .def("predict_dense", &CostModel::predictDense, py::arg("nbytes"), py::arg("world_size"))
      .def("predict_compressed",
           [](const CostModel& cm, const std::string& codec, size_t count, int n) {
             return cm.predictCompressed(codecFromName(codec), count, n);
           },
           py::arg("codec"), py::arg("count"), py::arg("world_size"))
      .def("choose",
           [](const CostModel& cm, const std::string& requested, size_t count, size_t denseBytes, int n) {
             const uint8_t id = requestedCodecIdFromName(requested);
             return std::string(codecName(static_cast<Codec>(cm.choose(id, count, denseBytes, n))));
           },
           py::arg("requested"), py::arg("count"), py::arg("dense_bytes"), py::arg("world_size"),
           "The codec the engine would use for such a bucket ('none' = dense ring)")
      .def("describe", &CostModel::describe);
}

}  // namespace nrt
