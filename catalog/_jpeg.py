"""A zarr v3 array-to-bytes codec storing each (1, H, W, 3) uint8 chunk as one JPEG.

Registered with zarr under the name ``hestkit.jpeg`` when :mod:`catalog` is imported
(and through the ``zarr.codecs`` entry point, so plain ``zarr.open`` finds it in any
environment where hestkit is installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

from hestkit.errors import DataError, OptionError

__all__ = ["CODEC_NAME", "JpegCodec"]

CODEC_NAME = "hestkit.jpeg"


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """JPEG for RGB uint8 chunks whose last three axes are (height, width, 3)."""

    is_fixed_size = False
    quality: int = 90

    def __init__(self, *, quality: int = 90) -> None:
        if not 1 <= int(quality) <= 100:
            raise OptionError(f"JPEG quality must be in 1..100, got {quality}")
        object.__setattr__(self, "quality", int(quality))

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, config = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        return cls(**(config or {}))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": CODEC_NAME, "configuration": {"quality": self.quality}}

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        native = dtype.to_native_dtype() if hasattr(dtype, "to_native_dtype") else np.dtype(dtype)
        if np.dtype(native) != np.uint8:
            raise DataError(f"{CODEC_NAME} stores uint8 RGB chunks, not {native}")
        if len(shape) < 3 or shape[-1] != 3:
            raise DataError(f"{CODEC_NAME} needs arrays whose last axis is 3 (RGB), got shape {shape}")

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        import imagecodecs

        img = imagecodecs.jpeg8_decode(chunk_bytes.to_bytes())
        arr = np.ascontiguousarray(img, dtype=np.uint8).reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(arr)  # type: ignore[arg-type]

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        import imagecodecs

        a = np.asarray(chunk_array.as_ndarray_like(), dtype=np.uint8)
        h, w = a.shape[-3], a.shape[-2]
        lead = int(np.prod(a.shape[:-3])) if a.ndim > 3 else 1
        img = a.reshape(lead * h, w, 3)
        data = imagecodecs.jpeg8_encode(img, level=self.quality)
        return chunk_spec.prototype.buffer.from_bytes(data)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("JPEG output size is data dependent")


register_codec(CODEC_NAME, JpegCodec)
