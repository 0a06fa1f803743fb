"""The one check of a converted model folder, run before any heavy read.

Every command that opens a folder `python -m convert` or `reflex-mlx train`
wrote comes here first (reflex_mlx/loader.py, `reflex-mlx info`, the hub
fetch). Nothing here imports a framework: files are stat-ed before they are
opened, read with a size bound, and safetensors headers are parsed by hand, so
a FIFO, a device node, a huge or deeply nested JSON, a lying header or a
codebook of illegal words is refused in one line naming the file.

Weights: conversion checks every tensor finite and writes `manifest.json`
(each model file's size and SHA-256). At load the sizes are compared (and the
small files' digests); `reflex-mlx info --check` re-hashes everything and scans
every float tensor. A folder without a manifest (converted before there were
any) is scanned for NaN and infinity at every load: that is what the manifest
otherwise vouches for, and it costs one read of the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import files
from .errors import first_line, short_repr
from .spec import ADAPTERS_FILE, BACKBONE_DIR, LORA_FILE, MODEL_CONFIG_FILE, backbone_schema, model_config

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "reflex-mlx-manifest"

# Size bounds, checked on the stat before a byte is read.
# A model config is a few kB (50 kB with a fidelity report of every task).
MAX_CONFIG_BYTES = 1 << 20
# tokenizer.json: Qwen2.5's is 7 MB, Llama-3's 9 MB; four times the largest we run over.
MAX_TOKENIZER_BYTES = 32 << 20
# Any other small file a loader reads (tokenizer_config, index, chat template, card).
MAX_SIDE_FILE_BYTES = 32 << 20
# A safetensors header: ~100 kB for a 7B model's 700 tensors; 16 MiB is 100k tensors.
MAX_HEADER_BYTES = 16 << 20
# Files in a backbone folder (a sharded 70B has ~30 shards and ten side files).
MAX_BACKBONE_FILES = 1024
# Files at most this large are hashed at every load; larger ones only by `info --check`.
HASH_AT_LOAD_BYTES = 64 << 20
# What a finiteness scan reads at once.
SCAN_CHUNK_BYTES = 64 << 20

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")

# safetensors dtypes and their item sizes; the float ones with the bits of an all-ones exponent.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
_EXPONENT = {
    "F16": (np.uint16, 0x7C00),
    "BF16": (np.uint16, 0x7F80),
    "F32": (np.uint32, 0x7F800000),
    "F64": (np.uint64, 0x7FF0000000000000),
}
_WORD_DTYPES = {"I32": "<i4", "U32": "<u4", "I64": "<i8", "U64": "<u8"}


class FolderError(ValueError):
    """A one-line reason a model folder cannot be used, naming the file."""


@dataclass
class Folder:
    """A checked model folder: its config, its backbone's and where things are."""

    root: Path
    config: dict
    backbone_dir: Path
    backbone_config: dict = field(default_factory=dict)
    manifest: dict | None = None
    tensors: dict = field(default_factory=dict)  # relative path -> parsed safetensors header


# ----------------------------------------------------------------- reading files


def regular_stat(path: Path, limit: int | None = None) -> os.stat_result:
    """The stat of a regular file of at most `limit` bytes; never opens it."""
    return files.regular_stat(path, limit, "model file", FolderError)


def _open(path: Path, limit: int | None = None):
    """(file, size) of a regular file, opened without blocking on a FIFO."""
    return files.open_regular(path, limit, "model file", FolderError)


def read_bounded(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most `limit` of them."""
    return files.read_regular(path, limit, "model file", FolderError)


def read_json(path: Path, limit: int = MAX_CONFIG_BYTES):
    """A bounded JSON file; too deep a nesting, bad UTF-8 or bad JSON in one line."""
    try:
        return files.parse_json(read_bounded(path, limit))
    except FolderError:
        raise
    except ValueError as err:
        raise FolderError(f"{path}: not valid JSON: {err}") from None


# -------------------------------------------------------------------- configs


def read_config(path: Path) -> dict:
    """A model folder's config.json, read bounded and checked against the schema."""
    raw = read_json(path)
    try:
        return model_config(raw)
    except RecursionError:
        raise FolderError(f"{path}: nested too deeply") from None
    except ValueError as err:
        raise FolderError(f"{path}: {first_line(err)}") from None


def validate_folder(model_dir: str | Path, check: bool = False) -> Folder:
    """Every check short of building the model, cheapest first; FolderError in one line.

    check: also re-hash every file the manifest lists and scan every float tensor
    (`reflex-mlx info --check`).
    """
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise FolderError(f"no model directory at {root}")
    config_path = root / MODEL_CONFIG_FILE
    if not os.path.lexists(config_path):
        raise FolderError(f"{root} is not a converted Reflex model (no {MODEL_CONFIG_FILE})")
    config = read_config(config_path)
    backbone_dir = root / config.get("backbone", BACKBONE_DIR)
    if not backbone_dir.is_dir():
        raise FolderError(f"{root} has no backbone folder ({backbone_dir.name}/)")
    folder = Folder(root, config, backbone_dir)
    backbone_files = _backbone_files(backbone_dir)
    bconfig_path = backbone_dir / "config.json"
    if "config.json" not in backbone_files:
        raise FolderError(f"{bconfig_path}: no such file")
    try:
        folder.backbone_config = backbone_schema(read_json(bconfig_path), config)
    except FolderError:
        raise
    except ValueError as err:
        raise FolderError(f"{bconfig_path}: {first_line(err)}") from None
    if not any(name in backbone_files for name in TOKENIZER_FILES):
        names = ", ".join(TOKENIZER_FILES)
        raise FolderError(f"the backbone in {backbone_dir} has no tokenizer files ({names})")

    model_files = [root / MODEL_CONFIG_FILE, root / ADAPTERS_FILE]
    if config.get("lora"):
        model_files.append(root / LORA_FILE)
    model_files += [backbone_dir / name for name in sorted(backbone_files)]
    for path in model_files:
        regular_stat(path, _size_limit(path))

    manifest_path = root / MANIFEST_FILE
    if os.path.lexists(manifest_path):
        folder.manifest = read_manifest(manifest_path)
        _check_manifest(folder, model_files, rehash=check)

    for path in model_files:
        if path.suffix == ".safetensors":
            folder.tensors[_rel(root, path)] = read_header(path)
    if not any(path.name.endswith(".safetensors") for path in model_files if path.parent == backbone_dir):
        raise FolderError(f"the backbone in {backbone_dir} has no .safetensors weights")
    _check_codebook(folder)
    _check_tokenizer(folder)
    if check or folder.manifest is None:
        for rel, header in folder.tensors.items():
            check_finite(root / rel, header)
    return folder


def _backbone_files(backbone_dir: Path) -> set[str]:
    """Names in the backbone folder (what mlx-lm and the tokenizer may open), bounded."""
    names = set()
    try:
        with os.scandir(backbone_dir) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                names.add(entry.name)
                if len(names) > MAX_BACKBONE_FILES:
                    raise FolderError(f"{backbone_dir}: more than {MAX_BACKBONE_FILES} files")
    except OSError as err:
        raise FolderError(f"{backbone_dir}: cannot list it: {first_line(err)}") from None
    # a subfolder is left out: neither mlx-lm nor the tokenizer reads one
    return {name for name in names if not (backbone_dir / name).is_dir()}


def _size_limit(path: Path) -> int | None:
    """The most bytes a model file may hold before it is read (weights: no bound, they are mapped)."""
    if path.suffix == ".safetensors":
        return None
    return MAX_TOKENIZER_BYTES if path.name == "tokenizer.json" else MAX_SIDE_FILE_BYTES


def check_backbone_files(backbone_dir: str | Path) -> None:
    """Every file a loader may open in a backbone folder is a regular file of bounded
    size: what the torch backend checks before transformers reads the folder."""
    backbone_dir = Path(backbone_dir)
    for name in sorted(_backbone_files(backbone_dir)):
        path = backbone_dir / name
        # transformers also reads weights in other formats (.bin): those are only required regular
        text = path.suffix in (".json", ".jinja", ".txt", ".model", ".py")
        regular_stat(path, _size_limit(path) if text else None)


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


# ---------------------------------------------------------------- safetensors


def read_header(path: Path) -> dict:
    """A safetensors file's tensors {name: (dtype, shape, begin, end)}, the header
    bounded, every offset inside the file, the tensors contiguous and covering the
    data exactly, each one's byte length its dtype times its shape."""
    f, size = _open(path)
    with f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise FolderError(f"{path}: not a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise FolderError(
                f"{path}: header of {length} bytes does not fit the file ({size} bytes) "
                f"or the {MAX_HEADER_BYTES} a header may hold"
            )
        raw = f.read(length)
    try:
        header = files.parse_json(raw)
    except ValueError as err:
        raise FolderError(f"{path}: header is not valid JSON: {err}") from None
    if not isinstance(header, dict):
        raise FolderError(f"{path}: header is not a mapping")
    data_size = size - 8 - length
    tensors, spans = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            ok = entry is None or (
                isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())
            )
            if not ok:  # mlx writes null when there is none
                raise FolderError(f"{path}: __metadata__ is not a mapping of strings")
            continue
        tensors[name] = _tensor_entry(path, name, entry, data_size)
        spans.append((tensors[name][2], tensors[name][3], name))
    spans.sort()
    at = 0
    for begin, end, name in spans:
        if begin != at:
            why = "overlaps the tensor before it" if begin < at else f"follows a gap of {begin - at} bytes"
            raise FolderError(f"{path}: tensor {short_repr(name, 60)} {why}")
        at = end
    if at != data_size:
        raise FolderError(f"{path}: the tensors cover {at} of the {data_size} data bytes")
    return tensors


def _tensor_entry(path: Path, name: str, entry, data_size: int) -> tuple:
    what = f"{path}: tensor {short_repr(name, 60)}"
    if not isinstance(entry, dict):
        raise FolderError(f"{what} is not described by a mapping")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise FolderError(f"{what} has unknown dtype {short_repr(dtype)}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(_index(d) for d in shape):
        raise FolderError(f"{what} has a malformed shape {short_repr(shape)}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_index(o) for o in offsets):
        raise FolderError(f"{what} has malformed data_offsets {short_repr(offsets)}")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise FolderError(f"{what} lies outside the file's {data_size} data bytes ({begin}..{end})")
    count = 1
    for d in shape:
        count *= d
    if count * DTYPE_BYTES[dtype] != end - begin:
        want = count * DTYPE_BYTES[dtype]
        raise FolderError(f"{what}: {dtype} {short_repr(shape)} is {want} bytes, offsets span {end - begin}")
    return (dtype, tuple(shape), begin, end)


def _index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _data_start(path: Path) -> int:
    with _open(path)[0] as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def read_tensor(path: Path, header: dict, name: str, limit: int) -> np.ndarray:
    """One tensor's raw little-endian bytes as a numpy array (header already checked)."""
    dtype, shape, begin, end = header[name]
    if end - begin > limit:
        raise FolderError(f"{path}: tensor {name} is {end - begin} bytes, more than {limit}")
    start = _data_start(path)
    f, _ = _open(path)
    with f:
        f.seek(start + begin)
        data = f.read(end - begin)
    if len(data) != end - begin:
        raise FolderError(f"{path}: tensor {name} is cut short")
    if dtype not in _WORD_DTYPES:
        return np.frombuffer(data, dtype="u1")
    return np.frombuffer(data, dtype=_WORD_DTYPES[dtype]).reshape(shape)


def check_finite(path: Path, header: dict | None = None) -> None:
    """Every float tensor of a safetensors file free of NaN and infinity, read in
    bounded chunks (an all-ones exponent is what NaN and infinity share)."""
    header = read_header(path) if header is None else header
    start = _data_start(path)
    f, _ = _open(path)
    with f:
        for name, (dtype, _, begin, end) in header.items():
            if dtype not in _EXPONENT:
                continue
            bits, mask = _EXPONENT[dtype]
            step = SCAN_CHUNK_BYTES - SCAN_CHUNK_BYTES % np.dtype(bits).itemsize
            f.seek(start + begin)
            for at in range(begin, end, step):
                data = f.read(min(step, end - at))
                words = np.frombuffer(data, dtype=np.dtype(bits).newbyteorder("<"))
                if len(data) != min(step, end - at):
                    raise FolderError(f"{path}: tensor {short_repr(name, 60)} is cut short")
                if np.any((words & mask) == mask):
                    raise FolderError(f"{path}: tensor {short_repr(name, 60)} holds NaN or infinite values")


# ------------------------------------------------------ codebook and tokenizer


def _check_codebook(folder: Folder) -> None:
    """The codebook's words: num_instrs 32-bit integers, each a legal RV32I
    instruction, no two alike (a duplicate makes two rows one answer)."""
    from .rv32i import decode

    path = folder.root / ADAPTERS_FILE
    header = folder.tensors[ADAPTERS_FILE]
    if "instr_words" not in header:
        raise FolderError(f"{path}: no codebook (instr_words)")
    dtype, shape, _, _ = header["instr_words"]
    if dtype not in _WORD_DTYPES or shape != (folder.config["num_instrs"],):
        raise FolderError(
            f"{path}: the codebook is {dtype} {list(shape)}, not {folder.config['num_instrs']} integer words"
        )
    words = read_tensor(path, header, "instr_words", 8 << 20).astype(np.int64)
    if words.size and (words.min() < 0 or words.max() > 0xFFFFFFFF):
        raise FolderError(f"{path}: a codebook word is not a 32-bit word")
    unique, counts = np.unique(words, return_counts=True)
    if unique.size != words.size:
        raise FolderError(f"{path}: codebook word 0x{int(unique[counts > 1][0]):08x} appears more than once")
    for word in unique.tolist():
        if decode(word)["op"] == "illegal":
            raise FolderError(f"{path}: codebook word 0x{word:08x} is not a legal RV32I instruction")


def _check_tokenizer(folder: Folder) -> None:
    """Every token id the tokenizer files name below the embedding's rows: a larger
    one would index past the table (or make the tokenizer library allocate for it)."""
    rows = folder.backbone_config["vocab_size"]
    for header in folder.tensors.values():
        for name, (_, shape, _, _) in header.items():
            if name.endswith("embed_tokens.weight") and shape:
                rows = min(rows, shape[0])
    bdir = folder.backbone_dir
    for name, limit in (
        ("tokenizer.json", MAX_TOKENIZER_BYTES),
        ("vocab.json", MAX_TOKENIZER_BYTES),
        ("tokenizer_config.json", MAX_SIDE_FILE_BYTES),
    ):
        path = bdir / name
        if not path.exists():
            continue
        data = read_json(path, limit)
        top = _largest_id(name, data, path)
        if top is not None and top >= rows:
            raise FolderError(f"{path}: token id {top} is past the embedding's {rows} rows")


def _largest_id(name: str, data, path: Path) -> int | None:
    ids: list = []
    if name == "vocab.json":
        ids = list(data.values()) if isinstance(data, dict) else [None]
    elif name == "tokenizer_config.json":
        decoder = data.get("added_tokens_decoder", {}) if isinstance(data, dict) else {}
        if not isinstance(decoder, dict):
            raise FolderError(f"{path}: added_tokens_decoder is not a mapping")
        try:
            ids = [int(key) for key in decoder]
        except ValueError:
            raise FolderError(f"{path}: added_tokens_decoder has a key that is not a token id") from None
    else:
        if not isinstance(data, dict):
            raise FolderError(f"{path}: not a tokenizer (not a mapping)")
        model = data.get("model") if isinstance(data.get("model"), dict) else {}
        vocab = model.get("vocab")
        if isinstance(vocab, dict):
            ids += list(vocab.values())
        elif isinstance(vocab, list):  # Unigram: the ids are the positions
            ids.append(len(vocab) - 1 if vocab else None)
        added = data.get("added_tokens") or []
        if not isinstance(added, list):
            raise FolderError(f"{path}: added_tokens is not a list")
        ids += [t.get("id") if isinstance(t, dict) else None for t in added]
    ids = [i for i in ids if i is not None] if name == "tokenizer.json" else ids
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise FolderError(f"{path}: token id {short_repr(i)} is not a non-negative integer")
    return max(ids, default=None)


# -------------------------------------------------------------------- manifest

# (device, inode, size, mtime) -> SHA-256: a hard link or an unchanged file is hashed once
_digests: dict = {}


def sha256(path: Path) -> str:
    f, _ = _open(path)
    with f:
        st = os.fstat(f.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _digests:
            digest = hashlib.sha256()
            while chunk := f.read(1 << 20):
                digest.update(chunk)
            _digests[key] = digest.hexdigest()
    return _digests[key]


def model_files(root: Path) -> list[Path]:
    """What a model is: config.json, the adapters (and a kept LoRA), every file of the backbone folder."""
    config = read_config(root / MODEL_CONFIG_FILE)
    backbone_dir = root / config.get("backbone", BACKBONE_DIR)
    files = [root / MODEL_CONFIG_FILE, root / ADAPTERS_FILE]
    if (root / LORA_FILE).exists():
        files.append(root / LORA_FILE)
    return files + [backbone_dir / name for name in sorted(_backbone_files(backbone_dir))]


def write_manifest(root: str | Path) -> Path:
    """manifest.json: every model file's relative path, size and SHA-256."""
    from .files import write_atomically

    root = Path(root)
    files = {}
    for path in model_files(root):
        st = regular_stat(path)
        files[_rel(root, path)] = {"size": st.st_size, "sha256": sha256(path)}
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "files": files}
    return write_atomically(root / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def read_manifest(path: Path) -> dict:
    """manifest.json's {relative path: {size, sha256}}, checked."""
    data = read_json(path)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or data.get("version") != 1:
        raise FolderError(f"{path}: not a {MANIFEST_FORMAT} version 1 file")
    if not isinstance(files, dict):
        raise FolderError(f"{path}: no files listed")
    for rel, entry in files.items():
        parts = rel.split("/")
        if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts) or len(parts) > 2:
            raise FolderError(f"{path}: {short_repr(rel, 60)} is not a path inside the model folder")
        ok = isinstance(entry, dict) and _index(entry.get("size"))
        digest = entry.get("sha256") if ok else None
        if not isinstance(digest, str) or len(digest) != 64 or set(digest) - set("0123456789abcdef"):
            raise FolderError(f"{path}: the entry of {short_repr(rel, 60)} is malformed")
    return files


def _check_manifest(folder: Folder, files: list[Path], rehash: bool) -> None:
    """Each model file the manifest's size (and digest: small files always, every
    file when `rehash`), and no model file it does not list."""
    manifest_path = folder.root / MANIFEST_FILE
    listed = folder.manifest
    for path in files:
        rel = _rel(folder.root, path)
        if rel not in listed:
            raise FolderError(f"{path}: not in {MANIFEST_FILE} (added after conversion)")
    for rel, entry in listed.items():
        path = folder.root / rel
        if not os.path.lexists(path):
            raise FolderError(f"{path}: listed in {MANIFEST_FILE} but missing")
        size = regular_stat(path).st_size
        if size != entry["size"]:
            raise FolderError(
                f"{path}: {size} bytes, {MANIFEST_FILE} says {entry['size']}: changed since it was written"
            )
        if (rehash or size <= HASH_AT_LOAD_BYTES) and sha256(path) != entry["sha256"]:
            raise FolderError(f"{path}: SHA-256 differs from {MANIFEST_FILE}: changed since it was written")
    if not listed:
        raise FolderError(f"{manifest_path}: lists no files")
