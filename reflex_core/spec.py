"""The facts of the released Reflex model, defined once (docs/design.md §2, §4, §5).

Everything here is plain Python: both backends, the converter and the machine
import it, so no fact is written twice.
"""

from __future__ import annotations

from dataclasses import dataclass

# ----------------------------------------------------------------- machine (§5)
MEMORY_BASE = 0x1000
MEMORY_SIZE = 0x10000
CODE_START = 0x1000
CODE_END = 0x5000  # exclusive: the code region is filled with HALT words
DATA_ADDR = 0x5000  # results
SOURCE_ADDR = 0x5100  # seeded with the words 1..8
DEST_ADDR = 0x5200
DISPLAY_ADDR = 0x6000  # one ASCII character per 32-bit word
SOURCE_SEED = tuple(range(1, 9))

MASK32 = 0xFFFFFFFF  # a machine word: instruction words and registers are unsigned 32-bit
HALT_WORD = 0x0000006F  # jal x0, 0
NUM_REGS = 32
WINDOW_WORDS = 16
WINDOW_BACK_BYTES = 32  # a window around c starts at (c - 32) & ~3
STATE_WORDS = NUM_REGS + 1 + 2 * WINDOW_WORDS  # x0..x31, pc, pc window, sp window
SP_REG = 2

DEFAULT_MAX_CYCLES = 200
EVAL_MAX_CYCLES = 400

# The memory windows the CLI and the eval report.
REPORTED_WINDOWS = (DATA_ADDR, DEST_ADDR, DISPLAY_ADDR)

# ------------------------------------------------------------------ prompt (§4)
SYSTEM_PROMPT = (
    "You control a RV32I CPU. Registers x5-x15 available. Data: 0x5000. "
    "Display: 0x6000 (ASCII, one word per char)."
)
CONTEXT_PREFIX = SYSTEM_PROMPT + " Task: "

# -------------------------------------------------------------- checkpoint (§2)
HUB_REPO = "ilbertt/reflex-coder7b-jepa-riscv"
# The release's id is spelled two ways: the model card's (first) and the original
# repository README's. The default checkpoint is looked for under both, in order.
HUB_REPOS = (HUB_REPO, "ilbert/reflex-coder7b-jepa-riscv")
HUB_FILE = "reflex.pt"
DEFAULT_BACKBONE = "Qwen/Qwen2.5-Coder-7B-Instruct"
# The same backbone already converted by mlx-community: 4-bit, group 64, about
# 4.3 GB to download instead of 15 GB of bf16 (the README's Mac fast path).
MLX_COMMUNITY_BACKBONE = "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit"

# What identifies a backbone to a checkpoint: a checkpoint trained over one
# cannot run over another. The release's config records only backbone_id, so
# the identities of the backbones this project knows are written here; a
# checkpoint of our trainer records its own beside the config (IDENTITY_KEY, a
# top-level key: the config keeps exactly the released keys).
IDENTITY_KEYS = ("hidden_size", "num_hidden_layers", "vocab_size")
IDENTITY_KEY = "backbone_identity"
KNOWN_BACKBONES = {
    DEFAULT_BACKBONE: {"hidden_size": 3584, "num_hidden_layers": 28, "vocab_size": 152064},
    "SmolLM2-135M-Instruct-Q4_1": {"hidden_size": 576, "num_hidden_layers": 30, "vocab_size": 49152},
}


def backbone_identity(config: dict) -> dict:
    """hidden size, layer count and vocabulary size of a backbone config."""
    return {key: config.get(key) for key in IDENTITY_KEYS}


def expected_identity(reflex: dict, recorded: dict | None = None) -> dict:
    """What the checkpoint's backbone must be: its own record (`recorded`), else the
    known identity of its backbone_id (also under a hub repo's last name), else its hidden size."""
    if isinstance(recorded, dict):
        return {k: v for k, v in recorded.items() if k in IDENTITY_KEYS}
    name = str(reflex.get("backbone_id", ""))
    for known, identity in KNOWN_BACKBONES.items():
        # a checkpoint whose hidden size contradicts its backbone_id (a test fixture) is held to its own
        if name in (known, known.split("/")[-1]) and identity["hidden_size"] == reflex.get("hidden"):
            return dict(identity)
    return {"hidden_size": reflex.get("hidden")}


def identity_mismatch(reflex: dict, backbone: dict, recorded: dict | None = None) -> str | None:
    """One line saying how the backbone config differs from what the checkpoint needs, or None."""
    from .errors import short_repr

    want, have = expected_identity(reflex, recorded), backbone_identity(backbone)
    wrong = [
        f"{key} {short_repr(have[key])} (the checkpoint's backbone has {short_repr(value)})"
        for key, value in want.items()
        if value is not None and have.get(key) != value
    ]
    return ", ".join(wrong) or None


# Backbone families Reflex runs over: decoders that both transformers and mlx-lm
# build as embeddings -> decoder layers -> final RMSNorm, with the same module
# names (self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj). Qwen3 adds per-head
# q/k norms, which both fast paths apply.
SUPPORTED_BACKBONES = ("llama", "mistral", "qwen2", "qwen3")


def backbone_family(config: dict) -> str:
    """The backbone config's model_type, if Reflex runs over it; else ValueError in one line."""
    family = config.get("model_type") if isinstance(config, dict) else None
    if family not in SUPPORTED_BACKBONES:
        raise ValueError(
            f"backbone model_type {family!r} is not supported: Reflex runs over "
            f"{', '.join(SUPPORTED_BACKBONES)} decoders"
        )
    return family


# The float dtypes a converted model's weights may be stored in.
FLOAT_DTYPES = ("float32", "float16", "bfloat16")

ADAPTER_HEADS = 8
LAYER_NORM_EPS = 1e-5
INFONCE_TEMPERATURE = 0.07  # the training objective's: cosine similarity / 0.07

# Defaults of the released config; a checkpoint's own config overrides them.
CONFIG_DEFAULTS = {
    "backbone_id": DEFAULT_BACKBONE,
    "hidden": 3584,
    "inject_every": 4,
    "adapter_mlp_ratio": 2,  # the released loader's default when the key is absent
    "max_instr_tokens": 96,
    "embed_dim": 256,
    "num_instrs": 691,
    "chat_template": True,
    "context_prefix": False,
}


# Keys every consumer reads, and the largest value each may hold: far above any
# model that could run, low enough that a hostile config cannot ask for absurd memory.
_INT_LIMITS = {
    "hidden": 1 << 16,
    "inject_every": 1 << 10,
    "adapter_mlp_ratio": 64,
    "max_instr_tokens": 1 << 15,
    "embed_dim": 1 << 14,
    "num_instrs": 1 << 20,
    "adapter_heads": 1 << 10,
    "num_layers": 1 << 10,
}
_BOOL_KEYS = ("chat_template", "context_prefix")


def reflex_config(raw: dict) -> dict:
    """The checkpoint config with the released defaults filled in, checked.

    Raises ValueError (one line) when a key holds the wrong kind of value or an
    absurd size, or the adapter heads do not divide the hidden size, so a
    hand-edited or foreign config fails at load, not deep inside a forward pass.
    """
    from .errors import short_repr

    if not isinstance(raw, dict):
        raise ValueError("the Reflex config is not a mapping")
    cfg = dict(CONFIG_DEFAULTS)
    cfg.update(raw)
    for key, limit in _INT_LIMITS.items():
        if key not in cfg:
            continue
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"config key {key!r} must be a positive integer, not {short_repr(value)}")
        if value > limit:
            raise ValueError(f"config key {key!r} is {value}, more than the {limit} any model could use")
    for key in _BOOL_KEYS:
        if not isinstance(cfg[key], bool):
            raise ValueError(f"config key {key!r} must be true or false, not {short_repr(cfg[key])}")
    heads = cfg.get("adapter_heads", ADAPTER_HEADS)
    if cfg["hidden"] % heads:
        raise ValueError(f"adapter_heads {heads} does not divide the hidden size {cfg['hidden']}")
    return cfg


def adapter_layers(num_layers: int, inject_every: int) -> list[int]:
    """Decoder layers followed by an adapter: every inject_every-th, 0-based."""
    return list(range(inject_every - 1, num_layers, inject_every))


@dataclass(frozen=True)
class ReflexArgs:
    """The shape of the Reflex modules, as both backends build them: `Reflex(args)`."""

    hidden: int
    embed_dim: int
    num_instrs: int
    adapter_mlp_ratio: int
    adapter_layers: tuple[int, ...]
    adapter_heads: int = ADAPTER_HEADS

    @classmethod
    def from_config(cls, config: dict, num_layers: int | None = None) -> ReflexArgs:
        """From a checkpoint or model config; the adapter layers come from the
        backbone's layer count (`num_layers`, else the config's own list or count)."""
        if num_layers is None and config.get("adapter_layers"):
            layers = config["adapter_layers"]
        else:
            layers = adapter_layers(num_layers or config["num_layers"], config["inject_every"])
        return cls(
            hidden=config["hidden"],
            embed_dim=config["embed_dim"],
            num_instrs=config["num_instrs"],
            adapter_mlp_ratio=config["adapter_mlp_ratio"],
            adapter_layers=tuple(layers),
            adapter_heads=config.get("adapter_heads", ADAPTER_HEADS),
        )

    @property
    def num_adapters(self) -> int:
        return len(self.adapter_layers)


# ------------------------------------------------- converted model directory
MODEL_FORMAT = "reflex-mlx"
MODEL_FORMAT_VERSION = 1
MODEL_CONFIG_FILE = "config.json"
ADAPTERS_FILE = "adapters.safetensors"
BACKBONE_DIR = "backbone"
QUANT_GROUP_SIZE = 64
# Where `make convert` / `python -m convert` put the released model by default,
# and where `reflex-mlx run` looks for it before falling back to its own model.
DEFAULT_RELEASE_DIR = "~/.cache/reflex-mlx/reflex-coder7b-mlx"
