"""Text tokenizer: the Qwen2.5 tokenizer plus Show-o2's four added tokens, or an offline byte-level stand-in.

Show-o2 resolves its special ids from the vocabulary (design §1.5), so every id here is looked up by token
string; nothing hard-codes 151644 & co. The local tokenizer mirrors Qwen's layout (the same special tokens in
the same order after the base vocabulary, then ``[PAD]``, ``<image>``, ``<|vid_start|>``, ``<|vid_end|>``) so
the tiny presets exercise exactly the code paths of the real checkpoints without a download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..config import Showo2Config
from ..errors import CheckpointError

# Qwen2.5's added tokens in id order (151643…151664), with whether each is "special" (skipped when decoding).
QWEN_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
)
PAD_TOKEN = "[PAD]"
# Added by Show-o2 after ``[PAD]`` with plain ``add_tokens``, in this order (their ids depend on it).
SHOWO2_TOKENS: tuple[str, ...] = ("<image>", "<|vid_start|>", "<|vid_end|>")
_ROLE_TOKENS = {
    "bos": "<|im_start|>", "eos": "<|im_end|>", "boi": "<|vision_start|>", "eoi": "<|vision_end|>",
    "img_pad": "<|image_pad|>", "vid_pad": "<|video_pad|>", "pad": PAD_TOKEN, "img": "<image>",
    "bov": "<|vid_start|>", "eov": "<|vid_end|>",
}


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the tokens that frame Show-o2 sequences (design §1.5)."""

    bos: int      # <|im_start|>
    eos: int      # <|im_end|>
    boi: int      # <|vision_start|>
    eoi: int      # <|vision_end|>
    img_pad: int  # <|image_pad|>
    vid_pad: int  # <|video_pad|>
    pad: int      # [PAD]
    img: int      # <image>
    bov: int      # <|vid_start|>
    eov: int      # <|vid_end|>

    @classmethod
    def from_tokenizer(cls, tok: PreTrainedTokenizerBase) -> "SpecialTokens":
        """Look every role up by its token string; a missing one means the wrong tokenizer files."""
        vocab = tok.get_vocab()
        missing = [s for s in _ROLE_TOKENS.values() if s not in vocab]
        if missing:
            raise CheckpointError(
                f"the tokenizer lacks the Show-o2 special tokens {', '.join(missing)}; "
                "use the Qwen2.5-Instruct tokenizer files"
            )
        return cls(**{role: vocab[s] for role, s in _ROLE_TOKENS.items()})


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in character for each byte 0…255 (what the ByteLevel pre-tokenizer emits)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars: dict[int, str] = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in chars)
    chars.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return [chars[b] for b in range(256)]


def build_local_tokenizer() -> PreTrainedTokenizerFast:
    """An offline byte-level tokenizer: token id == byte value, then Qwen's special tokens, then Show-o2's.

    No merges, so any text encodes losslessly (one token per UTF-8 byte) and decodes back exactly. 282 entries,
    within ``config.LOCAL_VOCAB_SIZE`` (the tiny presets' vocabulary).
    """
    vocab = {char: byte for byte, char in enumerate(_byte_alphabet())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_tokens([AddedToken(text, special=special, normalized=False) for text, special in QWEN_ADDED_TOKENS])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                  clean_up_tokenization_spaces=False)
    _add_showo2_tokens(tok)
    return tok


def _add_showo2_tokens(tok: PreTrainedTokenizerBase) -> None:
    """Show-o2's additions, in its exact order: the ids of [PAD], <image>, <|vid_start|>, <|vid_end|> follow."""
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    for text in SHOWO2_TOKENS:
        tok.add_tokens(text)


def load_tokenizer(config: Showo2Config, directory: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer ``config.tokenizer`` names; ``"qwen2.5"`` reads the files in ``directory`` (no network)."""
    if config.tokenizer == "local-bytes":
        tok: PreTrainedTokenizerBase = build_local_tokenizer()
    else:
        tok = _load_qwen(directory)
    if len(tok) > config.llm.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {len(tok)} entries but the model vocabulary has only {config.llm.vocab_size}; "
            "the tokenizer files do not belong to this checkpoint"
        )
    return tok


def _load_qwen(directory: str | Path | None) -> PreTrainedTokenizerBase:
    hint = ("put the Qwen2.5-Instruct tokenizer files tokenizer.json and tokenizer_config.json "
            "(from Qwen/Qwen2.5-1.5B-Instruct) in the checkpoint directory")
    if directory is None:
        raise CheckpointError(f"no tokenizer directory given; {hint}")
    root = Path(directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (root / name).is_file():
            raise CheckpointError(f"missing {root / name}; {hint}")
    try:
        tok = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    except Exception as exc:  # the Rust backend raises bare Exception on malformed tokenizer.json
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load the tokenizer in {root}: {reason}; {hint}") from None
    vocab = tok.get_vocab()
    present = [text in vocab for text in (PAD_TOKEN, *SHOWO2_TOKENS)]
    if not any(present):  # the stock Qwen2.5 tokenizer: add the four tokens the way Show-o2 did
        _add_showo2_tokens(tok)
    elif not all(present):
        raise CheckpointError(
            f"the tokenizer in {root} has only some of [PAD], <image>, <|vid_start|>, <|vid_end|>, so their ids "
            "cannot match Show-o2's; use the unmodified Qwen2.5-Instruct tokenizer files"
        )
    return tok


def save_tokenizer(tok: PreTrainedTokenizerBase, directory: str | Path) -> None:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` (what :func:`load_tokenizer` reads back)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(directory))
