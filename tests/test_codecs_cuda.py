"""CUDA codecs (neptune_rt._C_cuda) against the CPU codecs: identical payload bytes, residuals and decoded
values on a GPU (torch CUDA tensors). Without the module or a device the GPU tests skip; the host-side checks
(payload sizes, argument validation, device_count) run wherever the module was built."""

from __future__ import annotations

import numpy as np
import pytest

from neptune_rt import codecs

try:
    from neptune_rt import _C_cuda
except ImportError:  # built without nvcc
    _C_cuda = None

needs_module = pytest.mark.skipif(_C_cuda is None, reason="neptune_rt._C_cuda not built (no nvcc at build time)")


def _gpu_available() -> bool:
    if _C_cuda is None or _C_cuda.device_count() == 0:
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not _gpu_available(), reason="no CUDA device (or torch without CUDA)")


@needs_module
def test_host_side_without_device() -> None:
    assert _C_cuda.device_count() >= 0
    for codec in codecs.CODECS:
        for n in (0, 1, 7, 1000):
            assert _C_cuda.payload_bytes(codec, n, 64) == codecs.payload_bytes(codec, n, 64)
    with pytest.raises(ValueError, match="invalid block size 100"):
        _C_cuda.payload_bytes("int8", 10, 100)
    with pytest.raises(ValueError, match="truncated payload"):
        _C_cuda.decode(0, 10, 0, 0)  # rejected before any device access
    with pytest.raises(ValueError, match="unknown codec"):
        _C_cuda.encode("int3", 0, 0, 0, 0, 0)


def _data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-6, 6, size=n // 64 + 1)).repeat(64)[:n]).astype(np.float32)
    if n > 20:
        x[:4] = 0.0
        x[4:8] = -0.0
        x[8:12] = 1e-35
    return x


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("codec", list(codecs.CODECS))
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("block", [8, 256])
@pytest.mark.parametrize("n", [1, 7, 257, 10_001])
@pytest.mark.parametrize("feedback", [False, True])
def test_cuda_matches_cpu(codec: str, rounding: str, block: int, n: int, feedback: bool) -> None:
    import torch

    x = _data(n, n + block)
    r0 = np.random.default_rng(2).standard_normal(n).astype(np.float32)
    kw = dict(block=block, rounding=rounding, seed=5, step=6, rank=7, index_base=100)
    r_cpu = r0.copy() if feedback else None
    want = codecs.encode(codec, x, r_cpu, **kw)

    dx = torch.from_numpy(x).cuda()
    dr = torch.from_numpy(r0).cuda() if feedback else None
    out = torch.zeros(want.size, dtype=torch.uint8, device="cuda")
    wrote = _C_cuda.encode(codec, dx.data_ptr(), n, dr.data_ptr() if feedback else 0, out.data_ptr(), out.numel(),
                           **kw)
    assert wrote == want.size
    np.testing.assert_array_equal(out.cpu().numpy(), want)
    if feedback:
        np.testing.assert_array_equal(dr.cpu().numpy().view(np.uint32), r_cpu.view(np.uint32))

    dst = torch.full((n,), 0.5, dtype=torch.float32, device="cuda")
    _C_cuda.decode_add(out.data_ptr(), out.numel(), dst.data_ptr(), n)
    np.testing.assert_array_equal(dst.cpu().numpy(), codecs.decode_add(want, np.full(n, 0.5, np.float32)))
    _C_cuda.decode(out.data_ptr(), out.numel(), dst.data_ptr(), n)
    np.testing.assert_array_equal(dst.cpu().numpy(), codecs.decode(want))


@pytest.mark.gpu
@needs_gpu
def test_cuda_rejects_malformed_payloads() -> None:
    import torch

    p = codecs.encode("int8", _data(100, 1), block=16)
    dst = torch.empty(100, dtype=torch.float32, device="cuda")
    bad = p.copy()
    bad[5] = 9  # codec id
    for payload, size, match in ((p, p.size - 4, "truncated"), (bad, bad.size, "unknown codec id 9")):
        dev = torch.from_numpy(payload.copy()).cuda()
        with pytest.raises(ValueError, match=match):
            _C_cuda.decode(dev.data_ptr(), size, dst.data_ptr(), 100)
    dev = torch.from_numpy(p.copy()).cuda()
    with pytest.raises(ValueError, match="destination has 99"):
        _C_cuda.decode(dev.data_ptr(), p.size, dst.data_ptr(), 99)
