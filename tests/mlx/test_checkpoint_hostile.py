"""The checkpoint reader against damaged and hostile files: one line each, or the
file read bit for bit, never code run, state kept, or memory exhausted."""

from __future__ import annotations

import os
import pickle
import resource
import zipfile
from pathlib import Path

import numpy as np
import pytest

from convert.checkpoint import CheckpointError, read_checkpoint


def _zip(path: Path, pkl: bytes, members=(), compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for name, data in members:
            z.writestr(name, data)
    return path


def _one_line(path) -> str:
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert message and "\n" not in message and len(message) < 400, message
    return message


def _arrays(path) -> dict:
    ckpt = read_checkpoint(path)
    return {k: t.raw().copy() for k, t in ckpt.state.items()}


@pytest.fixture(scope="module")
def good(tmp_path_factory, request):
    torch = pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("good") / "reflex.pt"
    state = {
        "w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "b": torch.ones(3, dtype=torch.bfloat16),
        "instr_words": torch.tensor([0x6F, 5], dtype=torch.int64),
    }
    torch.save({"state": state, "config": {"hidden": 4, "name": "x"}}, path)
    return path


def test_a_flipped_tensor_byte_fails_the_crc(good, tmp_path):
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    at = info.header_offset + 30 + name_len + extra_len + 5
    data[at] ^= 0x40
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    ckpt = read_checkpoint(bad)  # the pickle is intact; the tensor is checked before use
    with pytest.raises(CheckpointError, match="CRC-32"):
        for tensor in ckpt.state.values():
            tensor.numpy()


def test_build_on_a_stand_in_is_refused_and_leaves_nothing_behind(good, tmp_path):
    want = _arrays(good)
    # torch.FloatStorage, then BUILD (None, {"np_code": "i4"}): would reinterpret every float
    pkl = b"\x80\x02ctorch\nFloatStorage\nN}X\x07\x00\x00\x00np_codeX\x02\x00\x00\x00i4s\x86b."
    assert "not allowed" in _one_line(_zip(tmp_path / "build.pt", pkl))
    dtype = b"\x80\x02ctorch\nfloat32\n}X\x01\x00\x00\x00aK\x01sb."
    assert "not allowed" in _one_line(_zip(tmp_path / "build2.pt", dtype))
    got = _arrays(good)  # a good file read afterwards in the same process is unchanged
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_opcodes_the_format_does_not_need_are_refused(tmp_path):
    class Thing:
        pass

    for protocol in (0, 4):
        pkl = pickle.dumps({"state": {}, "config": {"x": {1, 2}}}, protocol=protocol)
        message = _one_line(_zip(tmp_path / f"p{protocol}.pt", pkl))
        assert "opcode" in message or "allow-list" in message


def test_a_memo_bomb_config_is_refused_in_a_line(tmp_path):
    # x0 = ["a"*64]; x(i+1) = [x(i)] * 10, memo-shared: 10**30 strings if walked in full
    ops = [b"\x80\x02}(X\x05\x00\x00\x00stateq\x00}X\x06\x00\x00\x00configq\x01}X\x01\x00\x00\x00k"]
    ops.append(b"]X@\x00\x00\x00" + b"a" * 64 + b"a")
    ops.append(b"q\x02")
    for i in range(30):
        ops.append(
            b"](" + b"h" + bytes([2 + i]) + b"" + (b"h" + bytes([2 + i])) * 9 + b"e" + b"q" + bytes([3 + i])
        )
    ops.append(b"su.")
    pkl = b"".join(ops)
    message = _one_line(_zip(tmp_path / "laughs.pt", pkl))
    assert "too large" in message or "not a valid" in message


def test_config_values_json_cannot_hold(tmp_path):
    deep: list = [1]
    for _ in range(40):
        deep = [deep]
    cases = {"bytes": {"a": b"x"}, "tuple key": {(1, 2): 3}, "nan": {"a": float("nan")}, "deep": {"a": deep}}
    for name, config in cases.items():
        pkl = pickle.dumps({"state": {}, "config": config}, protocol=2)
        message = _one_line(_zip(tmp_path / "cfg.pt", pkl))
        assert "config" in message or "allow-list" in message, (name, message)


def test_a_zip_bomb_member_is_refused_without_inflating(tmp_path, good):
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data/0"):
                data = b"\0" * (64 << 20)  # 64 MiB of zeros: about 64 kB deflated
            dst.writestr(info.filename, data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ckpt = read_checkpoint(bomb)
    with pytest.raises(CheckpointError, match="zip bomb"):
        for tensor in ckpt.state.values():
            tensor.numpy()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB


def test_odd_files(tmp_path):
    (tmp_path / "dir.pt").mkdir()
    os.mkfifo(tmp_path / "fifo.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    os.symlink(tmp_path / "loop.pt", tmp_path / "loop.pt")
    for name in ("dir.pt", "fifo.pt", "empty.pt", "loop.pt", "missing.pt"):
        _one_line(tmp_path / name)


def test_seeded_byte_flips_and_truncations(good, tmp_path):
    """Every damaged copy reads bit-identical to the good file or fails in one line."""
    data = good.read_bytes()
    want = _arrays(good)
    rng = np.random.default_rng(0)
    count = int(os.environ.get("REFLEX_FUZZ_CASES", "120"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"identical": 0, "refused": 0}
    for case in range(count):
        damaged = bytearray(data)
        if case % 4 == 3:
            damaged = damaged[: int(rng.integers(0, len(data)))]
        else:
            for at in rng.integers(0, len(data), int(rng.integers(1, 4))):
                damaged[at] ^= 1 << int(rng.integers(0, 8))
        path = tmp_path / "case.pt"
        path.write_bytes(bytes(damaged))
        try:
            got = _arrays(path)
        except CheckpointError as err:
            assert "\n" not in str(err) and len(str(err)) < 400
            outcomes["refused"] += 1
            continue
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want), case
        outcomes["identical"] += 1
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"{count} damaged copies: {outcomes}; peak memory grew {grown:.0f} MB")
    assert outcomes["refused"] > 0
    assert grown < 512


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_dangerous_globals_by_every_path(tmp_path, protocol):
    """GLOBAL (protocol 2) and STACK_GLOBAL (4, 5) of os.system, through REDUCE and as a
    tensor's storage: refused, and the payload never runs."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for obj in ({"state": Payload(), "config": {}}, {"state": {"w": Payload()}, "config": {"a": Payload()}}):
        message = _one_line(_zip(tmp_path / "evil.pt", pickle.dumps(obj, protocol=protocol)))
        assert "allow-list" in message or "opcode" in message
    assert not marker.exists()


def test_a_tensor_of_absurd_size_is_refused(tmp_path):
    """In bounds (stride 0) yet 2**80 elements: refused when the tensor is built."""
    import collections
    import io

    torch = pytest.importorskip("torch")
    storage = object()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 1) if obj is storage else None

    class Huge:
        def __reduce__(self):
            args = (storage, 0, (2**40, 2**40), (0, 0), False, collections.OrderedDict())
            return (torch._utils._rebuild_tensor_v2, args)

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"state": {"w": Huge()}, "config": {}})
    message = _one_line(
        _zip(tmp_path / "huge.pt", buffer.getvalue(), members=[("archive/data/0", b"\0" * 4)])
    )
    assert "larger than any" in message


def test_seeded_pickle_mutations_with_valid_crcs(good, tmp_path):
    """data.pkl mutated and the zip rewritten with correct CRCs, so that only the
    unpickler and the checks after it stand between the bytes and the reader: every
    case is read, or refused in one line, quickly and in bounded memory."""
    import time

    with zipfile.ZipFile(good) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    pkl_name, pkl = next((n, d) for n, d in members if n.endswith("data.pkl"))
    rng = np.random.default_rng(1)
    count = int(os.environ.get("REFLEX_FUZZ_CASES", "120"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"read": 0, "refused": 0}
    slowest = 0.0
    for _ in range(count):
        data = bytearray(pkl)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, len(data)))
            if rng.random() < 0.7:
                data[at] = int(rng.integers(0, 256))
            else:  # insert a random opcode byte
                data.insert(at, int(rng.integers(0, 256)))
        path = tmp_path / "case.pt"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for name, payload in members:
                z.writestr(name, bytes(data) if name == pkl_name else payload)
        started = time.perf_counter()
        try:
            ckpt = read_checkpoint(path)
            for tensor in ckpt.state.values():
                tensor.numpy()
            outcomes["read"] += 1
        except CheckpointError as err:
            assert "\n" not in str(err) and len(str(err)) < 400
            outcomes["refused"] += 1
        slowest = max(slowest, time.perf_counter() - started)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"{count} mutated pickles: {outcomes}; slowest {slowest * 1e3:.0f} ms; memory grew {grown:.0f} MB")
    assert grown < 512 and outcomes["refused"] > 0
