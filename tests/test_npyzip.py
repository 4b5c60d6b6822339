"""The one bounded .npy reader (anynet.npyzip), directly: what model files and pictures share.

Its refusals through the file formats are tested in test_modelio.py, test_images.py and the fuzz
suites; here, the reader's own contract: the header's length is judged before it is read, every
refusal names its subject, and the data comes back as numpy would load it (Fortran order too).
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from anynet import npyzip
from anynet.npyzip import NpyHeader, Unreadable, read_npy_data, read_npy_header


def _npy(array: np.ndarray) -> io.BytesIO:
    buffer = io.BytesIO()
    np.save(buffer, array)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("array", [
    np.arange(12, dtype="<f4").reshape(3, 4),
    np.asfortranarray(np.arange(12, dtype=">f8").reshape(3, 4)),
    np.zeros((0, 5), np.uint8),
    np.array("a record"),
])
def test_reads_what_numpy_wrote(array):
    stream = _npy(array)
    header = read_npy_header(stream, "the test array")
    assert (header.dtype, header.shape, header.fortran) == (array.dtype, array.shape,
                                                            bool(np.isfortran(array)))
    assert header.size == len(_npy(array).getvalue()) - array.nbytes
    back = read_npy_data(stream, header, "the test array")
    np.testing.assert_array_equal(back, array)
    assert back.dtype == array.dtype


@pytest.mark.parametrize("raw, message", [
    (b"not an array", "the file is not an .npy array"),
    (b"\x93NUMPY\x03\x00\x10\x00\x00\x00", "the file is .npy version 3.0"),
    (b"\x93NUMPY\x02\x00\xff\xff\xff\xff", "the file has an .npy header of 4,294,967,295 bytes"),
    (b"\x93NUMPY\x01\x00\x08\x00{'a': 1}", "the file has a broken .npy header"),
])
def test_refusals_name_the_subject_before_reading_a_long_header(raw, message):
    with pytest.raises(Unreadable, match=message):
        read_npy_header(io.BytesIO(raw), "the file")


def test_a_header_over_the_limit_is_not_read():
    class Counting(io.BytesIO):
        asked = 0

        def read(self, n=-1):
            Counting.asked += n if n > 0 else 0
            return super().read(n)

    raw = b"\x93NUMPY\x01\x00" + (npyzip.MAX_NPY_HEADER + 1).to_bytes(2, "little")
    with pytest.raises(Unreadable, match=r"more than the 10,000"):
        read_npy_header(Counting(raw + b" " * 70_000), "x")
    assert Counting.asked <= 12


def test_data_that_ends_early_is_refused():
    header = NpyHeader(np.dtype("<f8"), (4,), False, 0)
    with pytest.raises(Unreadable, match=r"member W1 ends after 16 of its 32 data bytes"):
        read_npy_data(io.BytesIO(bytes(16)), header, "member W1")


def test_model_files_and_idx_share_the_deflate_bound():
    from anynet.data import idx

    assert idx.MAX_DEFLATE_RATIO is npyzip.MAX_DEFLATE_RATIO == 1032
