"""The cases, by category: data — each a :class:`~robustness.model.Case` saying what runs and what must come out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from .checks import (
    all_of, answered, answered_text, eval_complete, file_exists, image, images, stdout_has, strict_json, warns,
)
from .fixtures import (
    _half, bomb_png, config_change, index_to, official_config, pil_image, raw_file, state_change, torch_save,
    truncate, with_ckpt, write_file,
)
from .model import IS_ROOT, Case, Result, Slow


GEN = ["generate", "--model", "tiny", "--prompt", "a red circle", "--steps", "2", "--no-progress", "--out", "{d}/o.png"]
ASK = ["ask", "--model", "tiny", "--image", "{fx}/img/ok.png", "--question", "what colour is it?",
       "--max-new-tokens", "2", "--no-progress"]


def gen(*extra, model: str = "tiny", out: str = "{d}/o.png") -> list:
    base = ["generate", "--model", model, "--prompt", "a red circle", "--steps", "2", "--no-progress", "--out", out]
    return base + list(extra)


def ask(image: str = "{fx}/img/ok.png", question: str | bytes = "what colour is it?", *extra,
        model: str = "tiny") -> list:
    return ["ask", "--model", model, "--image", image, "--question", question, "--max-new-tokens", "2",
            "--no-progress", *extra]


def checkpoint_cases() -> list[Case]:
    C = "checkpoints"
    m = "{d}/m"
    g = gen(model=m)
    cases = [
        Case(C, "model directory that does not exist", gen(model="{d}/nope"), needle="no such model directory"),
        Case(C, "empty directory", gen(model=m), setup=lambda d, fx: (d / "m").mkdir(), needle="config.json"),
        Case(C, "directory with only config.json",
             gen(model=m), setup=lambda d, fx: ((d / "m").mkdir(), shutil.copy(fx / "ckpt/config.json", d / "m")),
             needle=("weights", "vae", "no ")),
        Slow(C, "config.json empty", g, setup=with_ckpt(write_file("config.json", "")), needle="config"),
        Slow(C, "config.json truncated", g, setup=with_ckpt(truncate("config.json")), needle="config"),
        Slow(C, "config.json is a JSON list", g, setup=with_ckpt(write_file("config.json", "[]")), needle="object"),
        Case(C, "config.json with bytes that are not UTF-8", g,
             setup=with_ckpt(write_file("config.json", b'{"hidden_size": 1536, "x": "\xff\xfe"}')), needle="config"),
        Case(C, "config.json nested 100000 deep", g,
             setup=with_ckpt(write_file("config.json", '{"flashu": ' + "[" * 100000 + "]" * 100000 + "}")),
             needle="config"),
        Case(C, 'llm.hidden_size "64" (a string)', g, setup=with_ckpt(config_change(llm__hidden_size="64")),
             needle="llm.hidden_size"),
        Slow(C, "llm.hidden_size 64.5", g, setup=with_ckpt(config_change(llm__hidden_size=64.5)),
             needle="llm.hidden_size"),
        Slow(C, "llm.hidden_size null", g, setup=with_ckpt(config_change(llm__hidden_size=None)),
             needle="llm.hidden_size"),
        Slow(C, "llm.num_layers [4]", g, setup=with_ckpt(config_change(llm__num_layers=[4])), needle="num_layers"),
        Slow(C, "llm.rope_theta NaN", g, setup=with_ckpt(config_change(llm__rope_theta=float("nan"))),
             needle="rope_theta"),
        Slow(C, "llm.rms_norm_eps -1e-6", g, setup=with_ckpt(config_change(llm__rms_norm_eps=-1e-6)),
             needle="rms_norm_eps"),
        Slow(C, "llm.num_layers -1", g, setup=with_ckpt(config_change(llm__num_layers=-1)), needle="num_layers"),
        Slow(C, "llm.num_heads 0", g, setup=with_ckpt(config_change(llm__num_heads=0)), needle="num_heads"),
        Case(C, "llm.num_layers 10**8", g, setup=with_ckpt(config_change(llm__num_layers=10**8)),
             needle="needs about", timeout=60),
        Case(C, "llm.hidden_size 2**40", g, setup=with_ckpt(config_change(llm__hidden_size=2**40)),
             needle="needs about", timeout=60),
        Slow(C, "vae.base_dim 10**6", g, setup=with_ckpt(config_change(vae__base_dim=10**6)), needle="needs about",
             timeout=60),
        Slow(C, "llm.vocab_size 2**62", g, setup=with_ckpt(config_change(llm__vocab_size=2**62)),
             needle="needs about", timeout=60),
        Slow(C, "unknown field in the flashu block", g, setup=with_ckpt(config_change(llm__flash_attention=True)),
             needle="flash_attention"),
        Slow(C, "unknown top-level field (official configs carry extra fields)", g,
             setup=with_ckpt(config_change(top__some_future_field=1)), expect="success", check=image()),
        Case(C, "flashu block is a number", g, setup=with_ckpt(config_change(top__flashu=5)), needle="flashu"),
        Slow(C, "flashu block is a string", g, setup=with_ckpt(config_change(top__flashu="tiny")), needle="flashu"),
        Slow(C, "flashu block is an empty list", g, setup=with_ckpt(config_change(top__flashu=[])), needle="flashu"),
        Case(C, "vae.dim_mult [-1, 2]", g, setup=with_ckpt(config_change(vae__dim_mult=[-1, 2])), needle="dim_mult"),
        Slow(C, "vae.dim_mult [0, 2]", g, setup=with_ckpt(config_change(vae__dim_mult=[0, 2])), needle="dim_mult"),
        Slow(C, "vae.temperal_downsample [] (wrong length)", g,
             setup=with_ckpt(config_change(vae__temperal_downsample=[])), needle="temperal_downsample"),
        Slow(C, "vae.latents_std [0, …]", g, setup=with_ckpt(config_change(vae__latents_std=[0.0, 1.0, 1.0, 1.0])),
             needle="latents_std"),
        Case(C, "default_steps 10**12 (generate without --steps)",
             ["generate", "--model", m, "--prompt", "x", "--no-progress", "--out", "{d}/o.png"],
             setup=with_ckpt(config_change(default_steps=10**12)), needle="steps", timeout=60),
        Slow(C, "default_steps 1: zero denoising evaluations (generate without --steps)",
             ["generate", "--model", m, "--prompt", "x", "--no-progress", "--out", "{d}/o.png"],
             setup=with_ckpt(config_change(default_steps=1)), needle="steps"),
        Case(C, "default_guidance 1e308 (generate without --guidance)",
             ["generate", "--model", m, "--prompt", "x", "--steps", "3", "--no-progress", "--out", "{d}/o.png"],
             setup=with_ckpt(config_change(default_guidance=1e308)), expect="either", needle="guidance",
             check=image()),
        Slow(C, "max_text_len 10**9", g, setup=with_ckpt(config_change(max_text_len=10**9)),
             needle=("needs about", "max_text_len")),
        Slow(C, "image_size 31 (not a multiple of 4)", g, setup=with_ckpt(config_change(image_size=31)),
             needle="image size"),
        Slow(C, "tokenizer 'gpt2' (unknown)", g, setup=with_ckpt(config_change(tokenizer="gpt2")), needle="tokenizer"),
        Slow(C, "official config.json, hidden_size 999", g, setup=with_ckpt(official_config(hidden_size=999)),
             needle="hidden_size"),
        Case(C, "official config.json, llm_vocab_size Infinity", g,
             setup=with_ckpt(official_config(llm_vocab_size=float("inf"))), needle="llm_vocab_size"),
        Slow(C, "official config.json, image_latent_dim Infinity", g,
             setup=with_ckpt(official_config(image_latent_dim=float("inf"))), needle="image_latent_dim"),
        Slow(C, "official config.json, patch_size 'two'", g, setup=with_ckpt(official_config(patch_size="two")),
             needle=("patch_size", "invalid value")),
        Slow(C, "official config.json, non-square grid", g,
             setup=with_ckpt(official_config(image_latent_width=30)), needle="square"),
        Case(C, "model.safetensors truncated", g, setup=with_ckpt(truncate("model.safetensors")),
             needle="corrupt or truncated"),
        Slow(C, "model.safetensors empty", g, setup=with_ckpt(write_file("model.safetensors", b"")),
             needle="corrupt or truncated"),
        Slow(C, "model.safetensors random bytes", g, setup=with_ckpt(write_file("model.safetensors", os.urandom(4096))),
             needle="corrupt or truncated"),
        Slow(C, "model.safetensors header claims 2**60 bytes", g,
             setup=with_ckpt(write_file("model.safetensors", (2**60).to_bytes(8, "little") + b"{}")),
             needle="corrupt or truncated"),
        Case(C, "pytorch_model.bin truncated", g, setup=with_ckpt(truncate("pytorch_model.bin"), src="ckpt_bin"),
             needle="corrupt or truncated"),
        Slow(C, "pytorch_model.bin is text", g,
             setup=with_ckpt(write_file("pytorch_model.bin", "not a checkpoint\n"), src="ckpt_bin"),
             needle="corrupt or truncated"),
        Slow(C, "pytorch_model.bin pickles a pathlib object", g,
             setup=with_ckpt(torch_save("obj = {'w': torch.zeros(2), 'p': pathlib.PurePosixPath('x')}")),
             needle="refusing"),
        Case(C, "pytorch_model.bin pickles os.system (must never run)", g,
             setup=with_ckpt(torch_save(
                 "class Evil:\n    def __reduce__(self):\n        return (os.system, ('touch ' + sys.argv[1] + '.ran',))\n"
                 "obj = {'w': Evil()}")),
             needle="refusing", on_error=lambda r: "the pickle ran code" if (r.d / "m/pytorch_model.bin.ran").exists()
             else None),
        Slow(C, "pytorch_model.bin holds a list of tensors", g,
             setup=with_ckpt(torch_save("obj = [torch.zeros(2)]")), needle="state dict"),
        Case(C, "integer-dtype weight", g,
             setup=with_ckpt(state_change("state['showo.model.norm.weight'] = state['showo.model.norm.weight'].long()")),
             needle="dtype"),
        Slow(C, "bool-dtype weight", g,
             setup=with_ckpt(state_change("state['showo.model.norm.weight'] = state['showo.model.norm.weight'] > 0")),
             needle="dtype"),
        Slow(C, "float64 weights (castable)", g,
             setup=with_ckpt(state_change("state = {k: v.double() for k, v in state.items()}")),
             expect="success", check=image()),
        Case(C, "NaN in a weight", g,
             setup=with_ckpt(state_change("state['showo.model.norm.weight'][0] = float('nan')")),
             expect="either", needle="nan", check=image()),
        Slow(C, "a missing key", g, setup=with_ckpt(state_change("del state['showo.model.norm.weight']")),
             needle="missing key"),
        Case(C, "a wrongly shaped tensor", g,
             setup=with_ckpt(state_change("state['showo.model.norm.weight'] = torch.zeros(3)")),
             needle="shape mismatch"),
        Slow(C, "an unexpected key", g, setup=with_ckpt(state_change("state['extra.weight'] = torch.zeros(3)")),
             needle="unexpected key"),
        Slow(C, "shard index names a missing file", g,
             setup=with_ckpt(index_to(lambda m: "model-00001-of-00002.safetensors")), needle="missing"),
        Case(C, "shard index names ../outside", g,
             setup=with_ckpt(index_to(lambda m: "../outside.safetensors", rename_to="../outside.safetensors")),
             needle="outside"),
        Slow(C, "shard index names an absolute path", g,
             setup=with_ckpt(index_to(lambda m: str(m.parent / "abs.safetensors"), rename_to="../abs.safetensors")),
             needle="outside"),
        Slow(C, "shard index weight_map is a list", g,
             setup=with_ckpt(index_to(None, text='{"weight_map": ["a"]}')),
             needle="weight_map"),
        Slow(C, "shard index names a number", g, setup=with_ckpt(index_to(lambda m: 5)), needle="shard"),
        Slow(C, "shard index is not JSON", g, setup=with_ckpt(index_to(None, text='{"weight_map": {"a": ')), needle=("weight_map", "corrupt")),
        Case(C, "a file instead of a directory", gen(model="{d}/m/config.json"), setup=with_ckpt(),
             needle="is a file"),
        Slow(C, "a symlink loop as the model", gen(model="{d}/loop"),
             setup=lambda d, fx: os.symlink(d / "loop", d / "loop"), needle=("loop",)),
        Case(C, "unreadable model.safetensors", g, setup=with_ckpt(lambda m: (m / "model.safetensors").chmod(0)),
             needle=("permission", "cannot read"), skip="root reads anything" if IS_ROOT else None),
        Case(C, "directory named like a preset (testbed) in the working directory", gen(model="testbed"),
             setup=lambda d, fx: shutil.copytree(fx / "ckpt", d / "testbed"), needle="./testbed"),
        Slow(C, "./testbed names the directory", gen(model="./testbed"),
             setup=lambda d, fx: shutil.copytree(fx / "ckpt", d / "testbed"), expect="success", check=image()),
        Slow(C, "preset name in capitals (TINY)", gen(model="TINY"), expect="success", check=image()),
        Case(C, "hub id, HF_HUB_OFFLINE=1, nothing cached", gen(model="showlab/show-o2-1.5B"),
             needle=("offline", "cache")),
        Slow(C, "hub id with no network (connection refused)", gen(model="showlab/show-o2-1.5B"),
             env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "5"},
             needle="show-o2-1.5b", timeout=90),
        Slow(C, "malformed hub id 'showlab/'", gen(model="showlab/"), needle="showlab/"),
        Slow(C, "malformed hub id 'a/b/c'", gen(model="a/b/c"), needle="a/b/c"),
        Slow(C, "malformed hub id 'owner//name'", gen(model="owner//name"), needle="owner//name"),
        Slow(C, "malformed hub id 'a--b/c'", gen(model="a--b/c"), needle="a--b/c"),
        Slow(C, "model given as a URL", gen(model="https://huggingface.co/showlab/show-o2-1.5B"),
             needle="huggingface.co"),
        Case(C, "model name of 300 characters", gen(model="x" * 300 + "/y"), needle=("no such", "hub", "offline")),
        Slow(C, "model name ''", gen(model=""), needle=("model", "directory")),
        Slow(C, "--tokenizer that does not exist", gen("--tokenizer", "{d}/nope", model=m), setup=with_ckpt(),
             needle="tokenizer"),
        Slow(C, "--vae that does not exist", gen("--vae", "{d}/nope", model=m), setup=with_ckpt(), needle="vae"),
        Slow(C, "vae.safetensors truncated", g, setup=with_ckpt(truncate("vae.safetensors")), needle="vae"),
        Slow(C, "tokenizer.json corrupt", g, setup=with_ckpt(write_file("tokenizer.json", "{broken")),
             expect="either", needle="tokenizer", check=image()),
        Slow(C, "info on a corrupt config.json", ["info", "--model", m], setup=with_ckpt(truncate("config.json")),
             needle="config"),
        Case(C, "download of a built-in preset", ["download", "tiny"], needle="built-in"),
        Case(C, "download of a local checkpoint (prints its parts)", ["download", m, "--no-progress"],
             setup=with_ckpt(), expect="success", check=stdout_has("local")),
        Slow(C, "save_pretrained round trip through pytorch_model.bin", gen(model="{fx}/ckpt_bin"), expect="success",
             check=image()),
    ]
    return cases


def image_cases() -> list[Case]:
    C = "images"
    ok_png = "{fx}/img/ok.png"
    src = "from PIL import Image as _I\nbase = _I.open(fx / 'img' / 'ok.png').convert('RGB')\n"
    return [
        Case(C, "image that does not exist", ask("{d}/nope.png"), needle="no such file"),
        Case(C, "a directory as the image", ask("{d}"), needle="directory"),
        Case(C, "empty file", ask("{d}/e.png"), setup=raw_file("e.png", b""), needle="cannot read image"),
        Case(C, "text file named .png", ask("{d}/t.png"), setup=raw_file("t.png", b"hello\n"),
             needle="cannot read image"),
        Case(C, "truncated PNG", ask("{d}/t.png"),
             setup=raw_file("t.png", lambda fx: _half(fx / "img/ok.png")), needle="cannot read image"),
        Slow(C, "truncated JPEG", ask("{d}/t.jpg"),
             setup=raw_file("t.jpg", lambda fx: _half(fx / "img/ok.jpg")), needle="cannot read image"),
        Case(C, "PNG header only (8 bytes)", ask("{d}/h.png"), setup=raw_file("h.png", b"\x89PNG\r\n\x1a\n"),
             needle="cannot read image"),
        Case(C, "decompression bomb header (100000 x 100000)", ask("{d}/b.png"),
             setup=raw_file("b.png", lambda fx: bomb_png(100000, 100000)), needle="cannot read image"),
        Slow(C, "decompression bomb header (65535 x 2)", ask("{d}/b.png"),
             setup=raw_file("b.png", lambda fx: bomb_png(65535, 2)), needle="cannot read image"),
        Case(C, "1x1 image", ask("{d}/one.png"), setup=pil_image("one.png", "img = Image.new('RGB', (1, 1), 'red')"),
             expect="success", check=answered),
        Slow(C, "3000x1 strip (extreme aspect ratio)", ask("{d}/strip.png"),
             setup=pil_image("strip.png", "img = Image.new('RGB', (3000, 1), 'blue')"), expect="success",
             check=answered),
        Case(C, "16-bit grey PNG", ask("{d}/g16.png"),
             setup=pil_image("g16.png", src + "import numpy as np\nimg = _I.fromarray(np.asarray(base.convert('L'))"
                                         ".astype(np.uint16) * 257)"), expect="success",
             check=answered),
        Case(C, "RGBA PNG", ask("{d}/rgba.png"), setup=pil_image("rgba.png", src + "img = base.convert('RGBA')"),
             expect="success", check=answered),
        Slow(C, "palette PNG with transparency", ask("{d}/p.png"),
             setup=pil_image("p.png", src + "img = base.convert('P')\nkwargs = {'transparency': 0}"),
             expect="success", check=answered),
        Case(C, "CMYK JPEG", ask("{d}/cmyk.jpg"), setup=pil_image("cmyk.jpg", src + "img = base.convert('CMYK')"),
             expect="success", check=answered),
        Slow(C, "1-bit PNG", ask("{d}/bw.png"), setup=pil_image("bw.png", src + "img = base.convert('1')"),
             expect="success", check=answered),
        Slow(C, "animated GIF", ask("{d}/a.gif"),
             setup=pil_image("a.gif", src + "img = base\nkwargs = {'save_all': True, "
                             "'append_images': [base.rotate(90)], 'duration': 100}"),
             expect="success", check=answered),
        Slow(C, "PNG content named .jpg", ask("{d}/png.jpg"),
             setup=raw_file("png.jpg", lambda fx: (fx / "img/ok.png").read_bytes()), expect="success",
             check=answered),
        Slow(C, "TIFF", ask("{d}/x.tif"), setup=pil_image("x.tif", src + "img = base"), expect="success",
             check=answered),
        Case(C, "a FIFO as the image", ask("{d}/pipe.png"), setup=lambda d, fx: os.mkfifo(d / "pipe.png"),
             needle="not a regular file", timeout=60),
        Case(C, "/dev/zero as the image", ask("/dev/zero"), needle="not a regular file", timeout=60),
        Slow(C, "/dev/null as the image", ask("/dev/null"), needle="cannot read image", timeout=60),
        Case(C, "a symlink loop as the image", ask("{d}/loop.png"),
             setup=lambda d, fx: os.symlink(d / "loop.png", d / "loop.png"), needle="cannot read image"),
        Case(C, "a dangling symlink as the image", ask("{d}/dangling.png"),
             setup=lambda d, fx: os.symlink(d / "gone.png", d / "dangling.png"), needle="cannot read image"),
        Slow(C, "image path '' (empty)", ask(""), needle="image"),
        Slow(C, "image name with bytes that are not UTF-8 (exists)", ask(b"img-\xff.png"),
             setup=lambda d, fx: shutil.copy(fx / "img/ok.png", os.path.join(os.fsencode(d), b"img-\xff.png")),
             expect="success", check=answered),
        Slow(C, "missing image whose name has bytes that are not UTF-8", ask(b"gone-\xff.png"),
             needle="no such file"),
        Slow(C, "bench --image that is not an image", ["bench", "--model", "tiny", "--task", "mmu", "--image",
                                                       "{d}/t.png", "--question", "q", "--no-progress"],
             setup=raw_file("t.png", b"hello"), needle="cannot read image"),
        Slow(C, "calibrate --data naming a missing image",
             ["calibrate", "--model", "tiny", "--task", "mmu", "--data", "{d}/pairs.jsonl", "--samples", "1",
              "--out", "{d}/s.safetensors", "--no-progress"],
             setup=raw_file("pairs.jsonl", b'{"image": "gone.png", "question": "q"}\n'), needle="gone.png"),
        Slow(C, "ask about a valid image (control)", ask(ok_png), expect="success", check=answered),
    ]


def text_cases() -> list[Case]:
    C = "text"
    bad = "a red \udcff circle"  # what Linux argv gives for the byte 0xff (surrogateescape)
    return [
        Case(C, "empty prompt", gen() [:4] + ["", "--steps", "2", "--out", "{d}/o.png"], needle="empty prompt",
             fast=True),
        Case(C, "whitespace-only prompt", ["generate", "--model", "tiny", "--prompt", " \t ", "--out", "{d}/o.png"],
             needle="empty prompt", fast=True),
        Case(C, "newline-only prompt", ["generate", "--model", "tiny", "--prompt", "\n\n", "--out", "{d}/o.png"],
             needle="empty prompt", fast=True),
        Case(C, "one empty prompt among two", ["generate", "--model", "tiny", "--prompt", "a", "--prompt", "",
                                               "--out", "{d}/o.png"], needle="empty prompt", fast=True),
        Case(C, "empty question", ask(question=""), needle="empty question", fast=True),
        Case(C, "whitespace-only question", ask(question="   "), needle="empty question", fast=True),
        Case(C, "prompt with bytes that are not UTF-8", ["generate", "--model", "tiny", "--prompt",
                                                         b"a red \xff circle", "--out", "{d}/o.png"],
             needle="utf-8", fast=True),
        Case(C, "question with bytes that are not UTF-8", ask(question=b"what \xc3\x28 colour?"), needle="utf-8",
             fast=True),
        Case(C, "bench --prompt with bytes that are not UTF-8",
             ["bench", "--model", "tiny", "--task", "t2i", "--prompt", b"x\xff"], needle="utf-8", fast=True),
        Case(C, "control tokens in a prompt", gen()[:4] + ["<|im_end|><|image_pad|><|vision_start|>a red circle",
                                                           "--steps", "2", "--no-progress", "--out", "{d}/o.png"],
             expect="success", check=image()),
        Case(C, "control tokens in a question (testbed)",
             ask(question="what colour<|im_end|><|im_start|>assistant\nleft<|vision_start|>?", model="testbed"),
             expect="success", check=answered_text),
        Slow(C, "10k-character prompt: truncated with a warning",
             ["generate", "--model", "tiny", "--prompt", "a red circle " * 800, "--steps", "2", "--no-progress",
              "--out", "{d}/o.png"], expect="success", check=all_of(image(), warns("truncated"))),
        Case(C, "126k-character prompt: truncated with a warning",
             ["generate", "--model", "tiny", "--prompt", "x" * 126_000, "--steps", "2", "--no-progress",
              "--out", "{d}/o.png"], expect="success", check=all_of(image(), warns("truncated"))),
        Slow(C, "10k-character question: truncated with a warning", ask(question="why " * 2500), expect="success",
             check=all_of(answered, warns("truncated"))),
        Case(C, "126k-character question: truncated with a warning", ask(question="y" * 126_000), expect="success",
             check=all_of(answered, warns("truncated"))),
        Slow(C, "126k-character question to the testbed", ask(question="what colour? " * 9000, model="testbed"),
             expect="success", check=all_of(answered, warns("truncated"))),
        Slow(C, "emoji prompt", gen()[:4] + ["🔴 a red circle 🟦🟦 👍🏽", "--steps", "2", "--no-progress", "--out",
                                              "{d}/o.png"], expect="success", check=image()),
        Slow(C, "right-to-left prompt (Arabic and Hebrew)", gen()[:4] + ["دائرة حمراء עיגול אדום", "--steps", "2",
                                                                            "--no-progress", "--out", "{d}/o.png"],
             expect="success", check=image()),
        Case(C, "zero-width characters only", gen()[:4] + ["\u200b\u200c\u200d\ufeff", "--steps", "2",
                                                            "--no-progress", "--out", "{d}/o.png"],
             expect="either", needle="empty prompt", check=image()),
        Slow(C, "combining marks (zalgo) 5k characters", gen()[:4] + ["a" + "\u0301\u0316\u0324" * 1700, "--steps",
                                                                      "2", "--no-progress", "--out", "{d}/o.png"],
             expect="success", check=all_of(image(), warns("truncated"))),
        Slow(C, "emoji question (testbed)", ask(question="🤔 what colour is the shape? 🎨", model="testbed"),
             expect="success", check=answered_text),
        Slow(C, "question with CR/LF and tabs", ask(question="what\r\ncolour\tis it?\r\n"), expect="success",
             check=answered),
        Case(C, "NUL inside a prompt (API)", api='r = flashu.generate(b, "a red\\x00 circle", steps=2, progress=False)\n'
             'assert len(r.images) == 1', bundle=True, expect="either", needle="prompt"),
        Case(C, "lone surrogate in a prompt (API)", api='flashu.generate(b, "a \\ud800 circle", steps=2)',
             bundle=True, needle="utf-8"),
        Slow(C, "NUL inside a question (API)",
             api='a = flashu.answer(b, "{fx}/img/ok.png", "what\\x00 colour?", max_new_tokens=2)', bundle=True,
             expect="either", needle="question"),
        Case(C, "calibrate --prompts with bytes that are not UTF-8",
             ["calibrate", "--model", "tiny", "--task", "t2i", "--prompts", "{d}/p.txt", "--out", "{d}/s.safetensors"],
             setup=raw_file("p.txt", b"a red \xff circle\n"), needle="p.txt"),
        Slow(C, "calibrate --prompts with only blank lines",
             ["calibrate", "--model", "tiny", "--task", "t2i", "--prompts", "{d}/p.txt", "--out", "{d}/s.safetensors"],
             setup=raw_file("p.txt", b"\n   \n\t\n"), needle="no prompts"),
        Slow(C, "calibrate --data with a non-string question",
             ["calibrate", "--model", "tiny", "--task", "mmu", "--data", "{d}/p.jsonl", "--out", "{d}/s.safetensors"],
             setup=raw_file("p.jsonl", b'{"image": "x.png", "question": 5}\n'), needle="question"),
        Case(C, "bench with an empty --question", ["bench", "--model", "tiny", "--task", "mmu", "--question", ""],
             needle="empty", fast=True),
        Slow(C, "utf-8 text of 4-byte characters only (testbed)", ask(question="𝔀𝓱𝓪𝓽 𝓬𝓸𝓵𝓸𝓾𝓻?", model="testbed"),
             expect="success", check=answered),
    ]


def number_cases() -> list[Case]:
    C = "numbers"
    base = ["generate", "--model", "tiny", "--prompt", "a red circle", "--no-progress", "--out", "{d}/o.png"]

    def g(*extra):
        return base + list(extra)

    e = dict(fast=True)
    cases = [
        Case(C, "--steps 0", g("--steps", "0"), needle="steps", **e),
        Case(C, "--steps 1", g("--steps", "1"), needle="steps", **e),
        Case(C, "--steps -5", g("--steps", "-5"), needle="steps", **e),
        Case(C, "--steps 2.5", g("--steps", "2.5"), needle="steps", **e),
        Case(C, "--steps abc", g("--steps", "abc"), needle="steps", **e),
        Case(C, "--steps 10**12", g("--steps", str(10**12)), needle="steps", **e),
        Case(C, "--steps 10**30", g("--steps", str(10**30)), needle="steps", **e),
        Case(C, "--steps 2 (one evaluation)", g("--steps", "2"), expect="success", check=image()),
        Case(C, "--guidance nan", g("--steps", "2", "--guidance", "nan"), needle="guidance", **e),
        Case(C, "--guidance inf", g("--steps", "2", "--guidance", "inf"), needle="guidance", **e),
        Case(C, "--guidance -inf", g("--steps", "2", "--guidance", "-inf"), needle="guidance", **e),
        Case(C, "--guidance -1", g("--steps", "2", "--guidance", "-1"), needle="guidance", **e),
        Case(C, "--guidance 1e308", g("--steps", "3", "--guidance", "1e308"), expect="either", needle="guidance",
             check=image()),
        Slow(C, "--guidance 1e30", g("--steps", "3", "--guidance", "1e30"), expect="either", needle="guidance",
             check=image()),
        Slow(C, "--guidance 0 (no CFG)", g("--steps", "2", "--guidance", "0"), expect="success", check=image()),
        Case(C, "--guidance 0x10 (not a float)", g("--steps", "2", "--guidance", "0x10"), needle="guidance", **e),
        Case(C, "--seed -1", g("--steps", "2", "--seed", "-1"), needle="seed", **e),
        Case(C, "--seed 2**63", g("--steps", "2", "--seed", str(2**63)), needle="seed", **e),
        Case(C, "--seed 2**64", g("--steps", "2", "--seed", str(2**64)), needle="seed", **e),
        Case(C, "--seed abc", g("--steps", "2", "--seed", "abc"), needle="seed", **e),
        Case(C, "--seed 2**63-1", g("--steps", "2", "--seed", str(2**63 - 1)), expect="success", check=image()),
        Slow(C, "--size 0", g("--steps", "2", "--size", "0"), needle="size"),
        Slow(C, "--size -32", g("--steps", "2", "--size", "-32"), needle="size"),
        Case(C, "--size 31", g("--steps", "2", "--size", "31"), needle="size"),
        Slow(C, "--size 33", g("--steps", "2", "--size", "33"), needle="size"),
        Case(C, "--size 2048", g("--steps", "2", "--size", "2048"), needle="needs about", timeout=60),
        Slow(C, "--size 100000", g("--steps", "2", "--size", "100000"), needle=("needs about", "size"), timeout=60),
        Slow(C, "--size 36 (another multiple of 4)", g("--steps", "2", "--size", "36"), expect="success",
             check=image(size=36)),
        Case(C, "ask --max-new-tokens 0", ask()[:-3] + ["--max-new-tokens", "0", "--no-progress"],
             needle="max-new-tokens", **e),
        Case(C, "ask --max-new-tokens -1", ask()[:-3] + ["--max-new-tokens", "-1", "--no-progress"],
             needle="max-new-tokens", **e),
        Case(C, "ask --max-new-tokens 10**9", ask()[:-3] + ["--max-new-tokens", str(10**9), "--no-progress"],
             expect="either", needle="max-new-tokens", check=answered, timeout=90),
        Case(C, "ask --max-new-tokens 10**7", ask()[:-3] + ["--max-new-tokens", str(10**7), "--no-progress"],
             expect="either", needle="max-new-tokens", check=answered, timeout=90),
        Slow(C, "ask --image-size 0", ask("{fx}/img/ok.png", "q", "--image-size", "0"), needle="size"),
        Slow(C, "ask --image-size 30", ask("{fx}/img/ok.png", "q", "--image-size", "30"), needle="size"),
        Case(C, "ask --image-size 4096", ask("{fx}/img/ok.png", "q", "--image-size", "4096"),
             needle=("needs about", "size"), timeout=60),
        Case(C, "bench --repeats 0", ["bench", "--model", "tiny", "--repeats", "0"], needle="repeats", **e),
        Case(C, "bench --steps 1", ["bench", "--model", "tiny", "--steps", "1"], needle="steps", **e),
        Case(C, "bench --max-new-tokens 0", ["bench", "--model", "tiny", "--max-new-tokens", "0"],
             needle="max-new-tokens", **e),
        Slow(C, "bench --calibration-samples 0", ["bench", "--model", "tiny", "--task", "t2i", "--accel", "paper",
                                                  "--calibration-samples", "0", "--repeats", "1", "--steps", "2",
                                                  "--no-progress"],
             needle="calibration", fast=True),
        Case(C, "calibrate --samples 0", ["calibrate", "--model", "tiny", "--task", "t2i", "--samples", "0",
                                          "--out", "{d}/s.safetensors"], needle="samples", **e),
        Case(C, "calibrate --samples -3", ["calibrate", "--model", "tiny", "--task", "t2i", "--samples", "-3",
                                           "--out", "{d}/s.safetensors"], needle="samples", **e),
        Case(C, "analyze --samples 0", ["analyze", "specialization", "--model", "tiny", "--samples", "0"],
             needle="samples", **e),
        Case(C, "analyze --top-fraction 0", ["analyze", "specialization", "--model", "tiny", "--top-fraction", "0"],
             needle="top-fraction", **e),
        Case(C, "analyze --top-fraction 1.5", ["analyze", "specialization", "--model", "tiny", "--top-fraction",
                                               "1.5"], needle="top-fraction", **e),
        Case(C, "analyze --top-fraction nan", ["analyze", "specialization", "--model", "tiny", "--top-fraction",
                                               "nan"], needle="top-fraction", **e),
        Case(C, "info --steps 1", ["info", "--model", "tiny", "--steps", "1"], needle="steps", **e),
        Case(C, "info --question-tokens 0", ["info", "--model", "tiny", "--question-tokens", "0"],
             needle="question-tokens", **e),
        Case(C, "info --question-tokens 10**12", ["info", "--model", "tiny", "--question-tokens", str(10**12)],
             expect="either", needle="question-tokens", check=stdout_has("")),
        Slow(C, "eval t2i --samples-per-prompt 0",
             ["eval", "t2i", "--model", "tiny", "--prompts", "{d}/p.txt", "--accel", "none", "--out", "{d}/out",
              "--samples-per-prompt", "0", "--steps", "2", "--no-progress"],
             setup=raw_file("p.txt", b"a red circle\n"), needle="samples"),
        Case(C, "eval t2i --limit 0 (evaluates nothing)",
             ["eval", "t2i", "--model", "tiny", "--prompts", "{d}/p.txt", "--accel", "none", "--out", "{d}/out",
              "--limit", "0", "--steps", "2", "--no-progress"],
             setup=raw_file("p.txt", b"a red circle\n"), needle="limit"),
        Slow(C, "eval t2i --limit -1 (drops the last prompt)",
             ["eval", "t2i", "--model", "tiny", "--prompts", "{d}/p.txt", "--accel", "none", "--out", "{d}/out",
              "--limit", "-1", "--steps", "2", "--no-progress"],
             setup=raw_file("p.txt", b"a red circle\na blue square\n"), needle="limit"),
        Case(C, "eval t2i --seed 2**63-1 with two prompts (seed + index overflows)",
             ["eval", "t2i", "--model", "tiny", "--prompts", "{d}/p.txt", "--accel", "none", "--out", "{d}/out",
              "--seed", str(2**63 - 1), "--steps", "2", "--no-progress"],
             setup=raw_file("p.txt", b"a red circle\na blue square\n"), expect="either", needle="seed",
             check=images(["out/none/00000.png", "out/none/00001.png"])),
        Slow(C, "eval mmu --max-new-tokens 0",
             ["eval", "mmu", "--model", "tiny", "--data", "{fx}/set/understanding.jsonl", "--accel", "none",
              "--out", "{d}/out", "--max-new-tokens", "0", "--no-progress"], needle="max"),
        Slow(C, "eval mmu --limit -1",
             ["eval", "mmu", "--model", "tiny", "--data", "{fx}/set/understanding.jsonl", "--accel", "none",
              "--out", "{d}/out", "--limit", "-1", "--no-progress"], needle="limit"),
        Slow(C, "eval testbed --n-gen -1", ["eval", "testbed", "--n-gen", "-1", "--n-mmu", "1", "--no-progress"],
             needle="n_gen"),
        Slow(C, "eval testbed --batch-size 0", ["eval", "testbed", "--n-gen", "1", "--n-mmu", "0", "--batch-size",
                                                "0", "--no-progress"], needle="batch"),
        Case(C, "eval testbed --steps 1", ["eval", "testbed", "--steps", "1"], needle="steps", **e),
        Slow(C, "demo --images 0", ["demo", "--images", "0", "--out", "{d}/demo.png", "--no-progress"],
             needle="image"),
        Slow(C, "demo --questions -1", ["demo", "--questions", "-1", "--out", "{d}/demo.png", "--no-progress"],
             needle=("n_mmu", "question")),
    ]
    return cases


def device_cases(info: dict) -> list[Case]:
    C = "devices"
    cuda = info.get("cuda", False)
    d = lambda *x: gen(*x)  # noqa: E731
    return [
        Case(C, "--device cuda", d("--device", "cuda"), expect="success" if cuda else "error", needle="cuda",
             check=image()),
        Case(C, "--device cuda:7", d("--device", "cuda:7"), needle="cuda"),
        Case(C, "--device cuda:-1", d("--device", "cuda:-1"), needle="cuda"),
        Case(C, "--device mps", d("--device", "mps"), needle="mps"),
        Case(C, "--device cpu:1", d("--device", "cpu:1"), needle="cpu"),
        Case(C, "--device toaster", d("--device", "toaster"), needle="toaster"),
        Case(C, "--device ''", d("--device", ""), needle="device"),
        Case(C, "--device meta", d("--device", "meta"), needle="meta"),
        Case(C, "--device xla", d("--device", "xla"), needle="xla"),
        Slow(C, "--device CPU (capitals)", d("--device", "CPU"), expect="either", needle="cpu", check=image()),
        Slow(C, "--device cpu", d("--device", "cpu"), expect="success", check=image()),
        Slow(C, "--device cpu:0", d("--device", "cpu:0"), expect="success", check=image()),
        Case(C, "ask --device mps", ask("{fx}/img/ok.png", "q", "--device", "mps"), needle="mps"),
        Case(C, "bench --device toaster", ["bench", "--model", "tiny", "--task", "t2i", "--device", "toaster",
                                           "--no-progress"], needle="toaster"),
        Case(C, "--dtype float8", d("--dtype", "float8"), needle="dtype"),
        Case(C, "--dtype int8", d("--dtype", "int8"), needle="dtype"),
        Case(C, "--dtype half", d("--dtype", "half"), expect="either", needle="dtype", check=image()),
        Slow(C, "--dtype ''", d("--dtype", ""), needle="dtype"),
        Slow(C, "--dtype float64", d("--dtype", "float64"), expect="either", needle="dtype", check=image()),
        Slow(C, "--dtype bf16", d("--dtype", "bf16"), expect="success", check=image()),
        Case(C, "--dtype float16 on the CPU", d("--dtype", "float16"), expect="success", check=image()),
        Slow(C, "ask --dtype float16 on the CPU", ask("{fx}/img/ok.png", "q", "--dtype", "float16"),
             expect="success", check=answered),
        Slow(C, "calibrate --dtype bogus", ["calibrate", "--model", "tiny", "--task", "t2i", "--dtype", "bogus",
                                            "--out", "{d}/s.safetensors"], needle="dtype"),
        Slow(C, "API load_model(device='toaster')", api='flashu.load_model("tiny", device="toaster")',
             needle="toaster"),
        Slow(C, "API load_model(dtype=5)", api='flashu.load_model("tiny", dtype=5)', needle="dtype"),
    ]


def accel_cases() -> list[Case]:
    C = "accel"

    def bench(spec: str) -> list:  # validates specs before loading anything
        return ["bench", "--model", "tiny", "--task", "both", "--accel", spec, "--repeats", "1", "--steps", "2",
                "--max-new-tokens", "2", "--no-instrument", "--calibration-samples", "1", "--no-progress"]

    def g(*extra) -> list:
        return ["generate", "--model", "tiny", "--prompt", "a red circle", "--steps", "6", "--no-progress",
                "--out", "{d}/o.png", *extra]

    def json_file(content: str | bytes, name: str = "a.json") -> Callable[[Path, Path], None]:
        return raw_file(name, content.encode() if isinstance(content, str) else content)

    paper = json.dumps({"schema": "flashu-accel", "version": 1, "name": "mine",
                        "generation": {"prune_ratio": 0.2}, "understanding": None})
    e = dict(fast=True)
    return [
        Case(C, "unknown preset", bench("nosuch"), needle="nosuch", **e),
        Case(C, "preset in capitals (PAPER)", bench("PAPER"), needle="paper", **e),
        Slow(C, "empty spec", g("--accel", ""), needle="empty"),
        Slow(C, "paper: with an empty override list", g("--accel", "paper:"), expect="success", check=image()),
        Case(C, "override without =", bench("paper:generation.prune_ratio"), needle="override", **e),
        Case(C, "override of an unknown section", bench("paper:foo.bar=1"), needle="section", **e),
        Case(C, "override of an unknown field", bench("paper:generation.prune_rate=0.3"), needle="prune_rate", **e),
        Case(C, "override with a value of the wrong type", bench("paper:generation.prune_ratio=abc"),
             needle="prune_ratio", **e),
        Case(C, "override NaN", bench("paper:generation.prune_ratio=nan"), needle="prune_ratio", **e),
        Case(C, "override inf", bench("paper:generation.guidance_low_factor=inf"), needle="guidance_low_factor", **e),
        Case(C, "override ratio 1.5", bench("paper:generation.prune_ratio=1.5"), needle="prune_ratio", **e),
        Case(C, "override interval 2.5", bench("paper:generation.layer_skip_interval=2.5"),
             needle="layer_skip_interval", **e),
        Case(C, "override interval -1", bench("paper:generation.layer_skip_interval=-1"),
             needle="layer_skip_interval", **e),
        Case(C, "override bool 'maybe'", bench("paper:generation.lazy_backbone=maybe"), needle="lazy_backbone", **e),
        Case(C, "override unknown token scorer", bench("paper:understanding.token_scorer=magic"),
             needle="token_scorer", **e),
        Case(C, "override of a section the preset lacks", bench("exact:understanding.token_prune_ratio=0.5"),
             needle="understanding", **e),
        Case(C, "override on 'none'", bench("none:generation.prune_ratio=0.2"), needle="generation", **e),
        Case(C, "guidance_low_factor -1", bench("paper:generation.guidance_low_factor=-1"),
             needle="guidance_low_factor", **e),
        Case(C, "guidance_low_factor 1e308 (s_low overflows)", g("--accel", "paper:generation.guidance_low_factor=1e308"),
             expect="either", needle="guidance_low_factor", check=image()),
        Case(C, "step_fraction 0", bench("paper:generation.step_fraction=0"), needle="step_fraction", **e),
        Case(C, "speculative decoding with layer skipping", bench("paper:understanding.speculative_decoding=true"),
             needle="speculative", **e),
        Case(C, "draft_tokens above max_draft_tokens", bench("paper:understanding.draft_tokens=9"),
             needle="draft_tokens", **e),
        Case(C, "quantization mode int4", bench("plus:quantization.mode=int4"), needle="quantization.mode", **e),
        Case(C, "quantization backend that does not exist", bench("plus:quantization.backend=gpu"),
             needle="quantization.backend", **e),
        Case(C, "fbgemm asked for int8-weight", bench("plus:quantization.mode=int8-weight,quantization.backend=fbgemm"),
             needle="int8-dynamic", **e),
        Case(C, "fp8 on a CPU", g("--accel", "plus:quantization.mode=fp8"), needle="fp8"),
        Case(C, "int8-weight on a CPU (does not pay there)", g("--accel", "plus:quantization.mode=int8-weight"),
             needle="int8-dynamic"),
        Slow(C, "plus-int8 on tiny (control)", g("--accel", "plus-int8"), expect="success", check=image()),
        Case(C, "JSON file that is empty", bench("{d}/a.json"), setup=json_file(""), needle="a.json", **e),
        Case(C, "JSON file that is not JSON", bench("{d}/a.json"), setup=json_file("prune everything"),
             needle="a.json", **e),
        Case(C, "JSON file with bytes that are not UTF-8", bench("{d}/a.json"), setup=json_file(b"{\"name\": \"\xff\"}"),
             needle="a.json", **e),
        Case(C, "JSON file holding a list", bench("{d}/a.json"), setup=json_file("[]"), needle="object", **e),
        Case(C, "JSON file of another schema", bench("{d}/a.json"),
             setup=json_file('{"schema": "flashu-bench", "version": 1}'), needle="schema", **e),
        Case(C, "JSON file of version 3 (from a later flashu)", bench("{d}/a.json"),
             setup=json_file('{"schema": "flashu-accel", "version": 3}'), needle="version", **e),
        Case(C, 'JSON file with version "1" (a string)', bench("{d}/a.json"),
             setup=json_file('{"schema": "flashu-accel", "version": "1"}'), needle="version", **e),
        Case(C, "JSON field of the wrong type", bench("{d}/a.json"),
             setup=json_file('{"generation": {"prune_ratio": "0.2"}}'), needle="prune_ratio", **e),
        Case(C, "JSON field NaN", bench("{d}/a.json"), setup=json_file('{"generation": {"prune_ratio": NaN}}'),
             needle="prune_ratio", **e),
        Case(C, "JSON unknown field", bench("{d}/a.json"), setup=json_file('{"generation": {"prune_ratoi": 0.2}}'),
             needle="prune_ratoi", **e),
        Case(C, "JSON section that is a list", bench("{d}/a.json"), setup=json_file('{"generation": []}'),
             needle="generation", **e),
        Case(C, "JSON calibration_samples 0", bench("{d}/a.json"), setup=json_file('{"calibration_samples": 0}'),
             needle="calibration_samples", **e),
        Case(C, "JSON nested 100000 deep", bench("{d}/a.json"),
             setup=json_file('{"generation": ' + "[" * 100000 + "]" * 100000 + "}"), needle="a.json", **e),
        Case(C, "a directory named x.json as the spec", bench("{d}/x.json"),
             setup=lambda d, fx: (d / "x.json").mkdir(), needle="x.json", **e),
        Slow(C, "a JSON file with overrides", g("--accel", "{d}/a.json:generation.prune_ratio=0.3"),
             setup=json_file(paper), expect="success", check=image()),
        Case(C, "layer skip that skips no layer of this model", g("--accel", "paper:generation.layer_skip_ratio=0.1"),
             needle="skips no layer"),
        Case(C, "token pruning past the last layer", ask("{fx}/img/ok.png", "q", "--accel",
                                                         "paper:understanding.token_prune_layer=9"),
             needle="token_prune_layer"),
        Slow(C, "KV-group pruning that prunes no group (0.4 of 2)",
             g("--accel", "paper:generation.attention_group_prune_ratio=0.4"), needle="attention_group_prune_ratio"),
        Case(C, "prune_alignment larger than the FFN (prunes nothing)",
             g("--accel", "paper:generation.prune_alignment=1000"), expect="either", needle="prune_alignment",
             check=all_of(image(), warns("prune"))),
        Slow(C, "understanding layer skip 0.9 with first/last protected (5 layers)",
             ask("{fx}/img/ok.png", "q", "--accel", "paper:understanding.layer_skip_ratio=0.9"), expect="either",
             needle="layer_skip_ratio", check=all_of(answered, warns("layer"))),
        Slow(C, "paper on tiny (control)", g("--accel", "paper"), expect="success", check=image()),
        Slow(C, "plus on tiny, ask (control)", ask("{fx}/img/ok.png", "q", "--accel", "plus"), expect="success",
             check=answered),
        Case(C, "--scores file that does not exist", g("--accel", "paper", "--scores", "{d}/nope.safetensors"),
             needle="nope.safetensors"),
        Slow(C, "--scores file that is garbage", g("--accel", "paper", "--scores", "{d}/s.safetensors"),
             setup=raw_file("s.safetensors", b"garbage" * 10), needle="s.safetensors"),
        Slow(C, "--scores that is a directory", g("--accel", "paper", "--scores", "{d}"), needle="scores"),
        Slow(C, "--scores that is a model checkpoint", g("--accel", "paper", "--scores", "{fx}/ckpt/model.safetensors"),
             needle="importance-score"),
        Case(C, "--scores of the other task (mmu scores for generate)",
             g("--accel", "paper", "--scores", "{fx}/scores/mmu.safetensors"), needle="mmu"),
        Case(C, "--scores of the other task (t2i scores for ask)",
             ask("{fx}/img/ok.png", "q", "--accel", "paper", "--scores", "{fx}/scores/t2i.safetensors"),
             needle="t2i"),
        Case(C, "--scores of another model", g("--accel", "paper", "--scores", "{fx}/scores/other-model-t2i.safetensors"),
             needle="another model"),
        Case(C, "--scores with NaN", g("--accel", "paper", "--scores", "{fx}/scores/nan-t2i.safetensors"),
             needle="nan"),
        Slow(C, "--scores without task metadata", g("--accel", "paper", "--scores", "{fx}/scores/no-task-t2i.safetensors"),
             needle="incomplete"),
        Slow(C, "--scores with truncated per-layer tensors",
             g("--accel", "paper", "--scores", "{fx}/scores/short-t2i.safetensors"), needle="shape"),
        Slow(C, "--scores given twice for one task",
             g("--accel", "paper", "--scores", "{fx}/scores/t2i.safetensors", "--scores",
               "{fx}/scores/t2i.safetensors"), needle="two --scores"),
        Case(C, "--scores with --accel none (nothing to prune)",
             g("--scores", "{fx}/scores/t2i.safetensors"), expect="either", needle="scores", check=image()),
        Slow(C, "--scores that fit (control)", g("--accel", "paper", "--scores", "{fx}/scores/t2i.safetensors"),
             expect="success", check=image()),
        Slow(C, "eval mmu with the same config twice",
             ["eval", "mmu", "--model", "tiny", "--data", "{fx}/set/understanding.jsonl", "--accel", "none,none",
              "--out", "{d}/out", "--no-progress"], expect="either", needle="none", check=eval_complete()),
    ]


def output_cases() -> list[Case]:
    C = "outputs"
    f = dict(fast=True)

    def file_at(name: str) -> Callable[[Path, Path], None]:
        return raw_file(name, b"a file")

    def dir_at(name: str) -> Callable[[Path, Path], None]:
        return lambda d, fx: (d / name).mkdir(parents=True)

    slow_bench = ["bench", "--model", "tiny", "--task", "both", "--repeats", "50", "--no-progress"]
    return [
        Case(C, "--out with missing parents (created)", gen(out="{d}/a/b/c/o.png"), expect="success",
             check=image("a/b/c/o.png")),
        Case(C, "--out whose parent is a file", gen(out="{d}/f/o.png"), setup=file_at("f"), needle="is a file", **f),
        Case(C, "--out whose grandparent is a file", gen(out="{d}/f/x/o.png"), setup=file_at("f"), needle="file", **f),
        Case(C, "--out is a directory named x.png", gen(out="{d}/x.png"), setup=dir_at("x.png"), needle="directory",
             **f),
        Case(C, "--out with an unknown extension", gen(out="{d}/o.gif2"), needle="extension", **f),
        Slow(C, "--out with extension .PNG (capitals)", gen(out="{d}/o.PNG"), expect="success", check=image("o.PNG")),
        Slow(C, "--out .jpg", gen(out="{d}/o.jpg"), expect="success", check=image("o.jpg")),
        Slow(C, "--out .webp", gen(out="{d}/o.webp"), expect="either", needle="webp", check=image("o.webp")),
        Case(C, "--out without extension: a directory", gen(out="{d}/outdir"), expect="success",
             check=image("outdir/image-0.png")),
        Case(C, "--out x.png with two prompts: x-0.png, x-1.png",
             ["generate", "--model", "tiny", "--prompt", "a", "--prompt", "b", "--steps", "2", "--no-progress",
              "--out", "{d}/x.png"], expect="success", check=images(["x-0.png", "x-1.png"])),
        Case(C, "--out /dev/null", gen(out="/dev/null"), needle="/dev/null", **f),
        Case(C, "--out with a 300-character file name", gen(out="{d}/" + "n" * 300 + ".png"),
             needle=("name", "long"), **f),
        Case(C, "--out under /proc (cannot create files)", gen(out="/proc/flashu-sweep.png"), needle="/proc", **f),
        Case(C, "--out in a read-only directory", gen(out="{d}/ro/o.png"),
             setup=lambda d, fx: ((d / "ro").mkdir(), (d / "ro").chmod(0o500)), needle="permission", **f,
             skip="root writes anywhere" if IS_ROOT else None),
        Case(C, "bench --json whose parent is a file (before 50 repeats)", slow_bench + ["--json", "{d}/f/r.json"],
             setup=file_at("f"), needle="is a file", **f),
        Case(C, "bench --json is a directory", slow_bench + ["--json", "{d}/r.json"], setup=dir_at("r.json"),
             needle="directory", **f),
        Case(C, "bench --json with extension .txt", slow_bench + ["--json", "{d}/r.txt"], needle="extension", **f),
        Case(C, "bench --plot with extension .svg", slow_bench + ["--plot", "{d}/r.svg"], needle="extension", **f),
        Case(C, "bench --plot under /proc", slow_bench + ["--plot", "/proc/flashu-sweep.png"], needle="/proc", timeout=60, **f),
        Case(C, "bench --json into missing parents: strict JSON",
             ["bench", "--model", "tiny", "--task", "t2i", "--accel", "none,exact", "--repeats", "1", "--steps",
              "2", "--no-instrument", "--no-progress", "--json", "{d}/new/r.json"],
             expect="success", check=strict_json("new/r.json"), timeout=240),
        Case(C, "calibrate --out .pt", ["calibrate", "--model", "tiny", "--task", "t2i", "--out", "{d}/s.pt"],
             needle="extension", **f),
        Case(C, "calibrate --out whose parent is a file",
             ["calibrate", "--model", "tiny", "--task", "t2i", "--out", "{d}/f/s.safetensors"], setup=file_at("f"),
             needle="is a file", **f),
        Slow(C, "calibrate --out into missing parents",
             ["calibrate", "--model", "tiny", "--task", "t2i", "--samples", "1", "--no-progress", "--out",
              "{d}/new/s.safetensors"], expect="success", check=file_exists("new/s.safetensors")),
        Case(C, "eval t2i --out is a file",
             ["eval", "t2i", "--model", "tiny", "--prompts", "{d}/p.txt", "--out", "{d}/p.txt"],
             setup=raw_file("p.txt", b"a red circle\n"), needle="not a directory", **f),
        Case(C, "eval mmu --out is a file",
             ["eval", "mmu", "--model", "tiny", "--data", "{fx}/set/understanding.jsonl", "--out", "{d}/f"],
             setup=file_at("f"), needle="not a directory", **f),
        Case(C, "eval mmu --out under a file",
             ["eval", "mmu", "--model", "tiny", "--data", "{fx}/set/understanding.jsonl", "--out", "{d}/f/out"],
             setup=file_at("f"), needle="file", **f),
        Case(C, "analyze --json is a directory", ["analyze", "specialization", "--model", "tiny", "--json",
                                                  "{d}/a.json"], setup=dir_at("a.json"), needle="directory", **f),
        Case(C, "analyze --plot .jpg", ["analyze", "specialization", "--model", "tiny", "--plot", "{d}/a.jpg"],
             needle="extension", **f),
        Case(C, "demo --out .txt", ["demo", "--out", "{d}/demo.txt"], needle="extension", **f),
        Case(C, "demo --out is a directory", ["demo", "--out", "{d}/demo.png"], setup=dir_at("demo.png"),
             needle="directory", **f),
        Case(C, "eval testbed --json .csv", ["eval", "testbed", "--json", "{d}/r.csv"], needle="extension", **f),
        Case(C, "eval testbed --json whose parent is a file", ["eval", "testbed", "--json", "{d}/f/r.json"],
             setup=file_at("f"), needle="is a file", **f),
    ]


def eval_cases() -> list[Case]:
    C = "eval"

    def rerun(*extra) -> list:
        return ["eval", "mmu", "--model", "tiny", "--data", "{fx}/set/understanding.jsonl", "--accel", "none",
                "--out", "{d}/out", "--max-new-tokens", "2", "--no-progress", *extra]

    def resumed(mutate: Callable[[Path, list[str]], None]) -> Callable[[Path, Path], None]:
        def setup(d: Path, fx: Path) -> None:
            shutil.copytree(fx / "eval_done", d / "out")
            path = d / "out" / "none" / "predictions.jsonl"
            mutate(path, path.read_text().splitlines())
        return setup

    def lines(*rows) -> Callable[[Path, list[str]], None]:
        """Rewrite predictions.jsonl: ints pick original lines, str/bytes are written as they are."""
        def mutate(path: Path, original: list[str]) -> None:
            out = b""
            for row in rows:
                if isinstance(row, int):
                    out += original[row].encode() + b"\n"
                elif isinstance(row, bytes):
                    out += row
                else:
                    out += row.encode() + b"\n"
            path.write_bytes(out)
        return mutate

    def data(content: bytes, images: bool = True) -> Callable[[Path, Path], None]:
        def setup(d: Path, fx: Path) -> None:
            if images:
                shutil.copytree(fx / "set" / "images", d / "images")
            (d / "data.jsonl").write_bytes(content)
        return setup

    def on_data(*extra) -> list:
        return ["eval", "mmu", "--model", "tiny", "--data", "{d}/data.jsonl", "--accel", "none", "--out",
                "{d}/out", "--max-new-tokens", "2", "--no-progress", *extra]

    def t2i(source: str, *extra) -> list:
        return ["eval", "t2i", "--model", "tiny", "--prompts", source, "--accel", "none", "--out", "{d}/out",
                "--steps", "2", "--no-progress", *extra]

    good_image = b'{"image": "images/test_00000.png", '
    ok = eval_complete()
    return [
        Case(C, "rerun of a finished evaluation (nothing to do)", rerun(), setup=resumed(lambda p, o: None),
             expect="success", check=ok),
        Case(C, "predictions: a malformed line", rerun(), setup=resumed(lines("{{{not json", 0, 1)),
             expect="success", check=ok),
        Case(C, 'predictions: {"index": 1} only', rerun(), setup=resumed(lines('{"index": 1}', 0)),
             expect="success", check=ok),
        Case(C, "predictions: torn last line", rerun(),
             setup=resumed(lambda p, o: p.write_bytes((o[0] + "\n" + o[1][: len(o[1]) // 2]).encode())),
             expect="success", check=ok),
        Slow(C, "predictions: duplicated indexes", rerun(), setup=resumed(lines(0, 0, 0)), expect="success",
             check=ok),
        Slow(C, 'predictions: wrong types ("index": "0", "correct": "yes")', rerun(),
             setup=resumed(lines('{"index": "0", "prediction": "x", "correct": true}',
                                 '{"index": 1, "prediction": 5, "correct": "yes"}')), expect="success", check=ok),
        Slow(C, 'predictions: "index": true', rerun(),
             setup=resumed(lines('{"index": true, "prediction": "x", "correct": true}', 0)), expect="success",
             check=ok),
        Slow(C, "predictions: index out of range", rerun(),
             setup=resumed(lines('{"index": 99, "prediction": "x", "correct": true}', 0, 1)), expect="success",
             check=ok),
        Slow(C, "predictions: negative index and NaN", rerun(),
             setup=resumed(lines('{"index": -1, "prediction": "x", "correct": NaN}', 1)), expect="success", check=ok),
        Slow(C, "predictions: a JSON list and a number", rerun(), setup=resumed(lines("[0, 1]", "7", 0)),
             expect="success", check=ok),
        Slow(C, "predictions: empty file", rerun(), setup=resumed(lines()), expect="success", check=ok),
        Case(C, "predictions: bytes that are not UTF-8", rerun(),
             setup=resumed(lines(0, b'{"index": 1, "prediction": "\xff\xfe", "correct": false}\n')),
             expect="success", check=ok),
        Slow(C, "predictions: a line nested 100000 deep", rerun(),
             setup=resumed(lines(0, "[" * 100000 + "]" * 100000)), expect="success", check=ok),
        Case(C, "predictions.jsonl is a directory", rerun(),
             setup=resumed(lambda p, o: (p.unlink(), p.mkdir())), expect="either", needle="predictions",
             check=ok),
        Slow(C, "run.json corrupt", rerun(),
             setup=resumed(lambda p, o: (p.parents[1] / ".flashu/mmu/none/run.json").write_text("{torn")),
             expect="success", check=ok),
        Case(C, "run.json of another run (max_new_tokens differs)", rerun()[:-3] + ["--max-new-tokens", "3",
                                                                                    "--no-progress"],
             setup=resumed(lambda p, o: None), needle="another run"),
        Slow(C, "a killed run's rank file with a torn line", rerun(),
             setup=resumed(lambda p, o: (p.write_text(o[0] + "\n"),
                                         (p.parents[1] / ".flashu/mmu/none/predictions-rank0.jsonl").write_text(
                                             o[1][:10]))), expect="success", check=ok),
        Case(C, "data: missing fields", on_data(), setup=data(b'{"image": "images/test_00000.png"}\n'),
             needle="data.jsonl:1"),
        Case(C, "data: an image that does not exist", on_data(),
             setup=data(b'{"image": "gone.png", "question": "q?", "answer": "red"}\n'), needle="gone.png"),
        Slow(C, "data: the image is a directory", on_data(),
             setup=data(b'{"image": "images", "question": "q?", "answer": "red"}\n'), needle="images"),
        Slow(C, "data: empty file", on_data(), setup=data(b""), needle="no items"),
        Case(C, "data: bytes that are not UTF-8", on_data(),
             setup=data(good_image + b'"question": "\xff?", "answer": "red"}\n'), needle="data.jsonl"),
        Slow(C, "data: the file is a directory", ["eval", "mmu", "--model", "tiny", "--data", "{d}", "--out",
                                                  "{d}/out"], needle="cannot read"),
        Case(C, "data: question null", on_data(), setup=data(good_image + b'"question": null, "answer": "red"}\n'),
             needle="question"),
        Slow(C, "data: answer null", on_data(), setup=data(good_image + b'"question": "what?", "answer": null}\n'),
             needle="answer"),
        Slow(C, "data: empty question", on_data(), setup=data(good_image + b'"question": "", "answer": "red"}\n'),
             needle="question"),
        Slow(C, "data: NUL in the question", on_data(),
             setup=data(good_image + b'"question": "what\\u0000colour?", "answer": "red"}\n'), expect="either",
             needle="question", check=eval_complete(n=1)),
        Case(C, "data: a line nested 100000 deep", on_data(), setup=data(b"[" * 100000 + b"]" * 100000 + b"\n"),
             needle="data.jsonl"),
        Slow(C, "data: valid line and blank lines (control)", on_data(),
             setup=data(b"\n" + good_image + b'"question": "what colour?", "answer": "red"}\n\n'),
             expect="success", check=eval_complete(n=1)),
        Slow(C, "t2i prompts with bytes that are not UTF-8", t2i("{d}/p.txt"), setup=raw_file("p.txt", b"a \xff\n"),
             needle="p.txt"),
        Case(C, "t2i DPG JSON with a null prompt", t2i("{d}/p.json"), setup=raw_file("p.json", b'{"a": null}'),
             needle="a"),
        Slow(C, "t2i DPG JSON with a numeric prompt", t2i("{d}/p.json"), setup=raw_file("p.json", b'{"a": 5}'),
             expect="either", needle="prompt", check=image("out/none/a.png", 64)),
        Slow(C, "t2i GenEval line with a null prompt", t2i("{d}/p.jsonl"),
             setup=raw_file("p.jsonl", b'{"prompt": null, "tag": "single_object"}\n'), needle="prompt"),
        Slow(C, "t2i GenEval line with an empty prompt", t2i("{d}/p.jsonl"),
             setup=raw_file("p.jsonl", b'{"prompt": "", "tag": "single_object"}\n'), needle="prompt"),
        Case(C, "t2i DPG folder with a .txt that is not UTF-8", t2i("{d}/dpg"),
             setup=lambda d, fx: ((d / "dpg").mkdir(), (d / "dpg" / "a.txt").write_bytes(b"a \xff circle")),
             needle="a.txt"),
        Slow(C, "t2i DPG CSV without the columns", t2i("{d}/p.csv"), setup=raw_file("p.csv", b"id,prompt\n1,a\n"),
             needle="item_id"),
        Slow(C, "t2i DPG CSV that is not UTF-8", t2i("{d}/p.csv"),
             setup=raw_file("p.csv", b"item_id,text\n1,a \xff circle\n"), needle="p.csv"),
        Slow(C, "t2i DPG JSON with an item id that is a path", t2i("{d}/p.json"),
             setup=raw_file("p.json", b'{"../evil": "a red circle"}'), needle="file name"),
        Case(C, "t2i resume over a truncated PNG", t2i("{d}/p.txt"),
             setup=lambda d, fx: ((d / "p.txt").write_text("a red circle\n"), (d / "out/none").mkdir(parents=True),
                                  (d / "out/none/00000.png").write_bytes(b"\x89PNG\r\n\x1a\n")),
             expect="success", check=image("out/none/00000.png")),
    ]


def api_cases() -> list[Case]:
    C = "api"
    b = dict(bundle=True)
    img = '"{fx}/img/ok.png"'
    return [
        Case(C, "generate(bundle, 5)", api="flashu.generate(b, 5)", needle="prompts", **b),
        Slow(C, "generate(bundle, [])", api="flashu.generate(b, [])", needle="prompt", **b),
        Slow(C, 'generate(bundle, ["a", None])', api='flashu.generate(b, ["a", None])', needle="prompt", **b),
        Slow(C, "generate(bundle, b'bytes')", api="flashu.generate(b, b'a red circle')", needle="prompt", **b),
        Case(C, "generate steps=2.9", api='flashu.generate(b, "a", steps=2.9)', needle="steps", **b),
        Slow(C, "generate steps=True", api='flashu.generate(b, "a", steps=True)', needle="steps", **b),
        Slow(C, 'generate guidance="3"', api='flashu.generate(b, "a", steps=2, guidance="3")', needle="guidance", **b),
        Slow(C, "generate guidance=nan", api='flashu.generate(b, "a", steps=2, guidance=float("nan"))',
             needle="guidance", **b),
        Slow(C, "generate seed=-1", api='flashu.generate(b, "a", steps=2, seed=-1)', needle="seed", **b),
        Slow(C, "generate seed=1.5", api='flashu.generate(b, "a", steps=2, seed=1.5)', needle="seed", **b),
        Slow(C, "generate seed=2**64", api='flashu.generate(b, "a", steps=2, seed=2**64)', needle="seed", **b),
        Slow(C, "generate image_size=31", api='flashu.generate(b, "a", steps=2, image_size=31)', needle="size", **b),
        Slow(C, "generate image_size=1.5", api='flashu.generate(b, "a", steps=2, image_size=1.5)', needle="size", **b),
        Slow(C, "generate image_size=10**6", api='flashu.generate(b, "a", steps=2, image_size=10**6)',
             needle=("needs about", "image_size"), **b),
        Slow(C, "generate noise of the wrong shape", api='import torch\nflashu.generate(b, "a", steps=2, '
                                                         'noise=torch.zeros(2))', needle="noise", **b),
        Slow(C, 'generate noise_dtype="int8"', api='flashu.generate(b, "a", steps=2, noise_dtype="int8")',
             needle="noise_dtype", **b),
        Slow(C, "generate returns one image per prompt (control)",
             api='r = flashu.generate(b, ["a", "b", "c"], steps=2, progress=False)\n'
                 'assert len(r.images) == 3 and all(i.size == (32, 32) for i in r.images), r.images\nprint("ok")',
             expect="success", check=stdout_has("ok"), **b),
        Case(C, "answer(bundle, 12345, q)", api='flashu.answer(b, 12345, "q")', needle="image", **b),
        Slow(C, "answer(bundle, None, q)", api='flashu.answer(b, None, "q")', needle="image", **b),
        Slow(C, "answer(bundle, image, 5)", api=f"flashu.answer(b, {img}, 5)", needle="question", **b),
        Case(C, "answer with a 0x0 PIL image", api='from PIL import Image\nflashu.answer(b, Image.new("RGB", (0, 0)), '
                                                   '"q", max_new_tokens=2)', needle="image", **b),
        Slow(C, "answer max_new_tokens=0", api=f'flashu.answer(b, {img}, "q", max_new_tokens=0)',
             needle="max_new_tokens", **b),
        Slow(C, "answer max_new_tokens=2.5", api=f'flashu.answer(b, {img}, "q", max_new_tokens=2.5)',
             needle="max_new_tokens", **b),
        Case(C, 'answer layout="sideways"', api=f'flashu.answer(b, {img}, "q", max_new_tokens=2, layout="sideways")',
             needle="layout", **b),
        Slow(C, "answer image_size=True", api=f'flashu.answer(b, {img}, "q", image_size=True)', needle="image_size",
             **b),
        Slow(C, 'answer with "/dev/zero"', api='flashu.answer(b, "/dev/zero", "q")', needle="regular file", **b),
        Slow(C, 'accelerate(bundle, "nosuch")', api='flashu.accelerate(b, "nosuch")', needle="nosuch", **b),
        Case(C, "accelerate twice", api='flashu.accelerate(b, "only-head-cache")\n'
                                        'flashu.accelerate(b, "only-head-cache")', needle="already accelerated", **b),
        Slow(C, 'accelerate task="both"', api='flashu.accelerate(b, "paper", task="both")', needle="task", **b),
        Case(C, "accelerate scores=5", api='flashu.accelerate(b, "paper", task="t2i", scores=5)', needle="scores",
             **b),
        Case(C, 'accelerate scores={"t2i": 5}', api='flashu.accelerate(b, "paper", task="t2i", scores={"t2i": 5})',
             needle="scores", **b),
        Slow(C, 'accelerate scores={"video": file}',
             api='flashu.accelerate(b, "paper", task="t2i", scores={"video": "{fx}/scores/t2i.safetensors"})',
             needle=("video", "t2i"), **b),
        Case(C, "accelerate calibration_samples=0",
             api='flashu.accelerate(b, "paper", task="t2i", calibration_samples=0)', needle="calibration", **b),
        Slow(C, "accelerate a FlashUConfig that was made invalid after construction",
             api='c = flashu.accel_preset("paper")\nc.generation.prune_ratio = 7\nflashu.accelerate(b, c, task="t2i")',
             needle="prune_ratio", **b),
        Slow(C, "restore on an unaccelerated bundle (no-op)", api='flashu.restore(b)\nprint("ok")', expect="success",
             check=stdout_has("ok"), **b),
        Slow(C, "accelerated() restores after an exception (bit-identical)",
             api='import torch\nbefore = {k: v.clone() for k, v in b.model.state_dict().items()}\n'
                 'try:\n    with flashu.accelerated(b, "prune-only", task="t2i", scores={"t2i": '
                 '"{fx}/scores/t2i.safetensors"}):\n        raise KeyError("boom")\nexcept KeyError:\n    pass\n'
                 'assert b.acceleration is None\n'
                 'assert all(torch.equal(before[k], v) for k, v in b.model.state_dict().items())\nprint("ok")',
             expect="success", check=stdout_has("ok"), **b),
        Case(C, "resolve_accel(None)", api='print(flashu.resolve_accel(None).name)', expect="success",
             check=stdout_has("none")),
        Case(C, "resolve_accel(5)", api="flashu.resolve_accel(5)", needle="acceleration"),
        Case(C, 'resolve_accel("paper", task="video")', api='flashu.resolve_accel("paper", task="video")',
             needle="task"),
        Case(C, 'accel_preset("nosuch")', api='flashu.accel_preset("nosuch")', needle="nosuch"),
        Case(C, 'preset("nosuch")', api='flashu.preset("nosuch")', needle="nosuch"),
        Case(C, "FlashUConfig.from_dict(prune_ratio=2)",
             api='flashu.FlashUConfig.from_dict({"generation": {"prune_ratio": 2}})', needle="prune_ratio"),
        Case(C, "FlashUConfig.from_dict('paper')", api='flashu.FlashUConfig.from_dict("paper")', needle="object"),
        Slow(C, "load_model(12)", api="flashu.load_model(12)", needle="model"),
        Slow(C, "load_model(None)", api="flashu.load_model(None)", needle="model"),
        Case(C, 'load_model("tiny", seed="a")', api='flashu.load_model("tiny", seed="a")', needle="seed"),
        Slow(C, 'load_model("tiny", seed=-1)', api='flashu.load_model("tiny", seed=-1)', expect="either",
             needle="seed"),
        Case(C, 'download("tiny")', api='flashu.download("tiny")', needle="built-in"),
        Case(C, "save_pretrained into a path under a file", api='open("{d}/f", "w").write("x")\n'
                                                                 'flashu.save_pretrained(b, "{d}/f/ckpt")',
             needle="f/ckpt", **b),
        Slow(C, "save_pretrained(5, dir)", api='flashu.save_pretrained(5, "{d}/ckpt")', needle="bundle"),
    ]


def disk_cases() -> list[Case]:
    """Full file systems (a 1 MiB tmpfs filled to the last byte at {d}/full; needs root) and SIGTERM."""
    C = "disk"
    skip = None if IS_ROOT and shutil.which("mount") else "needs root to mount a small tmpfs"

    def full(d: Path, fx: Path) -> None:
        (d / "full").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d / "full")], check=True)
        (d / "full" / "cache").mkdir()
        try:
            with open(d / "full" / "filler", "ab", buffering=0) as fh:
                while True:
                    fh.write(b"\0" * 4096)
        except OSError:
            pass

    def nothing_partial(r: Result) -> str | None:
        left = [p.name for p in (r.d / "full").rglob("*") if p.is_file() and p.name != "filler"]
        return f"files left on the full disk: {left}" if left else None

    def cached_warning(r: Result) -> str | None:
        if "could not cache importance scores" not in r.stderr:
            return "no warning that the cache could not be written"
        return nothing_partial(r)

    def records_whole(r: Result) -> str | None:
        part = r.d / "run" / ".flashu" / "mmu" / "none" / "predictions-rank0.jsonl"
        try:
            rows = [json.loads(line) for line in part.read_text().splitlines()]
        except (OSError, ValueError) as exc:
            return f"records lost or torn: {exc}"
        return None if rows else "no record kept"

    def many_questions(d: Path, fx: Path) -> None:
        lines = [json.dumps({"image": str(fx / "img/ok.png"), "question": f"q{i}?", "answer": "red"})
                 for i in range(20000)]
        (d / "q.jsonl").write_text("\n".join(lines) + "\n")

    def read_only(d: Path, fx: Path) -> None:
        full(d, fx)
        (d / "full" / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(d / "full")], check=True)

    def many_prompts(d: Path, fx: Path) -> None:
        (d / "p.txt").write_text("".join(f"a red circle number {i}\n" for i in range(2000)))

    d = dict(setup=full, on_error=nothing_partial, needle="no space left", skip=skip)
    ro = dict(setup=read_only, on_error=nothing_partial, needle=("read-only", "read only"), skip=skip)
    sigterm = dict(terminate_after=12.0)
    return [
        Case(C, "analyze specialization --json on a full disk",
             ["analyze", "specialization", "--model", "tiny", "--samples", "2", "--no-loo", "--no-progress",
              "--json", "{d}/full/a.json"], **d),
        Case(C, "bench --plot on a full disk", ["bench", "--model", "tiny", "--task", "t2i", "--accel", "none",
                                                "--repeats", "1", "--steps", "2", "--no-instrument", "--no-progress",
                                                "--plot", "{d}/full/b.png"], **d),
        Case(C, "generate onto a read-only file system", gen(out="{d}/full/img.png"), fast=True, **ro),
        Case(C, "calibrate --out on a read-only file system",
             ["calibrate", "--model", "tiny", "--task", "mmu", "--samples", "2", "--out", "{d}/full/s.safetensors",
              "--no-progress"], fast=True, **ro),
        Case(C, "API save_pretrained onto a read-only file system", api="flashu.save_pretrained(b, '{d}/full/ckpt')",
             bundle=True, **ro),
        Case(C, "SIGTERM during eval t2i: exit 143",
             ["eval", "t2i", "--model", "tiny", "--prompts", "{d}/p.txt", "--accel", "none", "--steps", "2",
              "--out", "{d}/run", "--no-progress"], setup=many_prompts, **sigterm),
        Case(C, "SIGTERM during calibrate: exit 143, nothing written",
             ["calibrate", "--model", "small", "--task", "t2i", "--samples", "50", "--out", "{d}/s.safetensors",
              "--no-progress"], on_error=lambda r: "scores written" if (r.d / "s.safetensors").exists() else None,
             **sigterm),
        Case(C, "generate two images onto a full disk", gen("--prompt", "a blue square", out="{d}/full/img.png"), **d),
        Case(C, "calibrate --out on a full disk", ["calibrate", "--model", "tiny", "--task", "mmu", "--samples", "2",
                                                   "--out", "{d}/full/s.safetensors", "--no-progress"], **d),
        Case(C, "bench --json on a full disk", ["bench", "--model", "tiny", "--task", "t2i", "--accel", "none",
                                                "--repeats", "1", "--steps", "2", "--no-instrument", "--no-progress",
                                                "--json", "{d}/full/b.json"], **d),
        Case(C, "eval mmu --out on a full disk", ["eval", "mmu", "--model", "tiny", "--data",
                                                  "{fx}/set/understanding.jsonl", "--accel", "none", "--limit", "2",
                                                  "--out", "{d}/full/run", "--no-progress"], **d),
        Case(C, "eval t2i --out on a full disk", ["eval", "t2i", "--model", "tiny", "--prompts", "{d}/p.txt",
                                                  "--accel", "none", "--steps", "2", "--out", "{d}/full/run",
                                                  "--no-progress"],
             **{**d, "setup": lambda d, fx: (full(d, fx), (d / "p.txt").write_text("a red circle\n"))}),
        Case(C, "demo --out on a full disk", ["demo", "--images", "1", "--questions", "1", "--accel", "none",
                                              "--out", "{d}/full/demo.png", "--no-progress"], **d),
        Case(C, "ask --accel paper with the calibration cache on a full disk",
             ask("{fx}/img/ok.png", "what colour is it?", "--accel", "paper"), expect="success", setup=full,
             env={"FLASHU_CACHE_DIR": "{d}/full/cache"}, check=cached_warning, skip=skip),
        Case(C, "API save_pretrained onto a full disk", api="flashu.save_pretrained(b, '{d}/full/ckpt')",
             bundle=True, **d),
        Case(C, "SIGTERM during eval mmu: exit 143, records whole",
             ["eval", "mmu", "--model", "tiny", "--data", "{d}/q.jsonl", "--accel", "none", "--max-new-tokens", "2",
              "--out", "{d}/run", "--no-progress"], setup=many_questions, terminate_after=12.0,
             on_error=records_whole),
    ]


def all_cases(info: dict) -> list[Case]:
    cases = (checkpoint_cases() + image_cases() + text_cases() + number_cases() + device_cases(info)
             + accel_cases() + output_cases() + eval_cases() + api_cases() + disk_cases())
    counters: dict[str, int] = {}
    for case in cases:
        counters[case.category] = counters.get(case.category, 0) + 1
        case.id = f"{case.category}-{counters[case.category]:02d}"
    return cases


