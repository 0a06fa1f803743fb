"""Converted model folders damaged as a hostile user would: every one refused in one
line naming the file, quickly, before a weight is read; a good folder still loads.

Each case copies the session's converted fixture (hard links, so nothing is copied
twice; a damaged file is replaced, never written through a link) and damages it.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reflex_core import folder as folder_mod
from reflex_core.folder import MANIFEST_FILE, FolderError, validate_folder, write_manifest
from reflex_core.rv32i import decode

CLI = [sys.executable, "-m", "reflex_app"]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def _replace(path: Path, data: bytes | str) -> None:
    """New contents under the name, leaving the hard-linked original alone."""
    path.unlink(missing_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _edit_config(model: Path, name: str = "config.json", **changes) -> None:
    path = model / name
    config = json.loads(path.read_text())
    config.update(changes)
    _replace(path, json.dumps(config))


def _refused(model: Path, *needles: str, check: bool = False) -> str:
    """validate_folder refuses `model` in one line, the line naming each needle."""
    with pytest.raises(FolderError) as err:
        validate_folder(model, check=check)
    line = str(err.value)
    assert "\n" not in line and len(line) < 500, line
    for needle in needles:
        assert needle in line, line
    return line


def _header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _write_safetensors(path: Path, header: dict, body: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    _replace(path, struct.pack("<Q", len(raw)) + raw + body)


def _cli(*args, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout)


def _one_error_line(proc) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.fixture
def model(mlx_float32_dir, tmp_path):
    return _copy(mlx_float32_dir, tmp_path / "model")


def test_the_converted_fixture_and_the_bundled_model_validate(mlx_float32_dir):
    from reflex_mlx.loader import BUNDLED_MODEL

    for where in (mlx_float32_dir, BUNDLED_MODEL):
        checked = validate_folder(where, check=True)
        assert checked.manifest, f"{where} has no {MANIFEST_FILE}"
        assert checked.config["adapter_layers"] and "adapters.safetensors" in checked.tensors


# ------------------------------------------------------------ files that are not files


@pytest.mark.parametrize(
    "where", ["config.json", "adapters.safetensors", "backbone/model.safetensors", "backbone/config.json"]
)
def test_a_fifo_never_blocks_the_loader(model, where, no_hang):
    from reflex_mlx.loader import ModelError, load_model

    (model / where).unlink()
    os.mkfifo(model / where)
    with pytest.raises(ModelError, match="FIFO") as err:
        no_hang(load_model, model)  # the load path itself: refused before anything is opened
    assert "\n" not in str(err.value)
    assert where.split("/")[-1] in str(err.value)


@pytest.mark.parametrize(
    "where", ["adapters.safetensors", "backbone/model.safetensors", "backbone/tokenizer.json"]
)
def test_a_symlink_to_dev_zero_is_not_read(model, where):
    (model / where).unlink()
    (model / where).symlink_to("/dev/zero")
    _refused(model, "character device", where.split("/")[-1])


def test_a_symlink_to_a_regular_file_is_followed(model, tmp_path):
    """Hub snapshots are symlinks into a blob store: those load."""
    blob = tmp_path / "blob"
    shutil.copy(model / "adapters.safetensors", blob)
    (model / "adapters.safetensors").unlink()
    (model / "adapters.safetensors").symlink_to(blob)
    validate_folder(model)


def test_an_oversized_config_is_refused_before_it_is_read(model):
    _replace(model / "config.json", "{" + " " * (2 << 20) + "}")
    _refused(model, "config.json", "may hold at most")


# --------------------------------------------------------------------- config schema


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"adapter_layers": list(range(100000))}, "adapter_layers"),
        ({"adapter_layers": [-1, 3]}, "adapter_layers"),
        ({"adapter_layers": [3, 3]}, "distinct"),
        ({"adapter_layers": [3, 8]}, "adapter_layers"),
        ({"adapter_layers": []}, "adapter_layers"),
        ({"adapter_layers": "3,7"}, "adapter_layers"),
        ({"num_layers": 10**6}, "num_layers"),
        ({"backbone": 123}, "backbone"),
        ({"backbone": "../elsewhere"}, "backbone"),
        ({"hidden": "192"}, "hidden"),
        ({"num_instrs": 10**12}, "num_instrs"),
        ({"embed_dim": -4}, "embed_dim"),
        ({"format_version": 2}, "format_version"),
        ({"format_version": "1"}, "format_version"),
        ({"format_version": None}, "format_version"),
        ({"format": "something-else"}, "format"),
        ({"adapter_quantization": {"bits": 3, "group_size": 7}}, "group_size"),
        ({"adapter_quantization": {"bits": 7, "group_size": 64}}, "bits"),
        ({"adapter_quantization": {"bits": 4, "group_size": 64, "mode": "mxfp4"}}, "mxfp4"),
        ({"adapter_quantization": "8-bit"}, "adapter_quantization"),
        ({"adapter_dtype": "int8"}, "adapter_dtype"),
        ({"lora": 5}, "lora"),
        ({"lora": {"rank": 10**9}}, "lora"),
        ({"text_head": "yes"}, "text_head"),
        ({"memory": {"resident_bytes": "lots"}}, "memory"),
        ({"chat_template": 1}, "chat_template"),
    ],
)
def test_config_schema(model, changes, needle):
    _edit_config(model, **changes)
    _refused(model, "config.json", needle)


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"num_hidden_layers": 10**6}, "num_hidden_layers"),
        ({"num_hidden_layers": 9}, "num_layers"),
        ({"hidden_size": 128}, "hidden_size"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"vocab_size": 1 << 40}, "vocab_size"),
        ({"num_attention_heads": 5}, "num_attention_heads"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"model_type": "gpt2"}, "not supported"),
        ({"quantization": {"bits": 3, "group_size": 7}}, "group_size"),
        ({"tie_word_embeddings": "no"}, "tie_word_embeddings"),
    ],
)
def test_backbone_config_schema(model, changes, needle):
    _edit_config(model, "backbone/config.json", **changes)
    _refused(model, "backbone/config.json", needle)


@pytest.mark.parametrize("where", ["config.json", "backbone/config.json"])
def test_a_200000_deep_config_is_one_line(model, where):
    _replace(model / where, '{"a": ' + "[" * 200_000 + "]" * 200_000 + "}")
    _refused(model, where.split("/")[-1], "nested too deeply")


@pytest.mark.parametrize("text", ["{not json", "\xff\xfe", "[]", "null", '"config"'])
def test_a_config_that_is_not_a_mapping(model, text):
    _replace(model / "config.json", text.encode("latin-1"))
    _refused(model, "config.json")


# ------------------------------------------------------------------- safetensors


def _damage_header(model: Path, where: str, damage) -> None:
    path = model / where
    header, body = _header(path)
    damage(header, body)
    _write_safetensors(path, header, body)
    (model / MANIFEST_FILE).unlink()  # the header check itself, not the manifest's digest


def _first(header: dict, skip=("__metadata__",)) -> str:
    return sorted((k for k in header if k not in skip), key=lambda k: header[k]["data_offsets"][0])[1]


@pytest.mark.parametrize(
    "damage, needle",
    [
        (
            lambda h, b: h[_first(h)].__setitem__(
                "data_offsets", [o - 4 for o in h[_first(h)]["data_offsets"]]
            ),
            "overlaps",
        ),
        (lambda h, b: h[_first(h)]["data_offsets"].__setitem__(1, len(b) + 64), "outside"),
        (lambda h, b: h[_first(h)].__setitem__("dtype", "F128"), "unknown dtype"),
        (lambda h, b: h[_first(h)].__setitem__("shape", [1, 2, 3]), "bytes"),
        (lambda h, b: h[_first(h)].__setitem__("shape", [-1]), "shape"),
        (lambda h, b: h[_first(h)].__setitem__("data_offsets", "0-4"), "data_offsets"),
        (lambda h, b: h.__setitem__("__metadata__", {"a": 1}), "__metadata__"),
        (lambda h, b: h.pop(_first(h)), "gap"),
    ],
)
@pytest.mark.parametrize("where", ["adapters.safetensors", "backbone/model.safetensors"])
def test_safetensors_headers(model, where, damage, needle):
    _damage_header(model, where, damage)
    _refused(model, where.split("/")[-1], needle)


@pytest.mark.parametrize("where", ["adapters.safetensors", "backbone/model.safetensors"])
def test_a_truncated_or_huge_header_file(model, where):
    path = model / where
    data = path.read_bytes()
    _replace(path, data[: len(data) // 2])
    _refused(model, where.split("/")[-1])  # the manifest's size, first
    (model / MANIFEST_FILE).unlink()
    _refused(model, where.split("/")[-1], "outside")
    _replace(path, struct.pack("<Q", 1 << 60) + data[8:])
    _refused(model, where.split("/")[-1], "header")


# ----------------------------------------------------------- codebook and tokenizer


def _codebook(model: Path, change) -> None:
    path = model / "adapters.safetensors"
    header, body = _header(path)
    begin, end = header["instr_words"]["data_offsets"]
    words = np.frombuffer(body[begin:end], dtype="<u4").copy()
    change(words)
    body = body[:begin] + words.tobytes() + body[end:]
    _write_safetensors(path, header, body)
    write_manifest(model)  # a re-sealed folder: the codebook check itself must refuse it


def test_duplicate_codebook_words(model):
    _codebook(model, lambda w: w.__setitem__(5, w[4]))
    _refused(model, "adapters.safetensors", "more than once")


def test_an_illegal_codebook_word(model):
    illegal = 0xFFFFFFFF
    assert decode(illegal)["op"] == "illegal"
    _codebook(model, lambda w: w.__setitem__(0, illegal))
    _refused(model, "adapters.safetensors", "0xffffffff", "not a legal RV32I")


def test_a_codebook_of_floats(model):
    def damage(h, b):
        h["instr_words"]["dtype"] = "F32"

    _damage_header(model, "adapters.safetensors", damage)
    _refused(model, "adapters.safetensors", "codebook")


@pytest.mark.parametrize("added_id", [1024, 10**9, -1, "7"])
def test_a_token_id_past_the_embedding(model, added_id):
    path = model / "backbone" / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    tokenizer["added_tokens"].append({**tokenizer["added_tokens"][0], "id": added_id, "content": "<evil>"})
    _replace(path, json.dumps(tokenizer))
    write_manifest(model)
    _refused(model, "tokenizer.json", "token id")


# ----------------------------------------------------------- weights and manifest


def _nan_in_backbone(model: Path) -> None:
    """One backbone float made NaN, the file's size unchanged."""
    path = model / "backbone" / "model.safetensors"
    header, body = _header(path)
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    at = path.stat().st_size - len(body) + header[name]["data_offsets"][0]
    data = path.read_bytes()
    _replace(path, data[:at] + np.array([np.nan], dtype="<f4").tobytes() + data[at + 4 :])
    assert path.stat().st_size == len(data)


def test_a_nan_backbone_weight_is_caught_by_the_manifest(model):
    from reflex_mlx.loader import ModelError, load_model

    _nan_in_backbone(model)
    with pytest.raises(ModelError, match="SHA-256"):
        load_model(model)


def test_a_nan_backbone_weight_without_a_manifest_is_scanned_at_load(model):
    _nan_in_backbone(model)
    (model / MANIFEST_FILE).unlink()
    _refused(model, "model.safetensors", "NaN")


def test_conversion_refuses_a_nan_backbone_and_leaves_nothing(fixture_dir, tmp_path):
    from convert.convert import ConvertError, convert_checkpoint
    from reflex_mlx.quantize import Recipe

    source = _copy(fixture_dir, tmp_path / "source")
    _nan_in_backbone(source)
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match="NaN") as err:
        convert_checkpoint(
            str(source / "reflex.pt"), str(source / "backbone"), out, quiet=True, verify=False,
            recipe=Recipe(backbone_dtype="float32", adapter_dtype="float32"),
        )  # fmt: skip
    assert "converted weights" in str(err.value), err.value  # found in what was written
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_a_resealed_nan_backbone_is_caught_by_info_check(model):
    _nan_in_backbone(model)
    write_manifest(model)
    validate_folder(model)  # sizes and digests agree: only a scan can see it
    _refused(model, "model.safetensors", "NaN", check=True)
    line = _one_error_line(_cli("info", str(model), "--check"))
    assert "NaN" in line and "broken" in line


def test_large_files_are_sized_at_load_and_hashed_by_check(model, monkeypatch):
    path = model / "backbone" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    _replace(path, bytes(data))
    monkeypatch.setattr(folder_mod, "HASH_AT_LOAD_BYTES", 0)
    validate_folder(model)  # as a large backbone: the size matches
    _refused(model, "model.safetensors", "SHA-256", check=True)


def test_manifest_mismatches(model):
    _replace(model / "backbone" / "extra.safetensors", b"")
    _refused(model, "extra.safetensors", "not in manifest.json")
    (model / "backbone" / "extra.safetensors").unlink()
    (model / "backbone" / "generation_config.json").unlink()
    _refused(model, "generation_config.json", "missing")


@pytest.mark.parametrize(
    "manifest",
    [
        {
            "format": "reflex-mlx-manifest",
            "version": 1,
            "files": {"../outside": {"size": 1, "sha256": "0" * 64}},
        },
        {
            "format": "reflex-mlx-manifest",
            "version": 1,
            "files": {"config.json": {"size": -1, "sha256": "x"}},
        },
        {"format": "reflex-mlx-manifest", "version": 2, "files": {}},
        [],
    ],
)
def test_a_malformed_manifest(model, manifest):
    _replace(model / MANIFEST_FILE, json.dumps(manifest))
    _refused(model, MANIFEST_FILE)


# ---------------------------------------------------------------------- the CLI


def test_info_reports_a_broken_folder_as_broken(model, mlx_float32_dir):
    good = _cli("info", str(mlx_float32_dir))
    assert good.returncode == 0 and "manifest.json" in good.stdout, good.stderr
    checked = _cli("info", str(mlx_float32_dir), "--check")
    assert checked.returncode == 0 and "byte for byte" in checked.stdout, checked.stderr
    _edit_config(model, adapter_layers=[-1, 3])
    assert "adapter_layers" in _one_error_line(_cli("info", str(model)))


def test_info_check_catches_a_changed_byte_of_the_same_size(model):
    path = model / "backbone" / "tokenizer_config.json"
    data = path.read_bytes()
    at = data.index(b"{") + 1  # the whitespace after the brace: still valid JSON, same size
    _replace(path, data[:at] + (b"\n" if data[at : at + 1] == b" " else b" ") + data[at + 1 :])
    assert path.stat().st_size == len(data)
    line = _one_error_line(_cli("info", str(model), "--check"))
    assert "tokenizer_config.json" in line and "SHA-256" in line


def test_run_on_a_fifo_config_is_one_line_not_a_hang(model):
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    line = _one_error_line(_cli("run", "say hi", "--backend", "mlx", "--model", str(model), timeout=600))
    assert "FIFO" in line


# ---------------------------------------------------------------------- fuzz

_VALUES = [-1, 0, 1, 3, 7, 10**6, 2**63, 1.5, float("nan"), True, None, "x", "", [], [0], [-1, 2], {},
           {"bits": 4}]  # fmt: skip
_DTYPES = ["F16", "BF16", "U32", "I64", "F8_E4M3", "Q4"]


def test_fuzzed_folders_validate_or_refuse_in_one_line(mlx_float32_dir, tmp_path):
    """Seeded damage to config values and safetensors headers: each case validates (and
    then loads, or is refused by the loader in one line) or is refused in one line, quickly."""
    from reflex_app.cli.info import describe_model
    from reflex_mlx.loader import ModelError, load_model

    rng = np.random.default_rng(21)
    count = int(os.environ.get("REFLEX_FUZZ_CASES", "0")) or 24
    outcomes = {"valid": 0, "refused": 0}
    for case in range(count):
        model = _copy(mlx_float32_dir, tmp_path / f"case{case}")
        if case % 2 == 0:
            where = ("config.json", "backbone/config.json")[int(rng.integers(0, 2))]
            config = json.loads((model / where).read_text())
            for _ in range(int(rng.integers(1, 3))):
                key = sorted(config)[int(rng.integers(0, len(config)))]
                config[key] = _VALUES[int(rng.integers(0, len(_VALUES)))]
            _replace(model / where, json.dumps(config))
        else:
            where = ("adapters.safetensors", "backbone/model.safetensors")[int(rng.integers(0, 2))]
            header, body = _header(model / where)
            names = sorted(k for k in header if k != "__metadata__")
            name = names[int(rng.integers(0, len(names)))]
            field = ("dtype", "shape", "data_offsets")[int(rng.integers(0, 3))]
            if field == "dtype":
                header[name]["dtype"] = _DTYPES[int(rng.integers(0, len(_DTYPES)))]
            elif field == "shape":
                header[name]["shape"] = [int(d) for d in rng.integers(0, 300, int(rng.integers(0, 4)))]
            else:
                header[name]["data_offsets"][int(rng.integers(0, 2))] += int(rng.integers(-64, 65))
            _write_safetensors(model / where, header, body)
        if rng.random() < 0.7:
            (model / MANIFEST_FILE).unlink()  # reach the checks behind the manifest
        try:
            validate_folder(model)
        except FolderError as err:
            assert "\n" not in str(err) and len(str(err)) < 500, (case, str(err))
            outcomes["refused"] += 1
        else:
            outcomes["valid"] += 1
            assert describe_model(validate_folder(model).config)  # what info prints
            try:
                load_model(model)
            except ModelError as err:
                assert "\n" not in str(err), (case, str(err))
        shutil.rmtree(model)
    print(f"{count} damaged folders: {outcomes}")
    assert outcomes["refused"] > 0
