"""Strings as one UTF-8 byte array plus offsets, the input numba kernels read text from."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa


def utf8_buffer(strings: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets): the strings' UTF-8 bytes back to back as uint8 and n + 1 int64 offsets,
    copied in one piece from the Arrow buffers (writable, so the kernels always see one array
    type). Nulls are empty."""
    if len(strings) == 0:
        return np.empty(0, np.uint8), np.zeros(1, np.int64)
    array = strings.cast(pl.String).fill_null("").to_arrow()
    if array.type != pa.large_string():
        array = array.cast(pa.large_string())
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    return data[offsets[0] : offsets[-1]].copy(), offsets - offsets[0]
