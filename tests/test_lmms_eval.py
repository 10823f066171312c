"""lmms-eval drives flashu (``lmms-eval --model flashu``, flashu.integrations.lmms_eval): registration through the
``lmms_eval.models`` entry point, the request handling, and the real lmms-eval command line, offline, on a local task
over the shipped testbed's test questions — its metric and answers equal flashu's own evaluation of the same items.

Needs lmms-eval (``pip install 'flashu[lmms]'``); those tests are skipped without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

N_ITEMS = 12
MAX_NEW_TOKENS = 8
STOPS = ["\n"]
TASK = "flashu_testbed_vqa"
# none and plus (the issue's); paper changes the testbed's answers (it keeps a fraction of its accuracy), so the
# metric and answers are compared where they are not trivially all right
ACCELS = ["none", "plus", "paper"]


def _lmms_eval():
    return pytest.importorskip("lmms_eval")


# ---------------------------------------------------------------------------------------------- without lmms-eval
def test_import_flashu_does_not_import_lmms_eval():
    code = ("import sys, flashu, flashu.cli\n"
            "flashu.answer, flashu.load_model, flashu.accelerate\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'lmms_eval')\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_lmms_eval_is_one_line_naming_the_extra():
    code = ("import sys\n"
            "sys.modules['lmms_eval'] = None  # as if it were not installed\n"
            "try:\n"
            "    import flashu.integrations.lmms_eval\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "flashu.integrations.lmms_eval needs lmms-eval: pip install 'flashu[lmms]'"


# ---------------------------------------------------------------------------------------------- registration, helpers
def test_entry_point_registers_flashu_with_lmms_eval():
    _lmms_eval()
    from importlib.metadata import entry_points

    from lmms_eval.models import get_model, list_available_models

    from flashu.integrations.lmms_eval import FlashuLMMS, manifest

    assert [ep.value for ep in entry_points(group="lmms_eval.models") if ep.name == "flashu"] == [
        "flashu.integrations.lmms_eval:manifest"]
    assert manifest().model_id == "flashu"
    assert "flashu" in list_available_models()
    assert get_model("flashu") is FlashuLMMS


def test_generation_settings_stops_and_specs():
    _lmms_eval()
    from lmms_eval.utils import simple_parse_args_string

    from flashu.errors import FlashuError
    from flashu.integrations.lmms_eval import accel_spec, cut_at_stop, generation_settings

    shared = {"max_new_tokens": 16, "temperature": 0, "do_sample": False, "until": ["\n\n", "ASSISTANT:"]}
    assert generation_settings(shared, 256) == (16, ["\n\n", "ASSISTANT:"])
    assert "until" in shared  # lmms-eval shares the dict between requests: never modified
    assert generation_settings({"until": "Q:"}, 256) == (256, ["Q:"])
    assert generation_settings({"temperature": 0.7, "do_sample": False}, 5) == (5, [])  # greedy all the same
    for sampling in ({"do_sample": True}, {"temperature": 0.2}, {"num_beams": 4}):
        with pytest.raises(FlashuError, match="greedily"):
            generation_settings(sampling, 8)
    with pytest.raises(FlashuError, match="max_new_tokens"):
        generation_settings({"max_new_tokens": 0}, 8)
    assert cut_at_stop("yes.\nno ASSISTANT: x", ["ASSISTANT:", "\n"]) == "yes."
    assert cut_at_stop("B", []) == "B"
    # lmms-eval splits model_args at commas: ';' stands for ',', or the quoted value keeps its commas
    assert accel_spec("plus") == "plus"
    assert accel_spec("plus:a.b=1;c.d=2") == "plus:a.b=1,c.d=2"
    parsed = simple_parse_args_string('pretrained=testbed,accel="plus:a.b=1,c.d=2",max_new_tokens=4')
    assert parsed["max_new_tokens"] == 4 and accel_spec(parsed["accel"]) == "plus:a.b=1,c.d=2"


class _Request:  # lmms-eval's Instance as generate_until reads it: .args
    def __init__(self, *args):
        self.args = args


def test_model_answers_cuts_and_refuses(tmp_path):
    _lmms_eval()
    from lmms_eval.api.instance import GenerationResult

    import flashu
    from flashu.errors import FlashuError
    from flashu.integrations.lmms_eval import FlashuLMMS
    from flashu.testbed.evaluate import split_items

    model = FlashuLMMS(pretrained="testbed", device="cpu", max_new_tokens=6, timings_path=str(tmp_path / "t.json"))
    image, question, _, _ = split_items("test", 0, 1, model.bundle.config.image_size, model.bundle.config).qas[0]
    docs = [{"q": question, "images": [image]}, {"q": question, "images": [image, image]},
            {"q": question, "images": []}]
    model.task_dict = {"toy": {"test": docs}}

    def request(doc_id, gen_kwargs):
        return _Request(f"<image>{docs[doc_id]['q']}", gen_kwargs, lambda doc: doc["images"], doc_id, "toy", "test")

    (plain,) = model.generate_until([request(0, {"max_new_tokens": 6, "temperature": 0})])
    assert isinstance(plain, GenerationResult) and plain.token_counts.output_tokens >= 1
    reference = flashu.answer(model.bundle, image, question, max_new_tokens=6).text  # '<image>' was dropped
    assert plain.text == reference and reference
    stop = reference[1:] or reference  # a one-letter answer is cut to nothing
    (cut,) = model.generate_until([request(0, {"max_new_tokens": 6, "until": ["never", stop]})])
    assert cut.text == reference[:reference.find(stop)]
    for doc_id, count in ((1, 2), (2, 0)):
        with pytest.raises(FlashuError, match=f"has {count} visuals; flashu answers about exactly one image"):
            model.generate_until([request(doc_id, {})])
    with pytest.raises(FlashuError, match="greedily"):
        model.generate_until([request(0, {"do_sample": True})])
    with pytest.raises(NotImplementedError):
        model.loglikelihood([request(0, {})])
    with pytest.raises(NotImplementedError):
        model.generate_until_multi_round([request(0, {})])
    summary = json.loads((tmp_path / "t.json").read_text())
    assert summary["answers"] == model.timing_summary()["answers"] >= 1 and summary["seconds_per_answer"] > 0
    with pytest.raises(FlashuError, match="unknown model_args for flashu: temperature"):
        FlashuLMMS(pretrained="testbed", temperature=0)


# ---------------------------------------------------------------------------------------------- the real CLI
_UTILS = '''\
"""flashu's test task over the testbed's test questions (written by tests/test_lmms_eval.py)."""
from PIL import Image

from flashu.observe.metrics import score_answer


def doc_to_visual(doc):
    with Image.open(doc["image"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"flashu_match": float(score_answer(results[0], doc["answer"]))}
'''


@pytest.fixture(scope="module")
def testbed_task(tmp_path_factory, one_thread):
    """A local lmms-eval task over the first testbed test questions (PNG files + JSONL, read by datasets' json
    builder), and flashu's own evaluation of the same items for ``none`` and ``plus`` (understanding only, the
    importance scores shared with the command line through FLASHU_CACHE_DIR)."""
    _lmms_eval()
    import flashu
    from flashu.accel.calibration import cached_scores
    from flashu.accel.spec import resolve_accel
    from flashu.integrations.lmms_eval import cut_at_stop
    from flashu.testbed.evaluate import evaluate, split_items

    root = tmp_path_factory.mktemp("lmms")
    cache = root / "flashu-cache"
    saved = os.environ.get("FLASHU_CACHE_DIR")
    os.environ["FLASHU_CACHE_DIR"] = str(cache)
    try:
        bundle = flashu.load_model("testbed", device="cpu")
        qas = split_items("test", 0, N_ITEMS, bundle.config.image_size, bundle.config).qas
        (root / "images").mkdir()
        rows = []
        for i, (image, question, answer, kind) in enumerate(qas):
            path = root / "images" / f"{i:03d}.png"
            image.save(path)
            rows.append({"id": i, "image": str(path), "question": question, "answer": answer, "kind": kind})
        data = root / "items.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        task_dir = root / "task"
        task_dir.mkdir()
        (task_dir / "utils.py").write_text(_UTILS, encoding="utf-8")
        (task_dir / f"{TASK}.yaml").write_text(textwrap.dedent(f"""\
            task: {TASK}
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {json.dumps(str(data))}
            test_split: test
            output_type: generate_until
            doc_to_visual: !function utils.doc_to_visual
            doc_to_text: !function utils.doc_to_text
            doc_to_target: answer
            generation_kwargs:
              max_new_tokens: {MAX_NEW_TOKENS}
              temperature: 0
              do_sample: false
              until: {json.dumps(STOPS)}
            process_results: !function utils.process_results
            metric_list:
              - metric: flashu_match
                aggregation: mean
                higher_is_better: true
            metadata:
              - version: 0.0
            """), encoding="utf-8")
        reference = {}
        for spec in ACCELS:
            cfg = resolve_accel(spec, "mmu")  # what the lmms-eval model applies: the understanding part only
            scores = ({"mmu": cached_scores(bundle, "mmu", samples=cfg.calibration_samples, progress=False)}
                      if cfg.needs_understanding_scores else None)
            report = evaluate(bundle, cfg, n_gen=0, n_mmu=N_ITEMS, max_new_tokens=MAX_NEW_TOKENS, scores=scores,
                              progress=False)["understanding"]
            reference[spec] = {"accuracy": report["accuracy"],
                               "answers": [cut_at_stop(a, STOPS) for a in report["answers"]],
                               "expected": report["expected"]}
    finally:
        if saved is None:
            os.environ.pop("FLASHU_CACHE_DIR", None)
        else:
            os.environ["FLASHU_CACHE_DIR"] = saved
    return {"root": root, "task_dir": task_dir, "cache": cache, "reference": reference, "rows": rows}


@pytest.mark.parametrize("accel", ACCELS)
def test_lmms_eval_cli_matches_flashu_evaluation(testbed_task, accel):
    root, out = testbed_task["root"], testbed_task["root"] / f"out-{accel}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(root / "hf"),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", FLASHU_CACHE_DIR=str(testbed_task["cache"]))
    command = [sys.executable, "-m", "lmms_eval", "--model", "flashu",
               "--model_args", f"pretrained=testbed,accel={accel}", "--tasks", TASK,
               "--include_path", str(testbed_task["task_dir"]), "--output_path", str(out), "--log_samples"]
    t0 = time.perf_counter()
    run = subprocess.run(command, check=False, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    log = (run.stdout + run.stderr)[-6000:]
    hint = ("\n(a CUDA torchvision next to a CPU torch breaks transformers: pip uninstall torchvision)"
            if "torchvision::nms" in log else "")
    assert run.returncode == 0, log + hint
    results = sorted(out.glob("*/*_results.json"))
    assert results, "lmms-eval wrote no results (it exits 0 after some errors):\n" + log + hint
    report = json.loads(results[-1].read_text())
    metric = report["results"][TASK]["flashu_match,none"]
    reference = testbed_task["reference"][accel]
    assert metric == pytest.approx(reference["accuracy"])

    samples = [json.loads(line) for path in out.glob(f"*/*_samples_{TASK}.jsonl")
               for line in path.read_text().splitlines() if line.strip()]
    samples.sort(key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(N_ITEMS))
    answers = [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
               for s in samples]
    assert answers == reference["answers"]
    assert [s["target"] for s in samples] == reference["expected"]

    timings = json.loads((out / "flashu_timings.json").read_text())
    assert timings["answers"] == N_ITEMS and timings["accel"] == accel and timings["seconds_per_answer"] > 0
    assert timings["policies"] == {accel: N_ITEMS}  # every answer came from the configured understanding policy
    throughput = report["throughput"]
    assert throughput["avg_seconds_per_answer"] == pytest.approx(timings["seconds_per_answer"])
    print(f"\nlmms-eval --model flashu accel={accel}: flashu_match {metric:.4f} (flashu's own evaluation "
          f"{reference['accuracy']:.4f}), {timings['seconds_per_answer']:.4f} s per answer, "
          f"{timings['answer_tokens_per_second']:.1f} answer tokens/s, command wall time {wall:.1f} s")
