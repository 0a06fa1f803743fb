"""Where checkpoints and backbones come from: a local path, or the Hugging Face hub."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import one_line
from .spec import HUB_FILE, HUB_REPOS, MODEL_CONFIG_FILE, MODEL_FORMAT


def resolve_checkpoint(source: str | None) -> Path:
    """A local `reflex.pt`, or `owner/repo[/file]` on the hub (default: the release).

    Downloads go through huggingface_hub, which shows its own progress bars and
    caches the file, so a second run does not fetch it again.
    """
    if source is None:
        return _release_checkpoint()
    path = Path(source).expanduser()
    if path.exists():
        from .files import regular_stat

        regular_stat(path, None, "checkpoint", FileNotFoundError)  # a FIFO or a device never opened
        return path
    parts = source.split("/")
    under_local_folder = len(parts) > 1 and parts[0] not in ("", ".") and Path(parts[0]).is_dir()
    if _looks_local(source) or under_local_folder or (len(parts) == 2 and source.endswith(".pt")):
        raise FileNotFoundError(f"no checkpoint at {one_line(source)}")
    if len(parts) == 2:
        repo, filename = source, HUB_FILE
    elif len(parts) == 3:
        repo, filename = "/".join(parts[:2]), parts[2]
    else:
        raise FileNotFoundError(f"no checkpoint at {one_line(source)} (not a file, nor owner/repo[/file])")
    from huggingface_hub import hf_hub_download

    offline_if_unreachable()
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename))
    except Exception as err:  # the hub's many error kinds: one line for the user
        raise FileNotFoundError(f"cannot fetch {repo}/{filename} from the hub: {hub_error(err)}") from None


def _release_checkpoint() -> Path:
    """The release's reflex.pt under the first of its two spellings that the hub
    (or the local cache) has; says so when it is not the first."""
    import sys

    errors = []
    for repo in HUB_REPOS:
        try:
            path = resolve_checkpoint(f"{repo}/{HUB_FILE}")
        except FileNotFoundError as err:
            errors.append(str(err))
            continue
        if repo != HUB_REPOS[0]:
            print(f"{HUB_REPOS[0]} was not found; using {repo}/{HUB_FILE}", file=sys.stderr)
        return path
    raise FileNotFoundError(f"{errors[0]}; nor under {', '.join(HUB_REPOS[1:])}")


def resolve_backbone(source: str, near: Path | None = None) -> str:
    """A local transformers directory as a path string, otherwise a hub id, unchanged.

    A relative directory is also looked for beside the checkpoint (`near`), so a
    self-trained model can name its shipped backbone as "backbone". A named
    backbone built on this machine (reflex_core.smol) resolves to its folder.
    """
    built = named_backbone_dir(source)
    if built is not None:
        if not (built / "config.json").is_file():
            from .smol import BUILD_HINT

            raise FileNotFoundError(f"the backbone {source} is not built on this machine: run {BUILD_HINT}")
        return str(built)
    path = Path(source).expanduser()
    beside = Path(near).parent / path if near is not None and not path.is_absolute() else None
    if not path.exists() and beside is not None and beside.is_dir():
        path = beside
    if path.is_dir():
        from .folder import check_backbone_files

        check_backbone_files(path)  # a FIFO or a device in it would hang or flood the loader
        return str(path)
    if path.exists():
        return str(path)
    if _looks_local(source) or len(source.split("/")) > 2:
        raise FileNotFoundError(f"no backbone directory at {one_line(source)}")
    return source


def named_backbone_dir(source: str) -> Path | None:
    """The folder of a backbone this project builds (reflex_core.smol), or None."""
    from .smol import NAMED_BACKBONES

    where = NAMED_BACKBONES.get(source)
    return where() if where is not None else None


# A hub repository id as the hub spells one: OWNER/NAME of letters, digits, - _ . (96 at most each).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def is_hub_id(source: str) -> bool:
    """OWNER/NAME as the hub spells it, and not a path on this machine."""
    if not _HUB_ID.fullmatch(source) or _looks_local(source):
        return False
    try:
        return not Path(source).exists()
    except OSError:  # something is there that the system cannot look at: not a hub name
        return False


def fetch_model(repo: str, config_only: bool = False) -> Path:
    """A converted reflex-mlx model's folder from the hub (or its local cache): its
    config.json alone first, so a repository that is not a Reflex model is refused
    before any weights are downloaded; then the whole folder (huggingface_hub's
    progress bars), unless only the config is asked for."""
    from huggingface_hub import hf_hub_download, snapshot_download

    from .folder import FolderError, read_config, read_json

    offline_if_unreachable()
    try:
        config_path = Path(hf_hub_download(repo_id=repo, filename=MODEL_CONFIG_FILE))
    except Exception as err:  # the hub's many error kinds: one line for the user
        raise FileNotFoundError(f"cannot fetch the model {repo} from the hub: {hub_error(err)}") from None
    try:
        config = read_json(config_path)
    except FolderError:
        config = None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{repo} is not a {MODEL_FORMAT} model "
            f"(its {MODEL_CONFIG_FILE} is not one `python -m convert` writes)"
        )
    try:  # the schema too, before gigabytes of weights are fetched
        read_config(config_path)
    except FolderError as err:
        raise ValueError(f"{repo}: {err}") from None
    if config_only:
        return config_path.parent
    try:
        return Path(snapshot_download(repo_id=repo))
    except Exception as err:
        raise FileNotFoundError(f"cannot fetch the model {repo} from the hub: {hub_error(err)}") from None


def _looks_local(source: str) -> bool:
    """Spelled as a path, never a hub name: absolute, or relative with ./ ../ ~."""
    return source.startswith(("/", ".", "~")) or "\\" in source


def backbone_config(source: str) -> dict:
    """The backbone's transformers config.json: read locally, or fetched alone from
    the hub (a few kB), so a mismatch is found before gigabytes are converted."""
    from .folder import read_json

    path = Path(source)
    if path.is_dir():
        return read_json(path / "config.json")
    from huggingface_hub import hf_hub_download

    offline_if_unreachable()
    try:
        fetched = Path(hf_hub_download(repo_id=source, filename="config.json"))
    except Exception as err:
        raise FileNotFoundError(
            f"cannot fetch the backbone {source} from the hub: {hub_error(err)}"
        ) from None
    return read_json(fetched)


def offline_if_unreachable() -> None:
    """Where the hub's host does not even resolve, use the local cache only, at once,
    instead of huggingface_hub's retries (half a minute of warnings per file)."""
    import socket
    import sys
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        constants.HF_HUB_OFFLINE = True  # read at each call by huggingface_hub and mlx-lm's downloads
        print(
            f"the hub ({constants.ENDPOINT}) cannot be reached: using the local cache only", file=sys.stderr
        )


def hub_error(err: BaseException) -> str:
    """One line for a failed hub call; offline, the reason is that."""
    from huggingface_hub import constants

    from .errors import first_line

    if constants.HF_HUB_OFFLINE:
        return "not in the local cache, and the hub cannot be reached (offline)"
    return first_line(err)[:200]
