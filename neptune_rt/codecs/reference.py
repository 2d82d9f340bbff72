"""Plain numpy reference of every codec, byte for byte the payload format of csrc/codecs/format.h.

tests/test_codecs.py compares the C++ (and CUDA) codecs against it: exactly for round-to-nearest, bitwise
for stochastic rounding (the counter-based hash is re-done here in uint64 arithmetic).
"""

from __future__ import annotations

import struct

import numpy as np

CODECS = ("none", "fp16", "bf16", "int8", "int4", "onebit")
BLOCK_CODECS = ("int8", "int4", "onebit")
MAGIC = 0x5154524E
VERSION = 1
HEADER = struct.Struct("<IBBBBQII")  # magic, version, codec, flags, reserved, count, block, reserved
FLAG_STOCHASTIC = 1
FLAG_ERROR_FEEDBACK = 2
DEFAULT_BLOCK = 256
MIN_SCALE_INPUT = np.float32(1e-30)
_LEVELS = {"int8": np.float32(127.0), "int4": np.float32(7.0)}
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _body_bytes(codec: str, count: int, block: int) -> int:
    nb = -(-count // block) if codec in BLOCK_CODECS else 0
    return {
        "none": 4 * count,
        "fp16": 2 * count,
        "bf16": 2 * count,
        "int8": 4 * nb + count,
        "int4": 4 * nb + (count + 1) // 2,
        "onebit": 4 * nb + (count + 7) // 8,
    }[codec]


def payload_bytes(codec: str, count: int, block: int = DEFAULT_BLOCK) -> int:
    return (HEADER.size + _body_bytes(codec, count, block) + 3) // 4 * 4


# ---- counter-based generator (format.h: mix64 / mix32 / streamKey / uniform01) ----
def _mix64_int(z: int) -> int:
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def stream_key(seed: int, step: int, rank: int) -> int:
    return _mix64_int(_mix64_int(_mix64_int(seed + _GOLDEN) ^ step) ^ rank)


def uniform01(key: int, index: np.ndarray) -> np.ndarray:
    """24-bit uniforms in [0, 1) for element indices `index` (uint64)."""
    index = index.astype(np.uint64)
    lo = _mix32(index.astype(np.uint32) + np.uint32(key & 0xFFFFFFFF))
    h = _mix32(lo ^ (index >> np.uint64(32)).astype(np.uint32) ^ np.uint32(key >> 32))
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)


# ---- casts ----
def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    u = x.view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    return np.where(nan, ((u >> 16) | 0x40) & 0xFFFF, rounded).astype(np.uint16)


def _from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _cast_encode(codec: str, x: np.ndarray) -> tuple[bytes, np.ndarray]:
    if codec == "none":
        return x.tobytes(), x.copy()
    if codec == "fp16":
        with np.errstate(over="ignore"):  # overflow to +-inf is the defined result
            h = x.astype(np.float16)
        return h.tobytes(), h.astype(np.float32)
    b = _to_bf16_bits(x)
    return b.tobytes(), _from_bf16_bits(b)


# ---- blockwise ----
def _blocks(x: np.ndarray, block: int) -> np.ndarray:
    nb = -(-x.size // block)
    padded = np.zeros(nb * block, np.float32)
    padded[: x.size] = x
    return padded.reshape(nb, block)


def _block_lengths(count: int, block: int) -> np.ndarray:
    nb = -(-count // block)
    lens = np.full(nb, block, np.int64)
    if nb:
        lens[-1] = count - (nb - 1) * block
    return lens


def _encode_blocks(codec, x, block, stochastic, key, index_base):
    n = x.size
    X = _blocks(x, block)
    if codec == "onebit":
        lanes = np.zeros((X.shape[0], 8), np.float32)
        X3 = (X * X).reshape(X.shape[0], block // 8, 8)  # the block's RMS: sum x*x as quantize.cc adds it
        for row in range(block // 8):
            lanes = lanes + X3[:, row, :]
        total = lanes[:, 0]
        for lane in range(1, 8):
            total = total + lanes[:, lane]
        scale = np.sqrt((total / _block_lengths(n, block).astype(np.float32)).astype(np.float32)).astype(np.float32)
        positive = ~(X < 0)
        decoded = np.where(positive, scale[:, None], -scale[:, None]).astype(np.float32)
        packed = np.packbits(positive.reshape(-1)[:n], bitorder="little")
        return scale.tobytes() + packed.tobytes(), decoded.reshape(-1)[:n]
    lv = _LEVELS[codec]
    amax = ((X.view(np.uint32) & np.uint32(0x7FFFFFFF)).max(axis=1)).view(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = (amax / lv).astype(np.float32)
        inv = (lv / amax).astype(np.float32)
    tiny = amax < MIN_SCALE_INPUT
    scale[tiny] = 0
    inv[tiny] = 0
    with np.errstate(invalid="ignore"):
        v = X * inv[:, None]
    v = np.where(v > -lv, v, -lv)
    v = np.where(v < lv, v, lv)
    if stochastic:
        u = uniform01(key, np.arange(X.size, dtype=np.uint64) + np.uint64(index_base)).reshape(X.shape)
        f = np.floor(v + u)
        f = np.where(f < lv, f, lv)
    else:
        f = np.rint(v)
    q = f.astype(np.int32).astype(np.int8)
    decoded = (q.astype(np.float32) * scale[:, None]).reshape(-1)[:n]
    q = q.reshape(-1)[:n]
    if codec == "int8":
        return scale.tobytes() + q.tobytes(), decoded
    nib = (q.astype(np.uint8) & 0x0F)
    if n % 2:
        nib = np.append(nib, np.uint8(0))
    packed = (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)
    return scale.tobytes() + packed.tobytes(), decoded


def encode(codec: str, src: np.ndarray, residual: np.ndarray | None = None, block: int = DEFAULT_BLOCK,
           rounding: str = "nearest", seed: int = 0, step: int = 0, rank: int = 0,
           index_base: int = 0) -> np.ndarray:
    """Reference encode; with `residual`, updates it in place (r += src; q = Q(r); r -= D(q))."""
    x = np.ascontiguousarray(src, dtype=np.float32).reshape(-1)
    if residual is not None:
        residual += x
        x = residual.copy()
    stochastic = rounding == "stochastic" and codec in ("int8", "int4")
    is_block = codec in BLOCK_CODECS
    if is_block:
        body, decoded = _encode_blocks(codec, x, block, stochastic, stream_key(seed, step, rank), index_base)
    else:
        body, decoded = _cast_encode(codec, x)
    if residual is not None:
        residual[...] = x - decoded
    flags = (FLAG_STOCHASTIC if stochastic else 0) | (FLAG_ERROR_FEEDBACK if residual is not None else 0)
    head = HEADER.pack(MAGIC, VERSION, CODECS.index(codec), flags, 0, x.size, block if is_block else 0, 0)
    raw = head + body
    raw += b"\0" * (payload_bytes(codec, x.size, block) - len(raw))
    return np.frombuffer(raw, np.uint8).copy()


def decode(payload: np.ndarray | bytes) -> np.ndarray:
    """Reference decode (trusts the payload: validation is the C++ side's job, tested separately)."""
    raw = bytes(payload)
    _, _, codec_id, _, _, n, block, _ = HEADER.unpack_from(raw)
    codec = CODECS[codec_id]
    body = raw[HEADER.size:]
    if codec == "none":
        return np.frombuffer(body, np.float32, n).copy()
    if codec == "fp16":
        return np.frombuffer(body, np.float16, n).astype(np.float32)
    if codec == "bf16":
        return _from_bf16_bits(np.frombuffer(body, np.uint16, n))
    nb = -(-n // block)
    scale = np.frombuffer(body, np.float32, nb)
    per_elem = np.repeat(scale, block)[:n]
    data = np.frombuffer(body, np.uint8, offset=4 * nb)
    if codec == "int8":
        q = data[:n].view(np.int8)
    elif codec == "int4":
        b = data[: (n + 1) // 2]
        q = np.empty(2 * b.size, np.int8)
        q[0::2] = (b << 4).view(np.int8) >> 4
        q[1::2] = b.view(np.int8) >> 4
        q = q[:n]
    else:
        bits = np.unpackbits(data[: (n + 7) // 8], bitorder="little")[:n].astype(bool)
        return np.where(bits, per_elem, -per_elem).astype(np.float32)
    return (q.astype(np.float32) * per_elem).astype(np.float32)
