"""Reader for the IDX format used by (Fashion-)MNIST, gzip-compressed or plain."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

# IDX type codes (third magic byte) -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file into a tensor (``uint8`` for image and label files).

    Compression is detected from the gzip magic bytes, not the file name. Raises ``ValueError``, naming the
    file, on a truncated or corrupt gzip stream, a bad magic number or a payload whose size does not match the
    header.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:  # a cut-off download ends before the end-of-stream marker
            raise ValueError(f"{path}: truncated or corrupt gzip file ({e}); delete it and download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX payload is {len(raw) - header} bytes, header {shape} implies {expected}")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    # Native byte order and a writable copy, which torch requires.
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))
