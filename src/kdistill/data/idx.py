"""The IDX file format of MNIST-style datasets: read and write, strictly validated.

An IDX file is two zero bytes, a type code, the number of dimensions, each dimension as a
big-endian uint32, then the data in big-endian order. Anything else is refused.
"""
from __future__ import annotations

import math
import struct

import numpy as np

from ..errors import DataError

_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("=").str[1:]: code for code, dt in _TYPES.items()}


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes into a native-endian array, checking magic, dimensions and size."""
    if len(data) < 4:
        raise DataError(f"{name} is too short to be an IDX file ({len(data)} bytes)",
                        "delete it and fetch the data again")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _TYPES or ndim == 0:
        raise DataError(f"{name} is not an IDX file (bad magic {data[:4].hex()})",
                        "check the path, or delete the file and fetch the data again")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name} is truncated inside its header", "fetch the data again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _TYPES[code]
    expected = header + math.prod(dims) * dtype.itemsize  # exact: int64 could wrap to match
    if len(data) != expected:
        raise DataError(
            f"{name} has {len(data)} bytes but its header {list(dims)} says {expected}",
            "the file is truncated or padded: fetch the data again")
    try:
        array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    except ValueError:  # empty, but its other dimensions are too large for numpy to index
        raise DataError(f"{name} has dimensions {list(dims)} too large to index",
                        "fetch the data again") from None
    return array.astype(dtype.newbyteorder("="), copy=False)


def encode_idx(array: np.ndarray) -> bytes:
    """Encode an array as IDX bytes (the inverse of :func:`parse_idx`)."""
    native = np.asarray(array)
    key = native.dtype.newbyteorder("=").str[1:]
    if key not in _CODES:
        raise ValueError(f"IDX cannot store dtype {native.dtype}")
    if native.ndim == 0 or native.ndim > 255:
        raise ValueError("IDX needs between 1 and 255 dimensions")
    code = _CODES[key]
    header = struct.pack(f">HBB{native.ndim}I", 0, code, native.ndim, *native.shape)
    return header + native.astype(_TYPES[code], copy=False).tobytes()
