"""Read a legacy (pre-1.6, non-zip) PyTorch ``state_dict`` file with NumPy only.

``torch.save(obj, f, _use_new_zipfile_serialization=False)`` writes, one after
the other into the same file:

1. a pickle of the magic number ``0x1950A86A20F9469CFC6C``;
2. a pickle of the protocol version ``1001``;
3. a pickle of a "sys info" dict (``little_endian``, C type sizes, ...);
4. the object itself, pickled with *persistent ids* standing for storages:
   ``("storage", <torch.FloatStorage class>, key, location, numel, view)``, and
   each tensor reduced to ``torch._utils._rebuild_tensor_v2(storage, offset,
   size, stride, requires_grad, backward_hooks)``;
5. a pickle of the list of storage keys, in the order their data follows;
6. for each key, an 8-byte little-endian element count, then the raw elements.

The storages' bytes only come *after* the pickle that refers to them, so the
unpickler here builds lazy stand-ins and fills them in once the data is read.

Security: unpickling can run arbitrary code through ``find_class``. The
unpickler below never imports anything: it maps an allow-list of names
(``collections.OrderedDict``, the tensor-rebuild helpers, the ``torch.*Storage``
classes) to small local stand-ins and refuses every other global.
"""

from __future__ import annotations

import collections
import functools
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from cnnlab.errors import CnnlabError

__all__ = ["load_torch_state_dict"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> NumPy dtype of its elements. BFloat16 has no NumPy
# dtype: it is read as uint16 and widened to float32 afterwards.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _FormatError(Exception):
    """Internal: the stream is not what a legacy torch.save file looks like."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.<Name>Storage`` class named in a persistent id."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


class _Storage:
    """A storage whose bytes are read after the object pickle (see module doc)."""

    def __init__(self, key: str, storage_type: _StorageType, numel: int) -> None:
        self.key = key
        self.storage_type = storage_type
        self.numel = numel
        self.data: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self.data is None:
            raise _FormatError(f"storage {self.key!r} is used by a tensor but has no data")
        return self.data


@dataclass
class _StorageView:
    """Legacy "view" of a storage (``view_metadata`` in the persistent id)."""

    base: _Storage
    offset: int
    numel: int

    def array(self) -> np.ndarray:
        data = self.base.array()
        if self.offset + self.numel > data.size:
            raise _FormatError(f"storage view of {self.base.key!r} runs past its end")
        return data[self.offset : self.offset + self.numel]


@dataclass
class _LazyTensor:
    """What ``_rebuild_tensor_v2`` returns until the storage bytes are known."""

    storage: _Storage | _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        flat = self.storage.array()
        if len(self.size) != len(self.stride):
            raise _FormatError(f"tensor size {self.size} and stride {self.stride} disagree")
        if any(n < 0 for n in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise _FormatError(f"negative size, stride or offset in tensor {self.size}")
        if 0 in self.size:
            return np.zeros(self.size, dtype=flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if last >= flat.size:
            raise _FormatError(
                f"tensor of size {self.size} at offset {self.offset} runs past its "
                f"storage of {flat.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(s * flat.itemsize for s in self.stride),
            writeable=False,
        )
        # Copy: the result must own C-contiguous memory, not alias the storage.
        return np.array(view, copy=True, order="C")


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any
) -> _LazyTensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` (also ``_rebuild_tensor``).

    The trailing ``requires_grad``/``backward_hooks``(/``metadata``) are irrelevant
    to the values and ignored.
    """
    if not isinstance(storage, (_Storage, _StorageView)):
        raise _FormatError("a tensor is built from something that is not a storage")
    try:
        return _LazyTensor(
            storage, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride))
        )
    except (TypeError, ValueError) as exc:
        raise _FormatError(f"bad tensor size/stride/offset: {exc}") from None


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    """Stand-in for ``torch._utils._rebuild_parameter``: a Parameter is its tensor."""
    if not isinstance(data, _LazyTensor):
        raise _FormatError("a parameter wraps something that is not a tensor")
    return data


# (module, name) -> the only objects this unpickler will ever hand to pickle.
def _fresh(function: Callable[..., Any]) -> Callable[[], Callable[..., Any]]:
    """A factory of new wrappers of ``function``.

    Each lookup gets its own object, so a pickle's BUILD opcode (which sets
    attributes on whatever object is on the stack) can only touch a throwaway
    wrapper, never the functions or storage types of this module.
    """

    def factory() -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            return function(*args)

        return call

    return factory


# (module, name) -> factory of the only objects this unpickler hands to pickle.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    # A builtin type: pickle cannot set attributes on it.
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _fresh(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor"): _fresh(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _fresh(_rebuild_parameter),
    **{("torch", name): functools.partial(_StorageType, name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals, to local stand-ins."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise _FormatError(f"refusing to load the global {module}.{name}")
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise _FormatError(f"unexpected persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise _FormatError(f"persistent id names no known storage type: {storage_type!r:.80}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise _FormatError(f"bad storage key or size in {pid!r:.80}")
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, storage_type, numel)
        elif storage.storage_type != storage_type:
            raise _FormatError(f"storage {key!r} is used with two element types")
        if view is None:
            return storage
        # Old files could reference part of a storage: (view_key, offset, view_numel).
        try:
            _view_key, offset, view_numel = view
            return _StorageView(storage, int(offset), int(view_numel))
        except (TypeError, ValueError):
            raise _FormatError(f"bad storage view metadata {view!r:.80}") from None


def _load_one(file: IO[bytes], storages: dict[str, _Storage]) -> Any:
    return _RestrictedUnpickler(file, storages).load()


def _read_storage_data(file: IO[bytes], storage: _Storage) -> None:
    header = file.read(8)
    if len(header) != 8:
        raise _FormatError(f"file ends before the data of storage {storage.key!r}")
    (numel,) = struct.unpack("<q", header)
    if numel != storage.numel:
        raise _FormatError(
            f"storage {storage.key!r} holds {numel} elements, the pickle said {storage.numel}"
        )
    dtype = storage.storage_type.dtype
    nbytes = numel * dtype.itemsize
    # Check against what is left before reading, so a corrupt count cannot
    # make us allocate gigabytes.
    if nbytes > os.fstat(file.fileno()).st_size - file.tell():
        raise _FormatError(f"file ends inside the data of storage {storage.key!r}")
    raw = file.read(nbytes)
    if len(raw) != nbytes:
        raise _FormatError(f"file ends inside the data of storage {storage.key!r}")
    data = np.frombuffer(raw, dtype=dtype)
    if storage.storage_type.name == "BFloat16Storage":
        # bfloat16 is the top half of a float32: shift it back into place.
        data = (data.astype(np.uint32) << 16).view(np.float32)
    storage.data = data


def _read_legacy(file: IO[bytes]) -> dict[str, np.ndarray]:
    storages: dict[str, _Storage] = {}
    if _load_one(file, storages) != _MAGIC_NUMBER:
        raise _FormatError("it does not start with the torch.save magic number")
    protocol = _load_one(file, storages)
    if protocol != _PROTOCOL_VERSION:
        raise _FormatError(f"its torch protocol version is {protocol!r}, not {_PROTOCOL_VERSION}")
    sys_info = _load_one(file, storages)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        # The raw storage bytes are in the saving machine's byte order.
        raise _FormatError("it was not saved on a little-endian machine")

    state = _load_one(file, storages)
    keys = _load_one(file, storages)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _FormatError("the storage key list is missing or malformed")
    if set(keys) != set(storages):
        raise _FormatError("the storage key list does not match the storages the tensors use")
    for key in keys:
        _read_storage_data(file, storages[key])
    if file.read(1):
        raise _FormatError("there is data after the last storage")

    if not isinstance(state, dict):
        raise _FormatError(f"it holds a {type(state).__name__}, not a state dict")
    arrays: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, _LazyTensor):
            raise _FormatError(f"entry {name!r:.80} is not a named tensor")
        arrays[name] = value.materialize()
    return arrays


def load_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a legacy-format PyTorch ``state_dict`` file into NumPy arrays.

    Args:
        path: a ``.pth``/``.pt`` file written by ``torch.save`` in the legacy
            (pre-1.6, non-zip) format, holding a flat ``{name: tensor}`` dict.

    Returns:
        ``{name: array}`` in the file's order, each array a C-contiguous copy with
        the tensor's shape and dtype (bfloat16 becomes float32).

    Raises:
        CnnlabError: the file is missing, is a zip-format (torch >= 1.6) file, is
            not a legacy torch file, references classes other than tensors and
            storages, or is truncated. The message names the file.
    """
    path = os.fspath(path)
    expected = "a legacy (non-zip) torch.save file holding a flat dict of tensors"
    try:
        with open(path, "rb") as file:
            is_zip = file.read(4) == b"PK\x03\x04"
            file.seek(0)
            arrays = None if is_zip else _read_legacy(file)
    except OSError as exc:
        raise CnnlabError(
            f"cannot read the PyTorch weights file {path}: {exc.strerror or exc}",
            expected=expected,
        ) from None
    except _FormatError as exc:
        raise CnnlabError(
            f"{path} is not a PyTorch state dict this reader accepts: {exc}", expected=expected
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        struct.error,
        MemoryError,
    ) as exc:
        # Whatever a corrupt or foreign pickle makes the unpickler trip over.
        raise CnnlabError(
            f"{path} is not a PyTorch state dict this reader accepts: {type(exc).__name__}: {exc}",
            expected=expected,
        ) from None
    if arrays is None:
        raise CnnlabError(
            f"{path} is a zip-format PyTorch file (torch >= 1.6), which this reader "
            "does not handle",
            expected=expected,
            fix="Re-save it with torch.save(..., _use_new_zipfile_serialization=False)",
        )
    return arrays
