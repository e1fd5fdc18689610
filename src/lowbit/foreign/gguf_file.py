"""A GGUF file's metadata and tensor index, read once and kept small; tensors read on demand with ``os.pread``.

The ``gguf`` package's ``GGUFReader`` memory-maps the file and builds a numpy view for every part of every
metadata value: for SmolLM2's 49,152-token vocabulary and 48,900 merges that is about 150 MB of Python objects
(measured), before any weight is read, and every weight page it touches stays in the process's resident memory.
:class:`GgufFile` parses the same layout (GGUF v2/v3, little-endian: magic, version, tensor and key-value counts,
key-value pairs, tensor infos, aligned data) with ``struct``: scalars and strings as one small numpy array each,
arrays of numbers as one array, arrays of strings as a list of bytes. Its ``fields`` have ``GGUFReader``'s
``parts`` / ``data`` / ``types`` shape, so transformers' GGUF config parse runs over it (``loading.gguf``), and
:meth:`GgufFile.read` returns a tensor's bytes as the array ``GGUFReader`` would give (typed for F32/F16/F64/I*,
else uint8 rows of blocks) in a buffer of its own: nothing of the file stays mapped.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import numpy as np

from lowbit.errors import CheckpointError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
ALIGNMENT = 32  # GGUF's default, unless general.alignment says otherwise
SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
           12: "<f8"}  # GGUFValueType → numpy dtype
STRING, ARRAY = 8, 9
TYPED = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8, "I16": np.int16, "I32": np.int32,
         "I64": np.int64}  # tensor types GGUFReader gives as typed arrays; the others as uint8 block rows


class Parts:
    """The ``parts`` of an array field, made on access: ``parts[i]`` is element i as ``GGUFReader`` gives it."""

    def __init__(self, values, kind: int) -> None:
        self.values, self.kind = values, kind

    def __getitem__(self, i: int) -> np.ndarray:
        value = self.values[i]
        return np.frombuffer(value, np.uint8) if self.kind == STRING else self.values[i: i + 1]

    def __len__(self) -> int:
        return len(self.values)


@dataclasses.dataclass(frozen=True)
class Field:
    """One key-value pair: ``types`` ([type] or [ARRAY, element type]), ``parts`` and ``data`` (indices of the
    values in ``parts``), as ``gguf.ReaderField`` has them; ``value`` is the plain Python value."""

    name: str
    types: list
    parts: object
    data: object

    @property
    def value(self):
        items = [self.parts[i] for i in self.data]
        plain = [bytes(p).decode("utf-8") if self.types[-1] == STRING else p[0].item() for p in items]
        return plain if self.types[0] == ARRAY else plain[0]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str  # GGMLQuantizationType name: "Q4_0", "F32", ...
    shape: tuple[int, ...]  # ne: innermost first, as GGUF stores it (a Linear weight is [K, N])
    offset: int  # absolute, in bytes
    nbytes: int
    dims: tuple[int, ...]  # the array read() returns: reversed ne (typed) or rows of blocks in bytes


class GgufFile:
    """A GGUF file's ``fields`` (name → :class:`Field`) and ``tensors`` (:class:`TensorInfo`, file order)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            self._f = f
            self._parse()
        del self._f

    def _parse(self) -> None:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        if self._take(4) != MAGIC:
            raise CheckpointError(f"{self.path} does not start with GGUF's magic bytes; expected a llama.cpp GGUF file")
        version, n_tensors, n_kv = struct.unpack("<IQQ", self._take(20))
        if version not in VERSIONS:
            raise CheckpointError(f"{self.path} is GGUF version {version & 0xFFFFFFFF}; expected one of {VERSIONS} "
                                  "(little-endian); convert it with a current llama.cpp")
        self.fields: dict[str, Field] = {}
        for _ in range(n_kv):
            name = self._string().decode("utf-8")
            self.fields[name] = self._field(name, self._u32())
        infos = []
        for _ in range(n_tensors):
            name = self._string().decode("utf-8")
            ne = struct.unpack(f"<{self._u32()}Q", self._take(8 * self._last))
            kind, offset = struct.unpack("<IQ", self._take(12))
            infos.append((name, ne, kind, offset))
        align = self.fields["general.alignment"].value if "general.alignment" in self.fields else ALIGNMENT
        start = -(-self._f.tell() // align) * align
        self.tensors: list[TensorInfo] = []
        for name, ne, kind, offset in infos:
            try:
                qtype = GGMLQuantizationType(kind)
            except ValueError:
                raise CheckpointError(f"GGUF tensor {name} has type number {kind}, which the gguf package does not "
                                      "know; expected a llama.cpp tensor type; update the gguf package") from None
            block, size = GGML_QUANT_SIZES[qtype]
            count = int(np.prod(ne, dtype=np.int64))
            dims = tuple(reversed(ne))
            if qtype.name not in TYPED:
                dims = tuple(quant_shape_to_byte_shape(dims, qtype))
            info = TensorInfo(name, qtype.name, tuple(ne), start + offset, count * size // block, dims)
            if info.offset + info.nbytes > self._size:
                raise CheckpointError(f"{self.path}: tensor {name} ({info.nbytes} bytes at {info.offset}) ends past "
                                      f"the end of the file ({self._size} bytes); the file is truncated")
            self.tensors.append(info)

    def _take(self, n: int) -> bytes:
        """The next ``n`` bytes of the metadata; a length past the end of the file is an error, not an allocation."""
        if n > self._size - self._f.tell():
            raise CheckpointError(f"{self.path}: a GGUF metadata value of {n} bytes runs past the end of the file; the "
                                  "file is damaged or truncated")
        return self._f.read(n)

    def _u32(self) -> int:
        self._last = struct.unpack("<I", self._take(4))[0]
        return self._last

    def _string(self) -> bytes:
        (n,) = struct.unpack("<Q", self._take(8))
        return self._take(n)

    def _field(self, name: str, kind: int) -> Field:
        if kind == ARRAY:
            item, count = struct.unpack("<IQ", self._take(12))
            if item == STRING:
                values = [self._string() for _ in range(count)]
            elif item in SCALARS:
                dtype = np.dtype(SCALARS[item])
                values = np.frombuffer(self._take(dtype.itemsize * count), dtype).copy()
            else:
                raise CheckpointError(f"GGUF key {name} is an array of type {item}; expected numbers or strings")
            return Field(name, [ARRAY, item], Parts(values, item), range(count))
        if kind == STRING:
            return Field(name, [STRING], [np.frombuffer(self._string(), np.uint8)], [0])
        if kind not in SCALARS:
            raise CheckpointError(f"GGUF key {name} has value type {kind}; expected a GGUF value type (0-12)")
        dtype = np.dtype(SCALARS[kind])
        return Field(name, [kind], [np.frombuffer(self._take(dtype.itemsize), dtype).copy()], [0])

    def read(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes in a buffer of its own (writable), shaped as ``GGUFReader`` shapes its data."""
        buf = bytearray(info.nbytes)
        view, done = memoryview(buf), 0
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while done < info.nbytes:
                got = os.preadv(fd, [view[done:]], info.offset + done)
                if got == 0:
                    raise CheckpointError(f"{self.path} ends inside tensor {info.name}; the file is truncated")
                done += got
        finally:
            os.close(fd)
        return np.frombuffer(buf, TYPED.get(info.type_name, np.uint8)).reshape(info.dims)
