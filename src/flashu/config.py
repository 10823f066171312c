"""Show-o2 model configuration: every dimension is a field, with named presets.

Presets:
  * ``1.5b`` / ``7b`` — the official Show-o2 dimensions (Qwen2.5-1.5B/7B-Instruct + SigLIP-so400m 26 layers +
    a 10-block, 2048-wide flow head + the Wan2.1 VAE).
  * ``tiny`` — random init, a denoising step in milliseconds on a CPU; for tests.
  * ``small`` — the 1.5B proportions (28 decoder layers, GQA 6:1, FFN 5.83×H, 26 SigLIP layers, 10 head blocks)
    scaled down so a full 50-step generation takes tens of seconds on a CPU; for benchmarks.
  * ``testbed`` — the trained shapes-world model shipped with flashu (``flashu.load_model("testbed")`` loads its
    weights; ``preset("testbed")`` is the architecture): pixel space (no VAE: the latent of a 32×32 image in
    [-1, 1] is the image itself, space-to-depth by 4 → 48 channels × 8×8), patch 1 → 64 image tokens, a 10-layer
    decoder, a 2-layer SigLIP branch and a 2-block flow head.

The official ``config.json`` carries only a few fields (hidden size, latent grid, vocabulary...); the LLM
dimensions come from ``llm_model_path``. :func:`Showo2Config.from_official_dict` maps it back; our own
``save_pretrained`` writes the official fields plus a ``flashu`` block with every dimension, so nothing needs a
network to rebuild the model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

WAN_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]
WAN_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]


@dataclass
class LLMConfig:
    """The Qwen2 decoder (``showo``)."""

    hidden_size: int = 1536
    num_layers: int = 28
    num_heads: int = 12
    num_kv_heads: int = 2
    head_dim: int = 128
    intermediate_size: int = 8960
    vocab_size: int = 151669
    tie_word_embeddings: bool = True
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6


@dataclass
class VisionConfig:
    """The semantic branch ``und_trans`` (SigLIP encoder layers) and its position table."""

    hidden_size: int = 1152
    num_layers: int = 26
    num_heads: int = 16
    intermediate_size: int = 4304
    layer_norm_eps: float = 1e-6
    position_grid: int = 27  # the position table is position_grid² rows; other grids interpolate it


@dataclass
class FlowHeadConfig:
    """The flow head: ``diffusion_head_a`` adaLN blocks and the ``diffusion_head_b`` final layer."""

    hidden_size: int = 2048
    num_layers: int = 10
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 64
    intermediate_size: int = 8192
    block_norm_eps: float = 1e-5
    qk_norm_eps: float = 1e-6
    final_norm_eps: float = 1e-6
    time_frequency_dim: int = 256
    rope_theta: float = 500_000.0
    rope_factor: float = 32.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192


VAE_KINDS = ("wan", "identity")


@dataclass
class VAEConfig:
    """``diffusers.AutoencoderKLWan`` constructor fields (the Wan2.1 VAE by default).

    ``kind="identity"``: pixel space, no VAE and no weights — the latent is the image in [-1, 1] itself, optionally
    rearranged space-to-depth (``torch.nn.functional.pixel_unshuffle``) by ``space_to_depth`` = s: ``z_dim`` 3·s²,
    ``spatial_factor`` s, mean 0 / std 1. The other fields are then unused.

    Why space-to-depth: Show-o2's unpatchify is a plain reshape (token k writes latent pixels p²k … p²k + p² − 1 in
    raster order) while its patch embedding reads the p×p block of token k, so with p > 1 every token must learn to
    fetch its output pixels from other tokens through attention. With s² pixels folded into channels and patch 1,
    token k reads and writes the same latent pixel (the same s×s block of the image).
    """

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    temperal_downsample: list[bool] = field(default_factory=lambda: [False, True, True])
    latents_mean: list[float] = field(default_factory=lambda: list(WAN_LATENTS_MEAN))
    latents_std: list[float] = field(default_factory=lambda: list(WAN_LATENTS_STD))
    kind: str = "wan"  # "wan" (AutoencoderKLWan) | "identity" (pixel space)
    space_to_depth: int = 1  # identity only: pixels folded into channels per side

    @property
    def spatial_factor(self) -> int:
        return self.space_to_depth if self.kind == "identity" else 2 ** (len(self.dim_mult) - 1)


@dataclass
class Showo2Config:
    """Everything needed to build a Show-o2 model without touching the network."""

    name: str = "custom"
    llm: LLMConfig = field(default_factory=LLMConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    head: FlowHeadConfig = field(default_factory=FlowHeadConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    patch_size: int = 2
    image_size: int = 432  # default resolution in pixels; other multiples of vae factor × patch work too
    max_text_len: int = 290  # prompt tokens kept in text-to-image (longer prompts are truncated)
    tokenizer: str = "qwen2.5"  # "qwen2.5" (from the checkpoint directory) or "local-bytes" (built offline)
    llm_model_path: str = "Qwen/Qwen2.5-1.5B-Instruct"
    clip_pretrained_model_path: str = "google/siglip-so400m-patch14-384"
    default_steps: int = 50
    default_guidance: float = 5.0
    # understanding: which positions form the bidirectional block (``model.UnderstandingInputs``): "official"
    # (inference_mmu.py: image tokens + <|vision_end|>) or "training" (mmu_dataset.py: time token + image tokens)
    understanding_layout: str = "official"
    # the calibration data FlashU uses for this model by default (a registered source, see accel/calibration.py);
    # "" = flashu's generic prompts and synthetic images
    calibration_source: str = ""
    # understanding: default image size in pixels when it differs from ``image_size`` (None: ``image_size``); the
    # SigLIP position table interpolates to either grid
    understanding_image_size: int | None = None

    # ------------------------------------------------------------------ derived sizes
    @property
    def latent_channels(self) -> int:
        return self.vae.z_dim

    @property
    def pixels_per_token(self) -> int:
        return self.vae.spatial_factor * self.patch_size

    def grid_for(self, image_size: int) -> int:
        """Tokens per side of the image grid at ``image_size`` pixels (validated)."""
        unit = self.pixels_per_token
        if image_size <= 0 or image_size % unit:
            raise ConfigError(
                f"image size {image_size} is not a positive multiple of {unit} "
                f"(VAE factor {self.vae.spatial_factor} × patch {self.patch_size}); pick e.g. {self.image_size}"
            )
        return image_size // unit

    @property
    def grid(self) -> int:
        return self.grid_for(self.image_size)

    @property
    def mmu_image_size(self) -> int:
        """Default understanding resolution: ``understanding_image_size`` or else ``image_size``."""
        return self.understanding_image_size or self.image_size

    @property
    def patch_dim(self) -> int:
        """Flow-head outputs per image token: patch² latent pixels × channels."""
        return self.patch_size * self.patch_size * self.latent_channels

    # ------------------------------------------------------------------ validation
    def validate(self) -> "Showo2Config":
        _check_types(self)
        llm, vis, head = self.llm, self.vision, self.head
        checks = [
            (llm.num_heads % llm.num_kv_heads == 0, "llm.num_heads must be a multiple of llm.num_kv_heads"),
            (head.num_heads % head.num_kv_heads == 0, "head.num_heads must be a multiple of head.num_kv_heads"),
            (vis.hidden_size % vis.num_heads == 0, "vision.hidden_size must be divisible by vision.num_heads"),
            (llm.head_dim % 2 == 0 and head.head_dim % 2 == 0, "head_dim must be even (rotary embedding)"),
            (head.time_frequency_dim % 2 == 0, "head.time_frequency_dim must be even"),
            (all(m > 0 for m in self.vae.dim_mult), f"vae.dim_mult entries must be positive, got {self.vae.dim_mult}"),
            (len(self.vae.temperal_downsample) == len(self.vae.dim_mult) - 1,
             "vae.temperal_downsample needs len(vae.dim_mult) - 1 entries"),
            (len(self.vae.latents_mean) == self.vae.z_dim == len(self.vae.latents_std),
             "vae.latents_mean/std need vae.z_dim entries"),
            (self.max_text_len > 0, "max_text_len must be positive"),
            (self.tokenizer in ("qwen2.5", "local-bytes"), "tokenizer must be 'qwen2.5' or 'local-bytes'"),
            (self.understanding_layout in ("official", "training"),
             f"understanding_layout must be 'official' or 'training', got {self.understanding_layout!r}"),
            (self.vae.kind in VAE_KINDS, f"vae.kind must be one of {VAE_KINDS}, got {self.vae.kind!r}"),
            (self.vae.kind != "identity" or (self.vae.z_dim == 3 * self.vae.space_to_depth ** 2
                                             and set(self.vae.latents_mean) == {0.0}
                                             and set(self.vae.latents_std) == {1.0}),
             "vae.kind 'identity' (pixel space) needs z_dim = 3·space_to_depth², latents_mean 0 and latents_std 1"),
        ]
        for name, value in _positive_ints(self):
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        for name, value in _positive_floats(self):
            if not value > 0:
                raise ConfigError(f"{name} must be a positive number, got {value}")
        if self.default_guidance < 0:
            raise ConfigError(f"default_guidance must be >= 0, got {self.default_guidance}")
        if any(s <= 0 for s in self.vae.latents_std):
            raise ConfigError("vae.latents_std must be positive")
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.grid_for(self.image_size)
        if self.understanding_image_size is not None:
            self.grid_for(self.understanding_image_size)
        return self

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Showo2Config":
        data = dict(data)
        subs = {"llm": LLMConfig, "vision": VisionConfig, "head": FlowHeadConfig, "vae": VAEConfig}
        for key, sub in subs.items():
            if key in data:
                if not isinstance(data[key], dict):
                    raise ConfigError(f"model config field {key} must be an object, got {data[key]!r}")
                data[key] = _construct(sub, data[key], f"{key}.")
        return _construct(cls, data, "").validate()

    def to_official_dict(self) -> dict[str, Any]:
        """``config.json`` as the official ``Showo2Qwen2_5`` writes it, plus our full ``flashu`` block."""
        return {
            "_class_name": "Showo2Qwen2_5",
            "_diffusers_version": "0.31.0",
            "add_qk_norm": True,
            "add_time_embeds": True,
            "clip_latent_dim": self.vision.hidden_size,
            "clip_pretrained_model_path": self.clip_pretrained_model_path,
            "hidden_size": self.llm.hidden_size,
            "image_latent_dim": self.latent_channels,
            "image_latent_height": self.grid,
            "image_latent_width": self.grid,
            "llm_model_path": self.llm_model_path,
            "llm_vocab_size": self.llm.vocab_size,
            "load_from_showo": True,
            "num_diffusion_layers": self.head.num_layers,
            "patch_size": self.patch_size,
            "video_latent_height": self.grid,
            "video_latent_width": self.grid,
            "flashu": self.to_dict(),
        }

    @classmethod
    def from_official_dict(cls, data: dict[str, Any]) -> "Showo2Config":
        """Rebuild a config from an official (or our) ``config.json``."""
        if "flashu" in data:
            if not isinstance(data["flashu"], dict):
                raise ConfigError(f"config.json field flashu must be an object, got {data['flashu']!r:.60}")
            return cls.from_dict(data["flashu"])
        hidden = data.get("hidden_size")
        base = next((p for p in (preset("1.5b"), preset("7b")) if p.llm.hidden_size == hidden), None)
        if base is None:
            raise ConfigError(
                f"config.json has hidden_size={hidden}; only the official Show-o2 sizes 1536 (1.5B) and 3584 (7B) "
                "can be rebuilt from an official config.json"
            )
        def integer(key: str, default: int) -> int:
            value = data.get(key, default)
            try:
                if isinstance(value, bool):
                    raise TypeError
                number = int(value)
                if number != value:
                    raise ValueError
            except (TypeError, ValueError, OverflowError):  # OverflowError: int(Infinity)
                raise ConfigError(f"config.json {key} must be an integer, got {value!r:.60}") from None
            return number

        base.llm.vocab_size = integer("llm_vocab_size", base.llm.vocab_size)
        base.vision.hidden_size = integer("clip_latent_dim", base.vision.hidden_size)
        base.head.num_layers = integer("num_diffusion_layers", base.head.num_layers)
        base.patch_size = integer("patch_size", base.patch_size)
        # "image_latent_height" is the image-token grid (27 at 432²): upstream sizes its position ids by it.
        grid = integer("image_latent_height", 27)
        if grid != integer("image_latent_width", grid):
            raise ConfigError("config.json: only square latent grids are supported")
        base.image_size = grid * base.patch_size * base.vae.spatial_factor
        for key in ("llm_model_path", "clip_pretrained_model_path"):
            value = data.get(key, getattr(base, key))
            if not isinstance(value, str):
                raise ConfigError(f"config.json {key} must be a string, got {value!r:.60}")
            setattr(base, key, value)
        if grid != 27:  # HQ checkpoints: 251 text tokens at 512² and 1024²; upstream understands at 432² (729
            base.max_text_len = 251  # image tokens) whatever the generation grid
            base.understanding_image_size = 27 * base.patch_size * base.vae.spatial_factor
        latent_dim = integer("image_latent_dim", base.latent_channels)
        if latent_dim != base.latent_channels:
            raise ConfigError("config.json image_latent_dim must be 16 (the Wan2.1 VAE) for official checkpoints")
        return base.validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def check_value(name: str, value, annotation: str) -> None:
    """``value`` has the JSON type its field's ``annotation`` declares (``int``, finite ``float``, ``bool``, ``str``,
    ``list[...]``, ``... | None``; other annotations are left to their own checks), else a one-line ConfigError."""
    kind = annotation.replace(" ", "")
    if kind.endswith("|None"):
        if value is None:
            return
        kind = kind[:-len("|None")]
    if kind.startswith("list["):
        inner = kind[5:-1]
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list of {inner}, got {value!r}")
        for i, item in enumerate(value):
            check_value(f"{name}[{i}]", item, inner)
        return
    expected = _SCALARS.get(kind)
    if expected is None:
        return
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        what = "a finite number"
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        what = "an integer"
    else:
        ok = isinstance(value, expected)
        what = f"a {kind}"
    if not ok:
        raise ConfigError(f"{name} must be {what}, got {value!r}")


def _check_types(cfg: "Showo2Config") -> None:
    """Every field has its declared JSON type (a config.json can say anything: "64", 64.5, null, [4], NaN)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in ("llm", "vision", "head", "vae"):
            expected = {"llm": LLMConfig, "vision": VisionConfig, "head": FlowHeadConfig, "vae": VAEConfig}[f.name]
            if not isinstance(value, expected):
                raise ConfigError(f"{f.name} must be an object, got {value!r}")
            for sub in dataclasses.fields(value):
                check_value(f"{f.name}.{sub.name}", getattr(value, sub.name), str(sub.type))
        else:
            check_value(f.name, value, str(f.type))


_POSITIVE_FLOATS = {"llm": ("rope_theta", "rms_norm_eps"), "vision": ("layer_norm_eps",),
                    "head": ("block_norm_eps", "qk_norm_eps", "final_norm_eps", "rope_theta", "rope_factor",
                             "rope_low_freq_factor", "rope_high_freq_factor")}


def _positive_floats(cfg: Showo2Config):
    for part, names in _POSITIVE_FLOATS.items():
        for name in names:
            yield f"{part}.{name}", getattr(getattr(cfg, part), name)


def _positive_ints(cfg: Showo2Config):
    for part_name in ("llm", "vision", "head", "vae"):
        part = getattr(cfg, part_name)
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            if isinstance(value, int) and not isinstance(value, bool):
                yield f"{part_name}.{f.name}", value
    for name in ("patch_size", "image_size", "default_steps"):
        yield name, getattr(cfg, name)


def _construct(cls, data: dict, prefix: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown model config field {prefix}{unknown[0]}")
    return cls(**data)


def _official(hidden: int) -> Showo2Config:
    if hidden == 1536:
        llm = LLMConfig()
        path = "Qwen/Qwen2.5-1.5B-Instruct"
    else:
        llm = LLMConfig(hidden_size=3584, num_heads=28, num_kv_heads=4, intermediate_size=18944,
                        tie_word_embeddings=False)
        path = "Qwen/Qwen2.5-7B-Instruct"
    return Showo2Config(name="1.5b" if hidden == 1536 else "7b", llm=llm, llm_model_path=path)


def _local_vae(base_dim: int, z_dim: int, dim_mult: list[int]) -> VAEConfig:
    mean = (WAN_LATENTS_MEAN * 2)[:z_dim]
    std = (WAN_LATENTS_STD * 2)[:z_dim]
    return VAEConfig(base_dim=base_dim, z_dim=z_dim, dim_mult=dim_mult, num_res_blocks=1,
                     temperal_downsample=[False] * (len(dim_mult) - 1), latents_mean=mean, latents_std=std)


LOCAL_VOCAB_SIZE = 320  # 256 byte tokens + special tokens, rounded up


def _tiny() -> Showo2Config:
    return Showo2Config(
        name="tiny",
        llm=LLMConfig(hidden_size=64, num_layers=5, num_heads=4, num_kv_heads=2, head_dim=16,
                      intermediate_size=256, vocab_size=LOCAL_VOCAB_SIZE, tie_word_embeddings=True),
        vision=VisionConfig(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96, position_grid=8),
        head=FlowHeadConfig(hidden_size=96, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=24,
                            intermediate_size=192, time_frequency_dim=32),
        vae=_local_vae(base_dim=8, z_dim=4, dim_mult=[1, 2]),
        image_size=32, max_text_len=48, tokenizer="local-bytes",
        llm_model_path="", clip_pretrained_model_path="", default_steps=10,
    )


def _small() -> Showo2Config:
    """The 1.5B proportions at 1/8 width (28 decoder layers, GQA 6:1, FFN 5.83×H, 26 SigLIP layers, 10 head
    blocks), 256 px: an understanding query's cost shares (LLM : SigLIP branch : VAE encode : decode per token)
    within 1.5 points of the official 1.5B's (``flashu info``)."""
    return Showo2Config(
        name="small",
        llm=LLMConfig(hidden_size=192, num_layers=28, num_heads=12, num_kv_heads=2, head_dim=16,
                      intermediate_size=1120, vocab_size=LOCAL_VOCAB_SIZE, tie_word_embeddings=True),
        vision=VisionConfig(hidden_size=144, num_layers=26, num_heads=4, intermediate_size=544, position_grid=16),
        head=FlowHeadConfig(hidden_size=256, num_layers=10, num_heads=8, num_kv_heads=2, head_dim=32,
                            intermediate_size=1024, time_frequency_dim=64),
        vae=_local_vae(base_dim=17, z_dim=16, dim_mult=[1, 2, 4, 4]),
        image_size=256, max_text_len=64, tokenizer="local-bytes",
        llm_model_path="", clip_pretrained_model_path="",
    )


def _small_7b() -> Showo2Config:
    """The 7B proportions at 1/8 width (hidden 448, 28 layers, GQA 7:1, FFN 2368, untied head) with ``small``'s
    visual branch, head and VAE, chosen so that an understanding query's cost shares per component match the
    official 7B's (``flashu info --model small-7b`` against ``--model 7b``; README quotes both)."""
    cfg = _small()
    cfg.name = "small-7b"
    cfg.llm = LLMConfig(hidden_size=448, num_layers=28, num_heads=28, num_kv_heads=4, head_dim=16,
                        intermediate_size=2368, vocab_size=LOCAL_VOCAB_SIZE, tie_word_embeddings=False)
    return cfg


def _medium() -> Showo2Config:
    """The 1.5B's decoder widths (hidden 1536, FFN 8960, GQA 6:1, head dim 128) at 5 layers (the fewest where r_LS
    0.2 skips one), with ``small``'s visual branch, flow head and VAE: the shapes where int8 kernels pay, at a depth
    where a 50-step text-to-image benchmark on one CPU thread takes minutes (``flashu info --model medium``)."""
    cfg = _small()
    cfg.name = "medium"
    cfg.llm = LLMConfig(hidden_size=1536, num_layers=5, num_heads=12, num_kv_heads=2, head_dim=128,
                        intermediate_size=8960, vocab_size=LOCAL_VOCAB_SIZE, tie_word_embeddings=True)
    return cfg


def identity_vae(space_to_depth: int = 1) -> VAEConfig:
    """Pixel space: no VAE, the image in [-1, 1] is the latent (space-to-depth by ``space_to_depth``)."""
    z = 3 * space_to_depth ** 2
    return VAEConfig(kind="identity", base_dim=1, z_dim=z, dim_mult=[1], num_res_blocks=1, temperal_downsample=[],
                     latents_mean=[0.0] * z, latents_std=[1.0] * z, space_to_depth=space_to_depth)


def _testbed() -> Showo2Config:
    """The trained shapes-world model (``flashu.testbed``): ~4.2 M parameters, 32×32 px in pixel space.

    Proportions of the official model where they matter to FlashU: a GQA 2:1 decoder with a 5× SwiGLU FFN (640
    neurons: r_p 0.2 keeps 512, a multiple of the 64-neuron alignment) and 10 layers (r_LS 0.2 skips 2).
    ``default_steps``/``default_guidance`` are the sampling settings the shipped checkpoint was evaluated with.
    """
    return Showo2Config(
        name="testbed",
        llm=LLMConfig(hidden_size=128, num_layers=10, num_heads=4, num_kv_heads=2, head_dim=32,
                      intermediate_size=640, vocab_size=LOCAL_VOCAB_SIZE, tie_word_embeddings=True,
                      rope_theta=10_000.0),
        vision=VisionConfig(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512, position_grid=8),
        head=FlowHeadConfig(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                            intermediate_size=512, time_frequency_dim=64),
        vae=identity_vae(space_to_depth=4),
        patch_size=1, image_size=32, max_text_len=48, tokenizer="local-bytes",
        llm_model_path="", clip_pretrained_model_path="", default_steps=20, default_guidance=3.0,
        understanding_layout="training",  # the layout this checkpoint was trained with
        calibration_source="shapes-world",
    )


def _testbed_v2() -> Showo2Config:
    """Testbed v2 (training; ``flashu.testbed.vqa``): the testbed's architecture, drawing the shapes world at 32 px
    and answering VQA-world questions about 64 px scenes (256 image tokens on textured backgrounds)."""
    cfg = _testbed()
    cfg.name = "testbed-v2"
    cfg.calibration_source = "vqa-world"  # shapes-world captions, VQA-world questions
    cfg.understanding_image_size = 64
    # the SigLIP position table at the understanding grid (16×16), as Show-o2's at its native 384 px: an 8×8 table
    # resized to 16×16 left the image tokens nearly blind to their column (benchmarks/token_probe.py); generation's
    # 32 px images use the resized table
    cfg.vision.position_grid = 16
    return cfg


_PRESETS = {"1.5b": lambda: _official(1536), "7b": lambda: _official(3584), "tiny": _tiny, "small": _small,
            "small-7b": _small_7b, "medium": _medium,
            "testbed": _testbed, "testbed-v2": _testbed_v2}
MODEL_PRESET_NAMES = tuple(_PRESETS)


def preset(name: str) -> Showo2Config:
    """A fresh copy of a named preset."""
    key = name.lower()
    if key not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(MODEL_PRESET_NAMES)}")
    return _PRESETS[key]().validate()


def load_config_file(path: str | Path) -> Showo2Config:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
        raise ConfigError(f"cannot read model config {path}: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"model config {path} must hold a JSON object")
    return Showo2Config.from_official_dict(data)
