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
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reflex_core.errors import short_repr

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


def _refuse_state(self, state):
    raise CheckpointError(
        "checkpoint pickle tried to set state on an allow-listed object, which is not allowed"
    )


class TorchDtype(str):
    """Inert stand-in for a ``torch.dtype`` found in the config (its name, e.g. "bfloat16")."""

    __slots__ = ()
    __setstate__ = _refuse_state

    def __repr__(self) -> str:
        return f"torch.{str.__str__(self)}"


class _StorageType:
    """Inert stand-in for ``torch.<X>Storage``; only ever used as a tag in persistent ids."""

    __slots__ = ("name", "dtype", "np_code")
    __setstate__ = _refuse_state

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)
        dtype, np_code = _STORAGE_DTYPES[name]
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "np_code", np_code)

    def __setattr__(self, name, value):
        raise CheckpointError("checkpoint pickle tried to change a storage type, which is not allowed")

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
        self._verified: set[str] = set()

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
        """A zero-copy buffer over the first ``nbytes`` of member ``name``, whose CRC-32 and
        size are checked against the zip's records the first time it is used."""
        info = self.infos.get(name)
        if info is None:
            raise CheckpointError(f"{self.path} is missing tensor data member {name}")
        if info.file_size < nbytes:
            raise CheckpointError(
                f"{self.path}: member {name} holds {info.file_size} bytes but its tensor needs {nbytes}"
            )
        _check_member(self.path, info)
        if info.compress_type != zipfile.ZIP_STORED:
            return self._inflated(info, nbytes)
        mm = self._mmap()
        hdr_at = info.header_offset
        hdr = mm[hdr_at : hdr_at + 30]
        if len(hdr) != 30 or hdr[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{self.path}: corrupt zip local header for {name}")
        name_len, extra_len = struct.unpack("<HH", hdr[26:30])
        start = hdr_at + 30 + name_len + extra_len
        if start + info.file_size > len(mm):
            raise CheckpointError(f"{self.path} is truncated: member {name} runs past the end of the file")
        whole = memoryview(mm)[start : start + info.file_size]
        if name not in self._verified:  # the member's CRC-32, once, before any of it is used
            if zlib.crc32(whole) != info.CRC:
                raise CheckpointError(f"{self.path}: member {name} fails its CRC-32 check (corrupted)")
            self._verified.add(name)
        return whole[:nbytes]

    def _inflated(self, info: zipfile.ZipInfo, nbytes: int) -> memoryview:
        """The first nbytes of a compressed member, streamed: only those are kept, and
        the whole member passes through zipfile's CRC-32 check on the way."""
        kept = bytearray()
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(info) as stream:
                while chunk := stream.read(1 << 20):
                    if len(kept) < nbytes:
                        kept += chunk[: nbytes - len(kept)]
        except (OSError, zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, zlib.error) as e:
            raise CheckpointError(
                f"cannot read member {info.filename} of {self.path}: {short_repr(str(e))}"
            ) from None
        return memoryview(bytes(kept))

    def release_pages(self) -> None:
        """Drop the mapped pages this process has touched from its resident set; the
        file stays mapped and a later read faults them back in from the page cache."""
        if self._mm is not None and hasattr(self._mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED)

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
        raise CheckpointError(f"checkpoint tensor has a malformed {what}: {short_repr(values)}")
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
    elements = 1
    for n in size:
        elements *= n
    if elements > MAX_TENSOR_ELEMENTS:
        raise CheckpointError(f"checkpoint tensor of size {short_repr(size)} is larger than any checkpoint's")
    return LazyTensor(storage, storage_offset, size, stride)


MAX_TENSOR_ELEMENTS = 1 << 34


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


def _allowed() -> dict[tuple[str, str], Any]:
    """The allow-list (a subset of what ``torch.load(weights_only=True)`` accepts for
    this format), with stand-ins made fresh for each read: nothing a file does can
    reach the next one."""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): _ordered_dict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    }
    allowed.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})
    allowed.update({("torch", name): TorchDtype(name) for name in _TORCH_DTYPE_NAMES})
    return allowed


# The opcodes torch.save's protocol-2 pickle of {"state", "config"} uses; any other is refused.
_ALLOWED_OPCODES = frozenset(
    {
        "PROTO",
        "FRAME",
        "STOP",
        "MARK",
        "EMPTY_DICT",
        "EMPTY_LIST",
        "EMPTY_TUPLE",
        "TUPLE",
        "TUPLE1",
        "TUPLE2",
        "TUPLE3",
        "DICT",
        "LIST",
        "SETITEM",
        "SETITEMS",
        "APPEND",
        "APPENDS",
        "BINPUT",
        "LONG_BINPUT",
        "MEMOIZE",
        "BINGET",
        "LONG_BINGET",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG1",
        "BINFLOAT",
        "NONE",
        "NEWTRUE",
        "NEWFALSE",
        "GLOBAL",
        "STACK_GLOBAL",
        "REDUCE",
        "BINPERSID",
        "BUILD",
    }
)
MAX_PICKLE_BYTES = 64 << 20
MAX_PICKLE_OPS = 4_000_000
MAX_MEMO = 1_000_000
MAX_NESTING = 100
MAX_CONFIG_NODES = 10_000
MAX_CONFIG_DEPTH = 32
MAX_STATE_TENSORS = 100_000


def _plain(value, limit: int = 80) -> str:
    """A name as written (cut to `limit`), or a short repr when it is not a string."""
    return value[:limit] if isinstance(value, str) else short_repr(value, limit)


def _scan_pickle(path: str, pkl: bytes) -> None:
    """Refuse, before unpickling, any opcode the format does not need and any
    pickle too large, too nested or with too many memo entries to be a checkpoint."""
    import pickletools
    import warnings

    if len(pkl) > MAX_PICKLE_BYTES:
        raise CheckpointError(f"{path}: its data.pkl is {len(pkl)} bytes, more than a checkpoint's")
    depth = ops = memo = 0
    try:
        with warnings.catch_warnings():  # genops decodes the escapes of refused opcodes noisily
            warnings.simplefilter("ignore")
            opcodes = [opcode.name for opcode, _arg, _pos in _bounded(pickletools.genops(pkl))]
        for name in opcodes:
            ops += 1
            if name not in _ALLOWED_OPCODES:
                raise CheckpointError(f"{path}: its pickle uses the {name} opcode, which is not allowed")
            if name == "MARK":
                depth += 1
                if depth > MAX_NESTING:
                    raise CheckpointError(f"{path}: its pickle is nested too deeply")
            elif name in ("TUPLE", "DICT", "LIST", "SETITEMS", "APPENDS"):
                depth -= 1
            elif name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo += 1
            if ops > MAX_PICKLE_OPS or memo > MAX_MEMO:
                raise CheckpointError(f"{path}: its pickle is larger than any checkpoint's")
    except CheckpointError:
        raise
    except Exception as e:  # pickletools raises ValueError and friends on a malformed stream
        raise CheckpointError(f"{path}: its data.pkl is not a valid pickle ({short_repr(e)})") from None


def _bounded(ops):
    """At most MAX_PICKLE_OPS + 1 opcodes of a stream (the scan refuses more)."""
    for count, op in enumerate(ops):
        yield op
        if count > MAX_PICKLE_OPS:
            return


def _check_config(path: str, config: dict) -> None:
    """The config must be plain JSON (str keys; str, int, float, bool, None, lists,
    dicts), small and shallow: it is written to config.json as it is."""
    budget = [MAX_CONFIG_NODES]

    def walk(value, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_CONFIG_DEPTH:
            raise CheckpointError(f"{path}: its config is too large or too deeply nested")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise CheckpointError(
                        f"{path}: its config has a key that is not a string: {short_repr(key)}"
                    )
                walk(item, depth + 1)
        elif isinstance(value, list):
            for item in value:
                walk(item, depth + 1)
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise CheckpointError(f"{path}: its config holds a non-finite number")
        elif isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:
                raise CheckpointError(f"{path}: its config holds an integer out of range")
        elif isinstance(value, str):
            if len(value) > 10_000:
                raise CheckpointError(f"{path}: its config holds a string of {len(value)} characters")
        elif not (value is None or isinstance(value, bool)):
            raise CheckpointError(
                f"{path}: its config holds a {type(value).__name__}, which JSON cannot store"
            )

    walk(config, 0)


class _AllowListUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (to inert stand-ins) and lazy storages."""

    def __init__(self, file, archive: _Archive, prefix: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, _Storage] = {}
        self._allowed = _allowed()

    def find_class(self, module, name):
        # Protocol-2 pickles may spell Python 3 names the Python 2 way (builtins -> __builtin__);
        # normalise like pickle's own find_class so the allow-list and the message see the real name.
        if isinstance(module, str) and isinstance(name, str):
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise CheckpointError(
                f"refusing to load {os.path.basename(self._archive.path)}: its pickle references "
                f"{_plain(module)}.{_plain(name)}, which is not on the allow-list"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(
                f"{self._archive.path}: unsupported persistent id in its pickle: {short_repr(pid)}"
            )
        _, stype, key, _location, numel = pid
        if (
            not isinstance(stype, _StorageType)
            or not isinstance(key, str)
            or type(numel) is not int
            or numel < 0
        ):
            raise CheckpointError(
                f"{self._archive.path}: malformed storage reference in its pickle: {short_repr(pid)}"
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

    def verify(self) -> None:
        """Check every tensor's data against its CRC-32 now (one pass over the file),
        so that a damaged checkpoint is refused before any work is done with it."""
        for name, tensor in self.state.items():
            try:
                tensor.raw()
            except CheckpointError as err:
                raise CheckpointError(f"tensor {name}: {err}") from None
            self.release_pages()  # a multi-GB checkpoint is read through, not held

    def release_pages(self) -> None:
        """Drop the file's mapped pages from this process's resident set (see _Archive)."""
        if self._archive is not None:
            self._archive.release_pages()

    def close(self) -> None:
        """Unmap the file if no arrays handed out still view it."""
        if self._archive is not None:
            self._archive.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


MAX_INFLATION = 50  # a compressed member of over 1 MiB may inflate at most this much


def _check_member(path: str, info: zipfile.ZipInfo) -> None:
    """Refuse encrypted members, stored members whose sizes disagree, and compressed
    ones that would inflate past MAX_INFLATION times their size (zip bombs).
    torch.save itself stores every member uncompressed."""
    if info.flag_bits & 0x1:
        raise CheckpointError(f"{path}: member {info.filename} is encrypted")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise CheckpointError(f"{path}: member {info.filename} has inconsistent sizes")
    elif info.compress_type != zipfile.ZIP_DEFLATED:
        raise CheckpointError(f"{path}: member {info.filename} uses an unsupported compression")
    elif info.file_size > (1 << 20) and info.file_size > MAX_INFLATION * max(info.compress_size, 1):
        raise CheckpointError(
            f"{path}: member {info.filename} would inflate {info.compress_size} bytes to "
            f"{info.file_size} (a zip bomb?)"
        )


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
        if os.path.isdir(path):
            raise CheckpointError(f"checkpoint {path} is a directory, not a file")
        if os.path.lexists(path) and not os.path.exists(path):
            raise CheckpointError(f"checkpoint {path} is a broken or looping symbolic link")
        if os.path.exists(path):
            raise CheckpointError(f"checkpoint {path} is not a regular file")
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        file_size = os.path.getsize(path)
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            prefix = _find_prefix(path, list(infos))
            byteorder = infos.get(prefix + "byteorder")
            for info in (byteorder, infos[prefix + "data.pkl"]):
                if info is not None:
                    _check_member(path, info)
            if byteorder is not None and byteorder.file_size > 16:
                raise CheckpointError(f"{path}: its byteorder record is {byteorder.file_size} bytes")
            order = zf.read(byteorder).decode("ascii", "replace").strip() if byteorder else "little"
            if order not in ("little", "big"):
                raise CheckpointError(f"{path}: unknown byte order {short_repr(order)}")
            if infos[prefix + "data.pkl"].file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(f"{path}: its data.pkl is larger than any checkpoint's")
            pkl = zf.read(prefix + "data.pkl")
    except CheckpointError:
        raise
    except zipfile.BadZipFile as e:
        raise CheckpointError(
            f"{path} is not a readable zip checkpoint (truncated or not a torch.save file): {e}"
        ) from None
    except (
        OSError,
        EOFError,
        ValueError,
        NotImplementedError,
        zipfile.LargeZipFile,
        RuntimeError,
        zlib.error,
    ) as e:
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {short_repr(str(e))}") from None

    archive = _Archive(path, infos, file_size, big_endian=(order == "big"))
    import io

    _scan_pickle(path, pkl)
    try:
        obj = _AllowListUnpickler(io.BytesIO(pkl), archive, prefix).load()
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{path}: its pickle is nested too deeply") from None
    except Exception as e:  # malformed pickle: UnpicklingError, EOFError, TypeError, ...
        reason = f"{type(e).__name__}: {short_repr(str(e))}"
        raise CheckpointError(f"{path}: its data.pkl is not a valid checkpoint pickle ({reason})") from None

    if not isinstance(obj, dict) or "state" not in obj:
        raise CheckpointError(f"{path} does not hold a {{'state': ..., 'config': ...}} dictionary")
    state, config = obj["state"], obj.get("config", {})
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, LazyTensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path}: its 'state' is not a mapping of names to tensors")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its 'config' is not a dictionary")
    if len(state) > MAX_STATE_TENSORS:
        raise CheckpointError(f"{path}: its 'state' holds {len(state)} tensors, more than any checkpoint's")
    _check_config(path, config)
    extra = {k: v for k, v in obj.items() if k not in ("state", "config")}
    return Checkpoint(path=path, state=dict(state), config=dict(config), extra=extra, _archive=archive)
