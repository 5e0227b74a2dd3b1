import numpy as np
import pytest

from kdistill.data.idx import encode_idx, parse_idx
from kdistill.errors import DataError


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_roundtrip_every_type(dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    back = parse_idx(encode_idx(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_header_is_big_endian_mnist_layout():
    data = encode_idx(np.zeros((2, 28, 28), np.uint8))
    assert data[:4] == b"\x00\x00\x08\x03"
    assert data[4:16] == (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert len(data) == 16 + 2 * 28 * 28


@pytest.mark.parametrize("data, match", [
    (b"", "too short"),
    (b"\x00\x00\x08", "too short"),
    (b"\x01\x02\x08\x01" + b"\x00" * 8, "bad magic"),
    (b"\x00\x00\x07\x01" + b"\x00" * 8, "bad magic"),  # unknown type code
    (b"\x00\x00\x08\x00", "bad magic"),  # zero dimensions
    (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated inside its header"),
    (encode_idx(np.zeros(10, np.uint8))[:-1], "truncated or padded"),
    (encode_idx(np.zeros(10, np.uint8)) + b"\x00", "truncated or padded"),
])
def test_malformed_files_are_refused(data, match):
    with pytest.raises(DataError, match=match):
        parse_idx(data)


def test_encode_refuses_unsupported_dtype():
    with pytest.raises(ValueError):
        encode_idx(np.zeros(3, np.complex64))
