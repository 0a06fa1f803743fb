"""A converted model's card (README.md, in the style of mlx-community's) and its upload.

The card is written from the model's own config.json, so it says exactly
what was converted: the Reflex checkpoint and base model, the command, the
precision recipe, the fidelity report, memory and bytes read per cycle, and
both licenses. `upload` publishes the folder in one hub commit: a commit
lands whole or not at all, so an interrupted upload leaves nothing that
`reflex-mlx run --model OWNER/NAME` would load.
"""

from __future__ import annotations

from pathlib import Path

from reflex_core.timing import human_bytes

CARD_FILE = "README.md"


def _hub_link(source: str | None) -> str:
    """A hub id as a link; a local path as code (it means nothing on another machine)."""
    if not source:
        return "unknown"
    if source.startswith("/") or Path(source).exists():
        return f"`{Path(source).name}` (local)"
    repo = "/".join(source.split("/")[:2])
    return f"[{source}](https://huggingface.co/{repo})"


def _backbone_license(source: str | None) -> str | None:
    """The license in the backbone's own card, where its folder has one."""
    if not source or not Path(source).is_dir() or not (Path(source) / CARD_FILE).is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(Path(source) / CARD_FILE).data.license
    except Exception:  # a card without front matter, or an odd one: no license to quote
        return None


def card_text(config: dict, repo: str | None, name: str) -> str:
    from huggingface_hub import ModelCardData

    from reflex_core.fidelity import summary_line, task_table

    backbone = config.get("source_backbone") or config.get("backbone_id")
    base = backbone if backbone and not Path(backbone).exists() and not backbone.startswith("/") else None
    data = ModelCardData(
        license="mit",
        library_name="mlx",
        base_model=base,
        tags=["mlx", "reflex", "riscv", "rv32i", "code"],
    )
    memory = config.get("memory") or {}
    recipe = config.get("recipe") or {}
    title = repo or name
    model_arg = repo or f"path/to/{name}"
    lines = [
        "---",
        data.to_yaml().strip(),
        "---",
        "",
        f"# {title}",
        "",
        f"Reflex (checkpoint {_hub_link(config.get('source_checkpoint'))}) over the backbone "
        f"{_hub_link(backbone)}, converted to MLX with reflex-mlx. Reflex drives an RV32I CPU one "
        "instruction per cycle: a frozen code LLM, gated cross-attention adapters over the machine "
        f"state, and a {config.get('num_instrs')}-row codebook of instruction words.",
        "",
        "## Use with reflex-mlx",
        "",
        "```sh",
        "pip install reflex-mlx",
        f'reflex-mlx run "compute 5 factorial" --model {model_arg}',
        f"reflex-mlx info {model_arg}",
        "```",
        "",
        "## Conversion",
        "",
        "```sh",
        config.get("command") or "python -m convert",
        "```",
        "",
        f"- Backbone layout converted from: {config.get('backbone_layout')}",
        f"- Backbone precision: {recipe.get('backbone')}"
        + (f" ({memory.get('bits_per_weight')} bits per weight)" if memory else ""),
        f"- Adapter side: {config.get('adapter_dtype')}"
        + (
            f", linear layers {config['adapter_quantization']['bits']}-bit"
            if config.get("adapter_quantization")
            else ""
        )
        + "; the codebook similarity is float32",
        f"- Text head (for the demo's text mode): {'kept' if config.get('text_head') else 'none'}",
    ]
    if memory:
        lines += [
            f"- Memory: about {human_bytes(memory['resident_bytes'])} resident; "
            f"{human_bytes(memory['bytes_per_cycle'])} of weights read per cycle",
        ]
    if isinstance(config.get("fit"), dict) and isinstance(config["fit"].get("reason"), str):
        lines.append(f"- Chosen for the Mac it fits: {config['fit']['reason']}")
    lines += ["", "## Fidelity", ""]
    fidelity = config.get("fidelity")
    if fidelity:
        lines += [
            f"Checked at conversion against the unquantized source on {fidelity['prompts']}: "
            "the converted model drives each run, the source predicts on the same states "
            f"({fidelity['source']}).",
            "",
            summary_line(fidelity) + ".",
            "",
            *task_table(fidelity),
        ]
    else:
        lines += ["Not verified at conversion (the unquantized source was not at hand, or --no-verify)."]
    backbone_license = _backbone_license(config.get("source_backbone"))
    lines += [
        "",
        "## Licenses",
        "",
        "- Reflex (its adapters, head and codebook; the released project is MIT-licensed): MIT.",
        f"- The backbone ({_hub_link(backbone)}): its own license"
        + (f", {backbone_license}" if backbone_license else "")
        + "; see its model card.",
        "",
    ]
    return "\n".join(lines)


def write_card(folder: Path, config: dict, name: str, repo: str | None = None) -> Path:
    path = Path(folder) / CARD_FILE
    path.write_text(card_text(config, repo, name))
    return path


def upload(folder: Path, repo: str) -> None:
    """Create the repo if needed and publish the folder in one commit."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id=repo, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder), repo_id=repo, repo_type="model", commit_message="Upload reflex-mlx model"
        )
    except Exception as err:  # the hub's many kinds: one line
        from reflex_core.hub import hub_error

        raise OSError(
            f"cannot upload to {repo}: {hub_error(err)} "
            f"(the model is complete in {folder}; nothing was published)"
        ) from None
    print(f"uploaded to https://huggingface.co/{repo}")
