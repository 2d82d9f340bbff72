"""`neptune-rt info`: version, MPI library and thread level, compiled features, codecs and knobs."""
from __future__ import annotations

import os


def collect() -> dict:
    """Facts about this installation as a flat dict (printed by `neptune-rt info`, used by benchmarks)."""
    from mpi4py import MPI

    import neptune_rt
    from neptune_rt import _C, _env
    mpi = _C.mpi_info()
    levels = {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled",
              MPI.THREAD_SERIALIZED: "serialized", MPI.THREAD_MULTIPLE: "multiple"}
    facts = {
        "version": neptune_rt.__version__,
        "mpi_library": mpi["library_version"].splitlines()[0].strip(),
        "mpi_standard": "%d.%d" % tuple(mpi["version"]),
        "mpi_thread_level": levels.get(mpi["thread_level"], str(mpi["thread_level"])),
        "mpi4py": __import__("mpi4py").__version__,
        "cuda_module_built": False,
        "cuda_devices": 0,
        "codecs": ", ".join(neptune_rt.CODECS),
    }
    try:
        from neptune_rt import _C_cuda  # optional module, built when nvcc was found
        facts["cuda_module_built"] = True
        try:
            facts["cuda_devices"] = int(_C_cuda.device_count())
        except Exception as err:  # no driver / no device: built but unusable here
            facts["cuda_devices"] = f"0 ({err})"
    except ImportError:
        pass
    for name, knob in _env.KNOBS.items():
        facts[name] = os.environ.get(name, knob.default)
    return facts


def main() -> None:
    for key, value in collect().items():
        print(f"{key:34s} {value}")
