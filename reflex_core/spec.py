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

# The released model's prompt length: prompts are padded or cut to it.
MAX_INSTR_TOKENS = 96

# Defaults of the released config; a checkpoint's own config overrides them.
CONFIG_DEFAULTS = {
    "backbone_id": DEFAULT_BACKBONE,
    "hidden": 3584,
    "inject_every": 4,
    "adapter_mlp_ratio": 2,  # the released loader's default when the key is absent
    "max_instr_tokens": MAX_INSTR_TOKENS,
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
MODEL_FORMAT_VERSION = 1  # the version `python -m convert` writes
KNOWN_FORMAT_VERSIONS = (1,)  # the versions a loader reads; any other is refused
MODEL_CONFIG_FILE = "config.json"
ADAPTERS_FILE = "adapters.safetensors"
LORA_FILE = "lora.safetensors"  # reflex-mlx train --mode lora keeps its matrices here
BACKBONE_DIR = "backbone"
# Where `make convert` / `python -m convert` put the released model by default,
# and where `reflex-mlx run` looks for it before falling back to its own model.
DEFAULT_RELEASE_DIR = "~/.cache/reflex-mlx/reflex-coder7b-mlx"

# The memory sizes (GB) Apple Silicon Macs are sold with, and the GPU working set
# macOS recommends on each (Metal's recommendedMaxWorkingSetSize): about 2/3 of the
# memory up to 32 GB, 3/4 above. Counted in decimal GB (an 8 GB Mac: 5.33e9 bytes,
# "about 5.3 GB"), a little under macOS's own figure, which is of binary GiB: the
# difference is headroom for what a run holds beside its weights.
MAC_MEMORY_GB = (8, 16, 18, 24, 32, 36, 48, 64, 96, 128, 192, 256, 512)


def mac_working_set(memory_gb: int) -> float:
    """Bytes of a `memory_gb` Mac's recommended working set (see MAC_MEMORY_GB)."""
    return memory_gb * 1e9 * (2 / 3 if memory_gb <= 32 else 3 / 4)


# What MLX's affine quantizer (mx.quantize, which mlx-lm calls) accepts: any other
# bits or group size fails deep inside a matmul, or silently misreads the packed weights.
QUANT_BITS = (2, 3, 4, 5, 6, 8)
QUANT_GROUP_SIZES = (32, 64, 128)
QUANT_GROUP_SIZE = 64  # mlx-lm's default: the backbone's unless a recipe says otherwise, and the adapters'
# What the converter offers: backbone bits, adapter-linear bits, and mlx-lm's
# mixed-precision recipes (mlx_lm.convert.QUANT_RECIPES).
BACKBONE_BITS = (3, 4, 5, 6, 8)
ADAPTER_BITS = (8, 4)
MIXED_RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")
# mlx-lm's other quantization modes, each with its one (bits, group size) pair.
QUANT_MODES = {"affine": None, "mxfp4": (4, 32), "nvfp4": (4, 16), "mxfp8": (8, 32)}

# Bounds of a backbone config: far above any decoder Reflex runs over (Qwen2.5-7B:
# 3584 wide, 28 layers, 152064 tokens), low enough that a hostile config cannot make
# mlx-lm build a million layers or ask for absurd embeddings.
_BACKBONE_LIMITS = {
    "hidden_size": 1 << 16,
    "num_hidden_layers": _INT_LIMITS["num_layers"],
    "vocab_size": 1 << 22,
    "num_attention_heads": 1 << 10,
    "num_key_value_heads": 1 << 10,
    "intermediate_size": 1 << 20,
    "head_dim": 1 << 12,
    "max_position_embeddings": 1 << 24,
}
_BACKBONE_REQUIRED = ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads")


def _positive_int(where: str, key: str, value, limit: int) -> int:
    from .errors import short_repr

    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where} key {key!r} must be a positive integer, not {short_repr(value)}")
    if value > limit:
        raise ValueError(f"{where} key {key!r} is {value}, more than the {limit} any model could use")
    return value


def quantization_params(value, what: str) -> None:
    """{"bits", "group_size"[, "mode"]} as MLX can quantize with; else ValueError in one line."""
    from .errors import short_repr

    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a mapping of bits and group_size, not {short_repr(value)}")
    bits, group, mode = value.get("bits"), value.get("group_size"), value.get("mode", "affine")
    if mode not in QUANT_MODES:
        raise ValueError(f"{what} mode {short_repr(mode)} is not one of {', '.join(QUANT_MODES)}")
    pair = QUANT_MODES[mode]
    if pair is not None:
        if (bits, group) != pair:
            raise ValueError(f"{what}: {mode} takes bits {pair[0]} and group_size {pair[1]}")
        return
    if isinstance(bits, bool) or bits not in QUANT_BITS:
        raise ValueError(f"{what} bits {short_repr(bits)} is not one MLX quantizes with ({QUANT_BITS})")
    if isinstance(group, bool) or group not in QUANT_GROUP_SIZES:
        raise ValueError(
            f"{what} group_size {short_repr(group)} is not one MLX quantizes with ({QUANT_GROUP_SIZES})"
        )


def model_config(raw: dict) -> dict:
    """A converted model's config.json, checked: reflex_config's keys, then the keys
    `python -m convert` and `reflex-mlx train` add (format version, layer count,
    adapter layers inside the backbone, backbone folder, precisions, LoRA).
    ValueError in one line."""
    from .errors import short_repr

    if not isinstance(raw, dict):
        raise ValueError("the model config is not a mapping")
    if raw.get("format") != MODEL_FORMAT:
        raise ValueError(f"format {short_repr(raw.get('format'))} is not {MODEL_FORMAT!r}")
    version = raw.get("format_version")
    if isinstance(version, bool) or version not in KNOWN_FORMAT_VERSIONS:
        raise ValueError(
            f"format_version {short_repr(version)} is not one this reflex-mlx reads "
            f"({', '.join(map(str, KNOWN_FORMAT_VERSIONS))})"
        )
    if "num_layers" not in raw:
        raise ValueError("config key 'num_layers' is missing")
    cfg = reflex_config(raw)
    layers, count = cfg.get("adapter_layers"), cfg["num_layers"]
    if not isinstance(layers, list) or not 0 < len(layers) <= count:
        size = len(layers) if isinstance(layers, list) else short_repr(layers)
        raise ValueError(f"adapter_layers must list 1 to {count} layers (num_layers), not {size}")
    for before, layer in zip([-1, *layers], layers, strict=False):
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < count:
            raise ValueError(
                f"adapter_layers holds {short_repr(layer)}: each must be a backbone layer 0..{count - 1}"
            )
        if layer <= before:
            raise ValueError(f"adapter_layers must be distinct and increasing: {short_repr(layers)}")
    backbone = cfg.get("backbone", BACKBONE_DIR)
    if (
        not isinstance(backbone, str)
        or not backbone
        or backbone in (".", "..")
        or any(c in backbone for c in "/\\\0")
    ):
        raise ValueError(f"config key 'backbone' must name a folder in the model, not {short_repr(backbone)}")
    if cfg.get("adapter_quantization") is not None:
        quantization_params(cfg["adapter_quantization"], "adapter_quantization")
    if cfg.get("adapter_dtype", "float32") not in FLOAT_DTYPES:
        raise ValueError(f"adapter_dtype {short_repr(cfg.get('adapter_dtype'))} is not one of {FLOAT_DTYPES}")
    for key in ("text_head", "text_mode"):
        if key in cfg and not isinstance(cfg[key], bool):
            raise ValueError(f"config key {key!r} must be true or false, not {short_repr(cfg[key])}")
    memory = cfg.get("memory")
    if memory is not None and (
        not isinstance(memory, dict)
        or not all(
            isinstance(memory.get(k), (int, float)) and not isinstance(memory.get(k), bool)
            for k in ("resident_bytes", "bytes_per_cycle", "bits_per_weight")
        )
    ):
        raise ValueError(f"the config's memory entry is malformed: {short_repr(memory)}")
    lora = cfg.get("lora")
    if lora is not None:
        rank, alpha = (lora.get("rank"), lora.get("alpha", 1.0)) if isinstance(lora, dict) else (None, None)
        targets = lora.get("targets", "all") if isinstance(lora, dict) else None
        if (
            isinstance(rank, bool)
            or not isinstance(rank, int)
            or not 0 < rank <= cfg["hidden"]
            or isinstance(alpha, bool)
            or not isinstance(alpha, (int, float))
            or alpha != alpha
            or abs(alpha) > 1e6
            or not isinstance(targets, str)
            or len(targets) > 1000
        ):
            raise ValueError(f"the config's lora entry is malformed: {short_repr(lora)}")
    return cfg


def backbone_schema(raw: dict, model: dict) -> dict:
    """The backbone's config.json, checked: a supported family, sizes bounded, heads
    consistent, its identity the model config's (hidden size, layer count), its
    quantization one MLX can run. ValueError in one line."""
    from .errors import short_repr

    if not isinstance(raw, dict):
        raise ValueError("the backbone config is not a mapping")
    backbone_family(raw)
    for key, limit in _BACKBONE_LIMITS.items():
        if key in raw or key in _BACKBONE_REQUIRED:
            if key == "head_dim" and raw.get(key) is None:
                continue
            _positive_int("backbone config", key, raw.get(key), limit)
    heads, kv = raw["num_attention_heads"], raw.get("num_key_value_heads", raw["num_attention_heads"])
    if heads % kv:
        raise ValueError(f"backbone num_key_value_heads {kv} does not divide num_attention_heads {heads}")
    if raw.get("head_dim") is None and raw["hidden_size"] % heads:
        raise ValueError(f"backbone num_attention_heads {heads} does not divide its hidden_size")
    if raw["hidden_size"] != model["hidden"]:
        raise ValueError(f"backbone hidden_size {raw['hidden_size']} is not the model's {model['hidden']}")
    if raw["num_hidden_layers"] != model["num_layers"]:
        raise ValueError(
            f"backbone num_hidden_layers {raw['num_hidden_layers']} is not the model's num_layers "
            f"{model['num_layers']}"
        )
    if "tie_word_embeddings" in raw and not isinstance(raw["tie_word_embeddings"], bool):
        tie = short_repr(raw["tie_word_embeddings"])
        raise ValueError(f"backbone tie_word_embeddings must be true or false, not {tie}")
    quantization = raw.get("quantization")
    if quantization is not None:
        quantization_params(quantization, "backbone quantization")
        for path, layer in quantization.items():
            if path in ("bits", "group_size", "mode") or isinstance(layer, bool):
                continue
            quantization_params(layer, f"backbone quantization of {short_repr(path, 60)}")
    return raw
