"""Tests for the torch-free, allow-list checkpoint reader (convert.checkpoint).

Why: the converter must read reflex.pt bit-exactly without torch and must
refuse (not execute) a pickle that references anything beyond what torch.save
emits for a state dict.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from convert.checkpoint import CheckpointError, LazyTensor, read_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _torch():
    return pytest.importorskip("torch")


def make_reflex_state(torch, hidden=16, adapters=2, ratio=2, embed=8, num_instrs=5, seed=0):
    """A tiny state dict with the docs/design.md §2 key names and dtypes (float32 + int64 instr_words)."""
    g = torch.Generator().manual_seed(seed)
    H, rH, E, N = hidden, ratio * hidden, embed, num_instrs

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32)

    s = OrderedDict()
    s["state_encoder.role_embed.weight"] = r(65, H)
    for k in range(4):
        s[f"state_encoder.byte_embeds.{k}.weight"] = r(256, 32)
    s["state_encoder.value_proj.weight"] = r(H, 128)
    s["state_encoder.value_proj.bias"] = r(H)
    s["state_encoder.norm.weight"] = r(H)
    s["state_encoder.norm.bias"] = r(H)
    s["kv_norm.weight"] = r(H)
    s["kv_norm.bias"] = r(H)
    for i in range(adapters):
        p = f"adapters.{i}."
        s[p + "norm_q.weight"] = r(H)
        s[p + "norm_q.bias"] = r(H)
        s[p + "attn.in_proj_weight"] = r(3 * H, H)
        s[p + "attn.in_proj_bias"] = r(3 * H)
        s[p + "attn.out_proj.weight"] = r(H, H)
        s[p + "attn.out_proj.bias"] = r(H)
        s[p + "norm_mlp.weight"] = r(H)
        s[p + "norm_mlp.bias"] = r(H)
        s[p + "mlp.0.weight"] = r(rH, H)
        s[p + "mlp.0.bias"] = r(rH)
        s[p + "mlp.2.weight"] = r(H, rH)
        s[p + "mlp.2.bias"] = r(H)
        s[p + "attn_gate"] = r(1)
        s[p + "mlp_gate"] = r(1)
    s["head_mlp.0.weight"] = r(H, H)
    s["head_mlp.0.bias"] = r(H)
    s["head_mlp.2.weight"] = r(H, H)
    s["head_mlp.2.bias"] = r(H)
    s["embed_head.weight"] = r(E, H)
    s["embed_head.bias"] = r(E)
    s["instr_table.weight"] = r(N, E)
    words = [0x0000006F, 0xFFFFFFFF, 0x80000000, 0x00500293, -1][:N]
    words += [0x13] * (N - len(words))
    s["instr_words"] = torch.tensor(words, dtype=torch.int64)
    return s


def make_config(hidden=16, embed=8, num_instrs=5):
    return {
        "backbone_id": "Qwen/Qwen2.5-Coder-7B-Instruct",
        "hidden": hidden,
        "inject_every": 4,
        "adapter_mlp_ratio": 2,
        "max_instr_tokens": 96,
        "embed_dim": embed,
        "num_instrs": num_instrs,
        "chat_template": True,
        "context_prefix": False,
    }


def _bits(torch, t):
    """A tensor's exact stored bits as numpy (bfloat16 -> uint16 via view)."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _assert_bit_equal(torch, lazy: LazyTensor, ref):
    assert lazy.shape == tuple(ref.shape)
    assert lazy.dtype == str(ref.dtype).removeprefix("torch.")
    raw = lazy.raw()
    exp = _bits(torch, ref)
    assert raw.dtype == exp.dtype
    assert raw.shape == exp.shape
    assert raw.tobytes() == exp.tobytes()
    arr = lazy.numpy()
    if ref.dtype == torch.bfloat16:
        assert arr.dtype == np.float32
        assert arr.tobytes() == ref.float().numpy().tobytes()
    else:
        assert arr.dtype == ref.numpy().dtype
        assert arr.tobytes() == ref.numpy().tobytes()


@pytest.fixture
def reflex_ckpt(tmp_path):
    torch = _torch()
    path = tmp_path / "reflex.pt"
    torch.save({"state": make_reflex_state(torch), "config": make_config()}, path)
    return path


def test_reflex_layout_roundtrip_bit_exact(reflex_ckpt):
    torch = _torch()
    ref = torch.load(reflex_ckpt, weights_only=True)
    ck = read_checkpoint(reflex_ckpt)
    assert ck.config == ref["config"]
    assert ck.extra == {}
    assert list(ck.state) == list(ref["state"])
    for k, t in ref["state"].items():
        _assert_bit_equal(torch, ck.state[k], t)
    words = ck.state["instr_words"].numpy()
    assert words.dtype == np.int64
    assert ck.state["adapters.1.attn_gate"].shape == (1,)
    assert ck.state["state_encoder.value_proj.bias"].shape == (16,)
    assert [int(w) & 0xFFFFFFFF for w in words] == [0x6F, 0xFFFFFFFF, 0x80000000, 0x00500293, 0xFFFFFFFF]
    assert words[1] == 0xFFFFFFFF and words[4] == -1


def test_dtypes_views_and_shared_storage(tmp_path):
    torch = _torch()
    base_bf = torch.randn(40, dtype=torch.float32).to(torch.bfloat16)
    base_f32 = torch.randn(6, 7)
    shared = torch.arange(100, dtype=torch.float32) * 1.5
    state = OrderedDict(
        f32=torch.randn(3, 5),
        f64=torch.randn(4, dtype=torch.float64),
        f16=torch.randn(2, 3).half(),
        bf16=base_bf.reshape(5, 8),
        bf16_slice=base_bf[3:11],  # shares storage with bf16, nonzero offset
        i64=torch.tensor([0xFFFFFFFF, -1, 2**63 - 1, -(2**63), 0x80000000], dtype=torch.int64),
        i32=torch.tensor([-5, 7], dtype=torch.int32),
        i16=torch.tensor([-3], dtype=torch.int16),
        i8=torch.tensor([-128, 127], dtype=torch.int8),
        u8=torch.tensor([0, 255], dtype=torch.uint8),
        b=torch.tensor([True, False, True]),
        transposed=base_f32.t(),  # non-contiguous view
        strided=base_f32[::2, 1::3],  # offset + steps
        shared_a=shared[10:30].view(4, 5),
        shared_b=shared[55:60],
        one=torch.tensor([3.25]),
        scalar=torch.tensor(2.5),
        empty=torch.zeros(0, 3),
        param=torch.nn.Parameter(torch.randn(3)),
    )
    path = tmp_path / "mixed.pt"
    torch.save({"state": state, "config": {"note": "x", "dt": torch.bfloat16}, "step": 7}, path)
    ref = torch.load(path, weights_only=True)
    ck = read_checkpoint(path)
    assert ck.extra == {"step": 7}
    assert ck.config["note"] == "x" and ck.config["dt"] == "bfloat16"
    for k, t in ref["state"].items():
        _assert_bit_equal(torch, ck.state[k], t.detach())
    # views of one storage really share it (no duplicate reads)
    assert ck.state["shared_a"]._storage is ck.state["shared_b"]._storage
    assert ck.state["bf16"]._storage is ck.state["bf16_slice"]._storage
    assert ck.state["bf16_slice"].raw().dtype == np.uint16


def test_module_state_dict_with_metadata(tmp_path):
    torch = _torch()
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.GELU(), torch.nn.Linear(3, 2))
    path = tmp_path / "m.pt"
    torch.save({"state": m.state_dict(), "config": {}}, path)
    ck = read_checkpoint(path)
    for k, t in m.state_dict().items():
        _assert_bit_equal(torch, ck.state[k], t)


def test_compressed_members_fall_back_to_reading(reflex_ckpt, tmp_path):
    torch = _torch()
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(reflex_ckpt) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    ref = torch.load(reflex_ckpt, weights_only=True)
    ck = read_checkpoint(deflated)
    for k, t in ref["state"].items():
        _assert_bit_equal(torch, ck.state[k], t)


# ---- malicious / broken files -------------------------------------------------------------


class _Payload:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def _zip_with_pickle(path: Path, obj, extra_members=()):
    """A zip laid out like torch's (``archive/data.pkl`` + friends) around an arbitrary pickle."""
    data = pickle.dumps(obj, protocol=2)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for name, payload in extra_members:
            z.writestr(name, payload)
    return path


def _assert_one_line(err: CheckpointError):
    msg = str(err)
    assert msg and "\n" not in msg
    return msg


def test_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned_os"
    cmd = f"touch {marker}"
    path = _zip_with_pickle(tmp_path / "evil.pt", {"state": _Payload(os.system, cmd), "config": {}})
    assert b"system" in zipfile.ZipFile(path).read("archive/data.pkl")
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(path)
    msg = _assert_one_line(ei.value)
    assert "os.system" in msg or "posix.system" in msg
    assert "not on the allow-list" in msg and "evil.pt" in msg
    assert not marker.exists()


def test_refuses_builtins_eval(tmp_path):
    marker = tmp_path / "pwned_eval"
    code = f"open({str(marker)!r}, 'w').write('x')"
    path = _zip_with_pickle(tmp_path / "evil2.pt", {"state": {}, "config": _Payload(eval, code)})
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(path)
    msg = _assert_one_line(ei.value)
    assert "builtins.eval" in msg
    assert not marker.exists()


def test_refuses_global_hidden_in_tensor_position(tmp_path):
    """A subprocess.Popen where _rebuild_tensor_v2 would be must be refused too."""
    import subprocess as sp

    marker = tmp_path / "pwned_popen"
    path = _zip_with_pickle(
        tmp_path / "evil3.pt",
        {"state": OrderedDict(w=_Payload(sp.Popen, ["touch", str(marker)])), "config": {}},
    )
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(path)
    assert "subprocess.Popen" in _assert_one_line(ei.value)
    assert not marker.exists()


def test_truncated_checkpoint(reflex_ckpt, tmp_path):
    data = reflex_ckpt.read_bytes()
    half = tmp_path / "half.pt"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(half)
    assert "half.pt" in _assert_one_line(ei.value)


def test_random_bytes_file(tmp_path):
    p = tmp_path / "noise.pt"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(p)
    assert "noise.pt" in _assert_one_line(ei.value)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(tmp_path / "nope.pt")
    assert "nope.pt" in _assert_one_line(ei.value)


def test_zip_without_data_pkl(tmp_path):
    p = tmp_path / "nopkl.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/version", "3\n")
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(p)
    msg = _assert_one_line(ei.value)
    assert "nopkl.pt" in msg and "data.pkl" in msg


def test_missing_storage_member(reflex_ckpt, tmp_path):
    stripped = tmp_path / "stripped.pt"
    with zipfile.ZipFile(reflex_ckpt) as src, zipfile.ZipFile(stripped, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data/3"):
                dst.writestr(info.filename, src.read(info.filename))
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(stripped)
    msg = _assert_one_line(ei.value)
    assert "stripped.pt" in msg and "data/3" in msg


def test_garbage_pickle_in_zip(tmp_path):
    p = tmp_path / "garbage.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00(X\x05\x00\x00")
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(p)
    assert "garbage.pt" in _assert_one_line(ei.value)


# ---- torch absent ---------------------------------------------------------------------------


def test_import_and_read_without_torch(reflex_ckpt, tmp_path):
    torch = _torch()
    ref = torch.load(reflex_ckpt, weights_only=True)
    expected = tmp_path / "expected.npz"
    np.savez(expected, **{k.replace(".", "__"): t.numpy() for k, t in ref["state"].items()})
    script = textwrap.dedent(
        f"""
        import sys, importlib.abc

        class _NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch.") or name == "mlx" or name.startswith("mlx."):
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, _NoTorch())
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        import convert
        import convert.checkpoint as cc
        ck = cc.read_checkpoint({str(reflex_ckpt)!r})
        exp = np.load({str(expected)!r})
        assert set(exp.files) == {{k.replace(".", "__") for k in ck.state}}
        for k, t in ck.state.items():
            a = t.numpy()
            e = exp[k.replace(".", "__")]
            assert a.dtype == e.dtype and a.shape == e.shape, k
            assert np.array_equal(a.view(np.uint8), e.view(np.uint8)), k
        assert ck.config["hidden"] == 16
        assert "torch" not in sys.modules and "mlx" not in sys.modules
        print("OK", len(ck.state))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("OK")


def test_storages_are_not_read_until_numpy(reflex_ckpt):
    ck = read_checkpoint(reflex_ckpt)
    t = ck.state["head_mlp.0.weight"]
    assert t._storage._array is None and ck._archive._mm is None
    a = t.numpy()
    assert t._storage._array is not None
    assert not a.flags.writeable  # a read-only view into the mapped file, not a copy
    assert ck.state["kv_norm.bias"]._storage._array is None
