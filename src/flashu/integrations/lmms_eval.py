"""flashu as an lmms-eval model: ``lmms-eval --model flashu --model_args pretrained=showlab/show-o2-7B,accel=plus``.

**Registration.** ``pyproject.toml`` declares the entry point ``flashu = "flashu.integrations.lmms_eval:manifest"``
in the group ``lmms_eval.models``; lmms-eval (>= 0.7) reads that group when it starts and registers the
:class:`~lmms_eval.models.registry_v2.ModelManifest` that :func:`manifest` returns, so ``--model flashu`` works as
soon as flashu is installed next to lmms-eval (``pip install 'flashu[lmms]'``). Only lmms-eval imports this module:
``import flashu`` never imports lmms-eval.

**model_args** (lmms-eval's ``key=value,key=value``):

* ``pretrained`` — anything :func:`flashu.load_model` takes: ``testbed`` (default; the trained model shipped in the
  package), a preset, a local directory or a hub id (``showlab/show-o2-1.5B``, ``showlab/show-o2-7B``);
* ``accel`` — a flashu acceleration spec (:mod:`flashu.accel.spec`; default ``none``): ``none``, ``exact``,
  ``paper``, ``plus``, another preset, a FlashU config JSON file, or any of these with ``:SECTION.FIELD=VALUE``
  overrides. lmms-eval splits model_args at commas, so separate several overrides with ``;`` (translated to ``,``):
  ``accel=plus:understanding.token_prune_ratio=0.5;understanding.token_scorer=dart``; or quote the value
  (``accel="plus:a.b=1,c.d=2"`` inside single shell quotes); or write the configuration to a JSON file;
* ``device`` (default: CUDA when there is one; under ``accelerate launch`` each process takes
  ``cuda:<local rank>``), ``dtype`` (``auto``: bfloat16 on CUDA, float32 on the CPU), ``max_new_tokens`` (when a
  task's generation_kwargs do not set it; default 256), ``image_size`` (understanding resolution in pixels; default:
  the model's), ``timings_path`` (the timing summary's JSON file; default ``flashu_timings.json`` in lmms-eval's
  ``--output_path`` when it has one).

**Requests.** ``generate_until`` answers each request with :func:`flashu.answer` (greedy, KV-cached, Show-o2's
official understanding prompt): exactly one image per document (a PIL image or a file path; none, several or a
video is refused with one line), the task's text as the question, ``max_new_tokens`` and ``until`` (the answer is cut
at the first stop string) honoured. Sampling (``do_sample: true``, or a temperature above 0 without
``do_sample: false``) and beam search are refused: flashu decodes greedily. ``loglikelihood`` and
``generate_until_multi_round`` are not supported (flashu does not score continuations, and answers one turn).

**Data parallel.** Launched with ``accelerate launch -m lmms_eval ...`` every process loads its own copy on its own
GPU and lmms-eval gives each process every ``world_size``-th document (the ``rank``/``world_size`` of
:class:`~lmms_eval.api.model.lmms`); the first process loads (downloads) and calibrates first, the others then read
the caches.

**Timings.** flashu's per-answer timings (encode, prefill, decode seconds, prompt and answer tokens) are
accumulated: :meth:`FlashuLMMS.timing_summary` returns them; after each batch of requests they are logged through
lmms-eval's logger, recorded with lmms-eval's throughput metrics (the results JSON's ``"throughput"``: ``avg_speed``
is answer tokens per second, ``avg_seconds_per_answer``…), returned per sample as token counts (``--log_samples``),
and written to ``timings_path`` (one file per process under data parallelism: ``….rank<r>.json``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

try:
    from lmms_eval.api.instance import GenerationResult, TokenCounts
    from lmms_eval.api.model import lmms
    from lmms_eval.models.registry_v2 import ModelManifest
except ModuleNotFoundError as exc:  # only lmms-eval missing; a broken lmms-eval install keeps its own error
    if (exc.name or "").split(".")[0] != "lmms_eval":
        raise
    raise ImportError("flashu.integrations.lmms_eval needs lmms-eval: pip install 'flashu[lmms]'") from None

from loguru import logger as eval_logger  # lmms-eval's logger (loguru is one of its dependencies)

from ..errors import FlashuError

MODEL_ID = "flashu"
DEFAULT_MAX_NEW_TOKENS = 256
TIMINGS_FILE = "flashu_timings.json"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".flv", ".wmv")
MODEL_ARGS = ("pretrained", "accel", "device", "dtype", "max_new_tokens", "image_size", "timings_path")


def manifest() -> ModelManifest:
    """The entry point lmms-eval calls at start-up (group ``lmms_eval.models``): ``--model flashu`` is
    :class:`FlashuLMMS`."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.FlashuLMMS")


# ---------------------------------------------------------------------------------------------- argument helpers
def accel_spec(value) -> str:
    """A model_args ``accel`` value as a flashu spec: surrounding quotes dropped, ``;`` read as ``,`` (lmms-eval
    splits model_args at commas) unless the value is an existing file's path."""
    text = "none" if value is None else str(value).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    if ";" in text and not Path(text).is_file():
        text = text.replace(";", ",")
    return text or "none"


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise FlashuError(f"{name} must be a positive integer, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FlashuError(f"{name} must be a positive integer, got {value!r}") from None
    if not number.is_integer() or number < 1:
        raise FlashuError(f"{name} must be a positive integer, got {value!r}")
    return int(number)


def _optional(value):
    """``None`` for an absent value (lmms-eval passes model_args as text: ``none``/``null``/empty mean absent)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null", "auto")):
        return None
    return value


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "on")
    return bool(value)


def generation_settings(gen_kwargs: dict | None, default_max_new_tokens: int) -> tuple[int, list[str]]:
    """``(max_new_tokens, stop strings)`` from a request's generation_kwargs (never modified: lmms-eval shares the
    dict between requests). Sampling and beam search are refused in one line: flashu decodes greedily."""
    kwargs = dict(gen_kwargs or {})
    if _truthy(kwargs.get("do_sample", False)):
        raise FlashuError("the task asks for sampling (do_sample: true); flashu decodes greedily only: set "
                          "do_sample: false and temperature: 0 (e.g. --gen_kwargs do_sample=false,temperature=0)")
    temperature = _optional(kwargs.get("temperature"))
    if temperature is not None and "do_sample" not in kwargs:
        try:
            hot = float(temperature) > 0
        except (TypeError, ValueError):
            raise FlashuError(f"temperature must be a number, got {temperature!r}") from None
        if hot:
            raise FlashuError(f"the task asks for sampling (temperature {temperature}); flashu decodes greedily "
                              "only: set temperature: 0 or do_sample: false (e.g. --gen_kwargs temperature=0)")
    beams = _optional(kwargs.get("num_beams"))
    if beams is not None and _positive_int(beams, "num_beams") > 1:
        raise FlashuError(f"the task asks for beam search (num_beams {beams}); flashu decodes greedily only: set "
                          "num_beams: 1")
    max_new = kwargs.get("max_new_tokens")
    max_new = default_max_new_tokens if _optional(max_new) is None else _positive_int(max_new, "max_new_tokens")
    until = kwargs.get("until")
    if until is None:
        stops = []
    elif isinstance(until, str):
        stops = [until]
    elif isinstance(until, (list, tuple)) and all(isinstance(s, str) for s in until):
        stops = list(until)
    else:
        raise FlashuError(f"generation_kwargs 'until' must be a string or a list of strings, got {until!r}")
    return max_new, [s for s in stops if s]


def cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    end = len(text)
    for stop in stops:
        at = text.find(stop)
        if 0 <= at < end:
            end = at
    return text[:end]


def question_text(context: str) -> str:
    """The task's prompt as flashu's question: image placeholders some tasks type (``<image>``) removed; flashu places
    the image itself, as Show-o2's prompt does."""
    return str(context).replace("<image>", "").strip()


def single_image(visuals, where: str):
    """The one image of a document (a PIL image or a file path), or a one-line error."""
    from PIL import Image

    if visuals is None:
        visuals = []
    elif not isinstance(visuals, (list, tuple)):
        visuals = [visuals]
    if len(visuals) == 1 and isinstance(visuals[0], (list, tuple)):  # [[image]]
        visuals = list(visuals[0])
    if len(visuals) != 1:
        raise FlashuError(f"{where} has {len(visuals)} visuals; flashu answers about exactly one image per question "
                          "(Show-o2's understanding prompt holds one image)")
    visual = visuals[0]
    if isinstance(visual, Image.Image):
        return visual
    if isinstance(visual, (str, os.PathLike)):
        if str(visual).lower().endswith(VIDEO_SUFFIXES):
            raise FlashuError(f"{where} gives a video ({visual}); flashu answers about images only")
        return visual
    raise FlashuError(f"{where} gives a {type(visual).__name__} as its visual; flashu takes one image (a PIL image "
                      "or an image file's path)")


def _cli_output_path() -> str | None:
    """lmms-eval's ``--output_path`` when this process is its command line (lmms-eval does not tell models)."""
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if "lmms" not in program and "lmms_eval" not in (sys.argv[0] if sys.argv else ""):
        return None
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg == "--output_path" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--output_path="):
            return arg.split("=", 1)[1]
    return None


# ---------------------------------------------------------------------------------------------- the model
class FlashuLMMS(lmms):
    """A flashu Show-o2 model (optionally FlashU-accelerated for understanding) behind lmms-eval's simple-model API.
    See the module docstring for the model_args."""

    is_simple = True

    def __init__(self, pretrained: str = "testbed", accel: str = "none", device: str | None = None,
                 dtype: str | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, image_size: int | None = None,
                 timings_path: str | None = None, batch_size=1, max_batch_size=None, **unknown) -> None:
        super().__init__()
        if unknown:
            raise FlashuError(f"unknown model_args for flashu: {', '.join(sorted(unknown))}; known: "
                              f"{', '.join(MODEL_ARGS)}")
        from accelerate import Accelerator

        from ..accel.spec import resolve_accel

        self.pretrained = str(pretrained)
        self.accel = accel_spec(accel)
        config = resolve_accel(self.accel, "mmu")  # a bad spec fails here, before any loading
        self.accel_name = config.name
        self.max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
        size = _optional(image_size)
        self.image_size = None if size is None else _positive_int(size, "image_size")
        self.timings_path = _optional(timings_path)
        if _optional(batch_size) is not None and str(batch_size) != "1":
            eval_logger.info(f"flashu answers one request at a time; batch_size {batch_size} is ignored")

        accelerator = Accelerator()
        device = _optional(device)
        if accelerator.num_processes > 1:
            import torch

            self.accelerator = accelerator  # lmms-eval's evaluator synchronises the processes through it
            self._rank = accelerator.process_index
            self._world_size = accelerator.num_processes
            if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
                device = f"cuda:{accelerator.local_process_index}"
            if accelerator.is_local_main_process:
                eval_logger.info(f"flashu: {accelerator.num_processes} processes, data parallel")
        else:
            self._rank, self._world_size = 0, 1

        import flashu

        main = self._rank == 0
        with accelerator.main_process_first():  # downloads and calibration once; the others read the caches
            bundle = flashu.load_model(self.pretrained, device=device, dtype=_optional(dtype), progress=main)
            if self.accel != "none":
                flashu.accelerate(bundle, config, task="mmu", progress=main)
        self._bundle = bundle
        self._records: list[dict] = []
        eval_logger.info(f"flashu: {self.pretrained} on {bundle.device} ({str(bundle.dtype).removeprefix('torch.')}), "
                         f"acceleration {self.accel_name}")

    # ------------------------------------------------------------------ properties
    @property
    def bundle(self):
        if self._bundle is None:
            raise FlashuError("this flashu model was released by clean(); create a new one")
        return self._bundle

    @property
    def device(self):
        return self.bundle.device

    @property
    def batch_size(self) -> int:
        return 1

    # ------------------------------------------------------------------ requests
    def generate_until(self, requests) -> list:
        from tqdm.auto import tqdm

        results = []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="flashu answering")
        start = len(self._records)
        try:
            for request in requests:
                results.append(self._answer(request))
                bar.update(1)
        finally:
            bar.close()
            self._report(self._records[start:])
        return results

    def _answer(self, request):
        """One request: flashu's greedy answer, cut at the first stop string, timed."""
        import flashu

        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        where = f"task {task} ({split}) document {doc_id}"
        max_new, stops = generation_settings(gen_kwargs, self.max_new_tokens)
        image = single_image(doc_to_visual(self.task_dict[task][split][doc_id]), where)
        t0 = time.perf_counter()
        try:
            reply = flashu.answer(self.bundle, image, question_text(context), max_new_tokens=max_new,
                                  image_size=self.image_size)
        except FlashuError as exc:
            raise FlashuError(f"{where}: {exc}") from exc
        wall = time.perf_counter() - t0
        text = cut_at_stop(reply.text, stops)
        self._records.append({
            "wall": wall, "encode": reply.timings.get("encode", 0.0), "prefill": reply.timings.get("prefill", 0.0),
            "decode": reply.timings.get("decode", 0.0), "prompt_tokens": reply.prompt_tokens,
            "new_tokens": len(reply.token_ids), "kept_tokens": reply.kept_tokens,
            "policy": (reply.stats or {}).get("policy") or "none",
        })
        self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return GenerationResult(text=text, token_counts=TokenCounts(input_tokens=reply.prompt_tokens,
                                                                    output_tokens=len(reply.token_ids)))

    def loglikelihood(self, requests) -> list:
        raise NotImplementedError("flashu does not score continuations (loglikelihood); use generate_until tasks")

    def generate_until_multi_round(self, requests) -> list:
        raise NotImplementedError("flashu answers single-turn questions; generate_until_multi_round is not supported")

    # ------------------------------------------------------------------ timings
    def timing_summary(self, records: list[dict] | None = None) -> dict:
        """Seconds per answer (wall, and flashu's encode/prefill/decode split), tokens and tokens per second over
        every answer so far (or ``records``)."""
        records = self._records if records is None else records
        summary = {"pretrained": self.pretrained, "accel": self.accel_name, "answers": len(records),
                   "rank": self.rank, "world_size": self.world_size}
        if self._bundle is not None:
            summary.update(device=str(self._bundle.device), dtype=str(self._bundle.dtype).removeprefix("torch."))
        n = len(records)
        if not n:
            return summary
        total = {k: sum(r[k] for r in records) for k in ("wall", "encode", "prefill", "decode", "prompt_tokens",
                                                           "kept_tokens", "new_tokens")}
        policies: dict[str, int] = {}
        for record in records:  # the understanding policy that answered (proof the acceleration was applied)
            policies[record["policy"]] = policies.get(record["policy"], 0) + 1
        decoded = sum(max(r["new_tokens"] - 1, 0) for r in records)  # the first token comes from the prefill
        summary.update({
            "seconds_per_answer": total["wall"] / n,
            "encode_seconds_per_answer": total["encode"] / n,
            "prefill_seconds_per_answer": total["prefill"] / n,
            "decode_seconds_per_answer": total["decode"] / n,
            "prompt_tokens_per_answer": total["prompt_tokens"] / n,
            "kept_prompt_tokens_per_answer": total["kept_tokens"] / n,
            "answer_tokens_per_answer": total["new_tokens"] / n,
            "answer_tokens_per_second": total["new_tokens"] / total["wall"] if total["wall"] > 0 else None,
            "decode_tokens_per_second": decoded / total["decode"] if total["decode"] > 0 and decoded else None,
            "total_seconds": total["wall"],
            "policies": policies,
        })
        return summary

    def _report(self, records: list[dict]) -> None:
        if not records:
            return
        from lmms_eval.models.model_utils.gen_metrics import log_metrics

        part = self.timing_summary(records)
        log_metrics(total_elapsed_time=part["total_seconds"],
                    total_gen_tokens=int(part["answer_tokens_per_answer"] * part["answers"]),
                    avg_speed=part["answer_tokens_per_second"] or 0.0,
                    additional_metrics={"seconds_per_answer": part["seconds_per_answer"],
                                        "encode_seconds": part["encode_seconds_per_answer"],
                                        "prefill_seconds": part["prefill_seconds_per_answer"],
                                        "decode_seconds": part["decode_seconds_per_answer"],
                                        "requests": part["answers"]})
        overall = self.timing_summary()
        eval_logger.info(
            f"flashu [{self.accel_name}]: {overall['answers']} answers, {overall['seconds_per_answer']:.4f} s per "
            f"answer (encode {overall['encode_seconds_per_answer']:.4f}, prefill "
            f"{overall['prefill_seconds_per_answer']:.4f}, decode {overall['decode_seconds_per_answer']:.4f}), "
            f"{overall['answer_tokens_per_second'] or 0:.1f} answer tokens/s")
        self._write_timings(overall)

    def _timings_file(self) -> Path | None:
        target = self.timings_path
        if target is None:
            out = _cli_output_path()
            if out is None:
                return None
            folder = Path(out)
            if folder.suffix.lower() in (".json", ".jsonl"):
                folder = folder.parent
            target = folder / TIMINGS_FILE
        path = Path(target)
        if self.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{self.rank}{path.suffix or '.json'}")
        return path

    def _write_timings(self, summary: dict) -> None:
        path = self._timings_file()
        if path is None:
            return
        from ..io.files import write_json

        try:
            write_json(path, summary)
        except OSError as exc:  # WriteError included: the timings are a by-product, the evaluation goes on
            eval_logger.warning(f"flashu: could not write the timings to {path}: {exc}")

    def clean(self) -> None:
        """lmms-eval's end of requests: free the model (an LLM judge may need the memory)."""
        self._bundle = None
        super().clean()
