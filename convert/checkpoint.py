"""Read a ``torch.save`` zip checkpoint without torch and without running pickle code.

Why: the converter must run where torch is absent, and a downloaded ``.pt`` is a
pickle, which can execute arbitrary code on load. We therefore unpickle
``data.pkl`` with an allow-list ``find_class`` that only hands out inert
stand-ins for the handful of globals ``torch.save`` emits for a state dict, and
we map the tensor storages (``<prefix>/data/<key>``) lazily straight from the
file so a 4.4 GB checkpoint is never held in memory twice.

What torch 2.13's ``data.pkl`` (protocol 2) references for ``{"state", "config"}``:
``collections.OrderedDict`` (state dicts and the empty ``backward_hooks``),
``torch._utils._rebuild_tensor_v2``, ``torch._utils._rebuild_parameter`` (for
``nn.Parameter`` values), the legacy typed storage names ``torch.FloatStorage``,
``torch.BFloat16Storage``, ``torch.LongStorage``, ... inside persistent ids
``('storage', <StorageClass>, key, location, numel)``, and ``torch.<dtype>``
globals only when a config value is itself a ``torch.dtype``. A module's
``state_dict()`` also carries a BUILD of ``{'_metadata': OrderedDict}``.
"""

from __future__ import annotations

import _compat_pickle
import mmap
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CheckpointError", "Checkpoint", "LazyTensor", "TorchDtype", "read_checkpoint"]


class CheckpointError(Exception):
    """A checkpoint could not be read; the message is always one human line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# storage class name -> (our dtype name, numpy dtype of the stored bits)
_STORAGE_DTYPES: dict[str, tuple[str, str]] = {
    "FloatStorage": ("float32", "f4"),
    "DoubleStorage": ("float64", "f8"),
    "HalfStorage": ("float16", "f2"),
    "BFloat16Storage": ("bfloat16", "u2"),
    "LongStorage": ("int64", "i8"),
    "IntStorage": ("int32", "i4"),
    "ShortStorage": ("int16", "i2"),
    "CharStorage": ("int8", "i1"),
    "ByteStorage": ("uint8", "u1"),
    "BoolStorage": ("bool", "?"),
    "UntypedStorage": ("uint8", "u1"),
}

# torch.<name> dtype globals that may appear as config values
_TORCH_DTYPE_NAMES = {
    "float32",
    "float",
    "float64",
    "double",
    "float16",
    "half",
    "bfloat16",
    "int64",
    "long",
    "int32",
    "int",
    "int16",
    "short",
    "int8",
    "uint8",
    "bool",
}


class TorchDtype(str):
    """Inert stand-in for a ``torch.dtype`` found in the config (its name, e.g. "bfloat16")."""

    def __repr__(self) -> str:
        return f"torch.{str.__str__(self)}"


class _StorageType:
    """Inert stand-in for ``torch.<X>Storage``; only ever used as a tag in persistent ids."""

    __slots__ = ("name", "dtype", "np_code")

    def __init__(self, name: str):
        self.name = name
        self.dtype, self.np_code = _STORAGE_DTYPES[name]

    def __call__(self, *args, **kwargs):
        raise CheckpointError(f"checkpoint pickle tried to construct torch.{self.name}, which is not allowed")

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Inert:
    """Base for our stand-ins: pickle's BUILD must not be able to poke their attributes."""

    __slots__ = ()

    def __setstate__(self, state):
        raise CheckpointError(
            "checkpoint pickle tried to set state on a tensor or storage, which is not allowed"
        )

    def __reduce__(self):  # not meant to be re-pickled
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class _Archive:
    """The open zip checkpoint: member table plus a lazily created read-only mmap of the file."""

    def __init__(self, path: str, infos: dict[str, zipfile.ZipInfo], file_size: int, big_endian: bool):
        self.path = path
        self.infos = infos
        self.file_size = file_size
        self.big_endian = big_endian
        self._mm: mmap.mmap | None = None

    def _mmap(self) -> mmap.mmap:
        if self._mm is None:
            try:
                with open(self.path, "rb") as f:
                    self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as e:
                raise CheckpointError(f"cannot map {self.path}: {e}") from None
            if len(self._mm) != self.file_size:
                raise CheckpointError(f"{self.path} changed size while being read")
        return self._mm

    def member_bytes(self, name: str, nbytes: int):
        """A buffer over the first ``nbytes`` of member ``name``: zero-copy when stored uncompressed."""
        info = self.infos.get(name)
        if info is None:
            raise CheckpointError(f"{self.path} is missing tensor data member {name}")
        if info.file_size < nbytes:
            raise CheckpointError(
                f"{self.path}: member {name} holds {info.file_size} bytes but its tensor needs {nbytes}"
            )
        if info.compress_type == zipfile.ZIP_STORED:
            mm = self._mmap()
            hdr_at = info.header_offset
            hdr = mm[hdr_at : hdr_at + 30]
            if len(hdr) != 30 or hdr[:4] != b"PK\x03\x04":
                raise CheckpointError(f"{self.path}: corrupt zip local header for {name}")
            name_len, extra_len = struct.unpack("<HH", hdr[26:30])
            start = hdr_at + 30 + name_len + extra_len
            if start + info.file_size > len(mm):
                raise CheckpointError(
                    f"{self.path} is truncated: member {name} runs past the end of the file"
                )
            return memoryview(mm)[start : start + nbytes]
        try:
            with zipfile.ZipFile(self.path) as zf:
                data = zf.read(name)
        except (
            OSError,
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            EOFError,
            ValueError,
            NotImplementedError,
        ) as e:
            raise CheckpointError(f"cannot read member {name} of {self.path}: {e}") from None
        return memoryview(data)[:nbytes]

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
                self._mm = None
            except BufferError:  # arrays handed out still view it; the GC will unmap it later
                pass


class _Storage(_Inert):
    """A lazy record for one ``<prefix>/data/<key>`` storage; bytes are mapped on first use."""

    __slots__ = ("archive", "member", "stype", "numel", "_array")

    def __init__(self, archive: _Archive, member: str, stype: _StorageType, numel: int):
        self.archive = archive
        self.member = member
        self.stype = stype
        self.numel = numel
        self._array: np.ndarray | None = None

    def array(self) -> np.ndarray:
        """The storage as a 1-D read-only numpy array of its stored bits (file byte order)."""
        if self._array is None:
            dt = np.dtype(self.stype.np_code)
            if self.archive.big_endian:
                dt = dt.newbyteorder(">")
            buf = self.archive.member_bytes(self.member, self.numel * dt.itemsize)
            arr = np.frombuffer(buf, dtype=dt, count=self.numel)
            arr.flags.writeable = False
            self._array = arr
        return self._array


class LazyTensor(_Inert):
    """A tensor described by (storage, offset, size, stride); data is read only by ``numpy``/``raw``."""

    __slots__ = ("_storage", "storage_offset", "shape", "stride")

    def __init__(self, storage: _Storage, storage_offset: int, shape: tuple, stride: tuple):
        self._storage = storage
        self.storage_offset = storage_offset
        self.shape = shape
        self.stride = stride

    @property
    def dtype(self) -> str:
        return self._storage.stype.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self._storage.stype.np_code).itemsize

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"

    def raw(self) -> np.ndarray:
        """The tensor in its stored bits (bfloat16 as uint16); a read-only view into
        the file when possible."""
        base = self._storage.array()
        if self.size == 0:
            return np.empty(self.shape, dtype=base.dtype)
        # bounds were checked when the tensor was built; as_strided is only safe because of that
        item = base.dtype.itemsize
        view = base[self.storage_offset :]
        return np.lib.stride_tricks.as_strided(
            view, shape=self.shape, strides=tuple(s * item for s in self.stride), writeable=False
        )

    def numpy(self) -> np.ndarray:
        """The tensor as numpy in native byte order; bfloat16 is upcast exactly to float32."""
        arr = self.raw()
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if self.dtype == "bfloat16":
            return (arr.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return arr


def _check_ints(values, what: str) -> tuple:
    if not isinstance(values, tuple) or not all(type(v) is int for v in values):
        raise CheckpointError(f"checkpoint tensor has a malformed {what}: {values!r}")
    return values


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: validates geometry, builds a LazyTensor."""
    if not isinstance(storage, _Storage):
        raise CheckpointError("checkpoint tensor is not backed by a storage record")
    if type(storage_offset) is not int or storage_offset < 0:
        raise CheckpointError(f"checkpoint tensor has a malformed storage offset: {storage_offset!r}")
    size = _check_ints(tuple(size) if isinstance(size, (tuple, list)) else size, "size")
    stride = _check_ints(tuple(stride) if isinstance(stride, (tuple, list)) else stride, "stride")
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise CheckpointError(f"checkpoint tensor has inconsistent size {size} and stride {stride}")
    if all(s > 0 for s in size):
        last = storage_offset + sum((n - 1) * st for n, st in zip(size, stride))
        if last >= storage.numel:
            raise CheckpointError(
                f"checkpoint tensor of size {size} at offset {storage_offset} overruns its storage "
                f"of {storage.numel} elements"
            )
    return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Stand-in for ``torch._utils._rebuild_parameter[_with_state]``: a parameter is just its tensor."""
    if not isinstance(data, LazyTensor):
        raise CheckpointError("checkpoint parameter does not wrap a tensor")
    return data


def _ordered_dict(*args):
    """Stand-in for ``collections.OrderedDict``: only the empty constructor torch emits."""
    if args and args != ((),) and args != ([],):
        raise CheckpointError(
            "checkpoint pickle constructs an OrderedDict with arguments, which is not allowed"
        )
    return OrderedDict()


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})
_ALLOWED.update({("torch", name): TorchDtype(name) for name in _TORCH_DTYPE_NAMES})


class _AllowListUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (to inert stand-ins) and lazy storages."""

    def __init__(self, file, archive: _Archive, prefix: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        # Protocol-2 pickles may spell Python 3 names the Python 2 way (builtins -> __builtin__);
        # normalise like pickle's own find_class so the allow-list and the message see the real name.
        if isinstance(module, str) and isinstance(name, str):
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise CheckpointError(
                f"refusing to load {os.path.basename(self._archive.path)}: its pickle references "
                f"{module}.{name}, which is not on the allow-list"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(
                f"{self._archive.path}: unsupported persistent id in its pickle: {str(pid)[:80]}"
            )
        _, stype, key, _location, numel = pid
        if (
            not isinstance(stype, _StorageType)
            or not isinstance(key, str)
            or type(numel) is not int
            or numel < 0
        ):
            raise CheckpointError(
                f"{self._archive.path}: malformed storage reference in its pickle: {str(pid)[:80]}"
            )
        st = self._storages.get(key)
        if st is None:
            member = f"{self._prefix}data/{key}"
            if member not in self._archive.infos:
                raise CheckpointError(f"{self._archive.path} is missing tensor data member {member}")
            st = _Storage(self._archive, member, stype, numel)
            self._storages[key] = st
        return st


@dataclass
class Checkpoint:
    """A lazily readable checkpoint: ``state`` tensors, ``config`` values, other
    top-level keys in ``extra``."""

    path: str
    state: dict[str, LazyTensor]
    config: dict
    extra: dict = field(default_factory=dict)
    _archive: _Archive | None = field(default=None, repr=False)

    def close(self) -> None:
        """Unmap the file if no arrays handed out still view it."""
        if self._archive is not None:
            self._archive.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _find_prefix(path: str, names: list[str]) -> str:
    if "data.pkl" in names:
        return ""
    cands = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(cands) != 1:
        raise CheckpointError(f"{path} is not a torch checkpoint: no data.pkl record in its zip archive")
    return cands[0][: -len("data.pkl")]


def read_checkpoint(path) -> Checkpoint:
    """Open ``path`` (a torch.save zip of ``{"state": ..., "config": ...}``) without
    torch; tensors stay lazy."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        file_size = os.path.getsize(path)
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            prefix = _find_prefix(path, list(infos))
            byteorder = infos.get(prefix + "byteorder")
            order = zf.read(byteorder).decode("ascii", "replace").strip() if byteorder else "little"
            if order not in ("little", "big"):
                raise CheckpointError(f"{path}: unknown byte order {order!r}")
            pkl = zf.read(prefix + "data.pkl")
    except CheckpointError:
        raise
    except zipfile.BadZipFile as e:
        raise CheckpointError(
            f"{path} is not a readable zip checkpoint (truncated or not a torch.save file): {e}"
        ) from None
    except (OSError, EOFError, ValueError, NotImplementedError, zipfile.LargeZipFile, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {e}") from None

    archive = _Archive(path, infos, file_size, big_endian=(order == "big"))
    import io

    try:
        obj = _AllowListUnpickler(io.BytesIO(pkl), archive, prefix).load()
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{path}: its pickle is nested too deeply") from None
    except Exception as e:  # malformed pickle: UnpicklingError, EOFError, TypeError, ...
        raise CheckpointError(
            f"{path}: its data.pkl is not a valid checkpoint pickle ({type(e).__name__}: {e})"
        ) from None

    if not isinstance(obj, dict) or "state" not in obj:
        raise CheckpointError(f"{path} does not hold a {{'state': ..., 'config': ...}} dictionary")
    state, config = obj["state"], obj.get("config", {})
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, LazyTensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path}: its 'state' is not a mapping of names to tensors")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its 'config' is not a dictionary")
    extra = {k: v for k, v in obj.items() if k not in ("state", "config")}
    return Checkpoint(path=path, state=dict(state), config=dict(config), extra=extra, _archive=archive)
