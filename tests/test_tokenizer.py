"""Tokenizer: special-token ids, the offline byte tokenizer, and Show-o2's four added tokens on a Qwen-like one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from flashu.config import LOCAL_VOCAB_SIZE, preset
from flashu.errors import CheckpointError
from flashu.io.tokenizer import (
    QWEN_ADDED_TOKENS,
    SpecialTokens,
    build_local_tokenizer,
    load_tokenizer,
    save_tokenizer,
)

# The real Qwen2.5 ids (design §1.5); the local tokenizer has the same layout shifted down to 256 bytes.
QWEN_IDS = {"bos": 151644, "eos": 151645, "boi": 151652, "eoi": 151653, "img_pad": 151655, "vid_pad": 151656,
            "pad": 151665, "img": 151666, "bov": 151667, "eov": 151668}
QWEN_FIRST_ADDED = 151643


def qwen_config(vocab_size: int = 100_000):
    cfg = preset("tiny")
    cfg.tokenizer = "qwen2.5"
    cfg.llm.vocab_size = vocab_size
    return cfg


def write_fake_qwen(directory: Path, extra: tuple[str, ...] = ()) -> int:
    """A small byte-level BPE with Qwen2.5's added tokens and roles, saved as Qwen2Tokenizer; returns its size."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)} | {"he": len(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("h", "e")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    for text, special in QWEN_ADDED_TOKENS:
        backend.add_tokens([AddedToken(text, special=special, normalized=False)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens(list(extra))
    tok.save_pretrained(str(directory))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "Qwen2Tokenizer"
    config_path.write_text(json.dumps(config))
    return len(tok)


def test_local_special_ids_follow_the_qwen_layout():
    tok = build_local_tokenizer()
    ids = SpecialTokens.from_tokenizer(tok)
    shift = QWEN_FIRST_ADDED - 256
    assert {role: getattr(ids, role) + shift for role in QWEN_IDS} == QWEN_IDS
    assert len(tok) == 282 <= LOCAL_VOCAB_SIZE
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == ids.eos
    assert tok.pad_token == "[PAD]" and tok.pad_token_id == ids.pad


@pytest.mark.parametrize("text", [
    "hello world", "", "  leading and trailing  ", "tabs\tand\nnewlines\r\n", "naïve café – “quotes”",
    "日本語のテキスト", "emoji 🎉👩‍👩‍👧 flags 🇫🇷", "combining e\u0301 and zero\u200bwidth", "\x00\x7f control",
    "a . b , c 's", "<not special> <|also_not|>",
])
def test_local_round_trip(text):
    tok = build_local_tokenizer()
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_local_special_strings_are_single_ids_and_nothing_is_added():
    tok = build_local_tokenizer()
    ids = SpecialTokens.from_tokenizer(tok)
    encoded = tok("a<|im_start|>b<image>c<|vision_end|>", add_special_tokens=False).input_ids
    assert encoded == [ord("a"), ids.bos, ord("b"), ids.img, ord("c"), ids.eoi]
    assert tok("abc").input_ids == tok("abc", add_special_tokens=False).input_ids == [97, 98, 99]
    # [PAD] and Qwen's specials are skipped when decoding; <image> is a plain added token, as in Show-o2.
    assert tok.decode([ids.bos, 104, 105, ids.pad, ids.img], skip_special_tokens=True) == "hi<image>"


def test_load_tokenizer_local_preset():
    tok = load_tokenizer(preset("tiny"))
    assert len(tok) == len(build_local_tokenizer())


def test_qwen_like_gets_the_four_tokens_in_order(tmp_path):
    base = write_fake_qwen(tmp_path)
    tok = load_tokenizer(qwen_config(), tmp_path)
    assert len(tok) == base + 4
    vocab = tok.get_vocab()
    assert [vocab[t] for t in ("[PAD]", "<image>", "<|vid_start|>", "<|vid_end|>")] == list(range(base, base + 4))
    assert tok.pad_token == "[PAD]" and tok.eos_token == "<|im_end|>"
    ids = SpecialTokens.from_tokenizer(tok)
    assert (ids.pad, ids.img, ids.bov, ids.eov) == tuple(range(base, base + 4))
    assert tok("he<|im_start|>", add_special_tokens=False).input_ids == [vocab["he"], ids.bos]


def test_saved_tokenizer_is_not_extended_twice(tmp_path):
    base = write_fake_qwen(tmp_path / "qwen")
    save_tokenizer(load_tokenizer(qwen_config(), tmp_path / "qwen"), tmp_path / "saved")
    again = load_tokenizer(qwen_config(), tmp_path / "saved")
    assert len(again) == base + 4
    assert SpecialTokens.from_tokenizer(again).eov == base + 3


def test_partially_extended_tokenizer_is_rejected(tmp_path):
    write_fake_qwen(tmp_path, extra=("<image>",))
    with pytest.raises(CheckpointError, match="only some of"):
        load_tokenizer(qwen_config(), tmp_path)


def test_vocabulary_too_small_is_rejected(tmp_path):
    base = write_fake_qwen(tmp_path)
    with pytest.raises(CheckpointError, match=f"{base + 4} entries"):
        load_tokenizer(qwen_config(vocab_size=base + 3), tmp_path)


@pytest.mark.parametrize("layout", ["none", "empty", "no_config"])
def test_missing_tokenizer_files(tmp_path, layout):
    directory = None if layout == "none" else tmp_path
    if layout == "no_config":
        write_fake_qwen(tmp_path)
        (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json and tokenizer_config.json") as info:
        load_tokenizer(qwen_config(), directory)
    assert "\n" not in str(info.value)


def test_corrupt_tokenizer_file(tmp_path):
    write_fake_qwen(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot load the tokenizer") as info:
        load_tokenizer(qwen_config(), tmp_path)
    assert "\n" not in str(info.value)


def test_special_tokens_missing_names_the_tokens(tmp_path):
    write_fake_qwen(tmp_path)
    plain = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    with pytest.raises(CheckpointError, match=r"\[PAD\], <image>, <\|vid_start\|>, <\|vid_end\|>"):
        SpecialTokens.from_tokenizer(plain)
