"""Evaluation runs on the tiny preset: prompt formats, scorer layouts, resuming, accuracy, and a 2-process sharded run
(torchrun, gloo) that merges to the same result as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import flashu
from flashu.observe import distributed
from flashu.errors import FlashuError
from flashu.observe.evaluation import (
    config_dir_name, eval_mmu, eval_t2i, read_mmu_data, read_t2i_prompts,
)
from flashu.accel.spec import split_specs
from flashu.testbed.world import write_understanding_set

PROMPTS = ["a red circle", "a blue square left of a green triangle", "a yellow square", "a purple circle above a "
           "red square"]
GENEVAL = [{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": p} for p in PROMPTS]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mmu_data(tmp_path_factory):
    return write_understanding_set(tmp_path_factory.mktemp("mmu"), 1)  # one scene: several questions


def write_geneval(path, rows=GENEVAL):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def stable(report: dict) -> dict:
    """The report without what depends on timing, the run's history or the process count."""
    out = {k: v for k, v in report.items() if k not in ("world_size",)}
    out["configs"] = {name: {k: v for k, v in c.items()
                             if k not in ("seconds", "seconds_per_image", "seconds_per_answer", "generated",
                                          "resumed", "dir", "scorer")}
                      for name, c in report["configs"].items()}
    return out


# ---------------------------------------------------------------------------------------------- inputs
def test_prompt_formats(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("a red circle\n\n  a blue square \n")
    fmt, items = read_t2i_prompts(text)
    assert fmt == "text" and [(i.index, i.id, i.prompt) for i in items] == [(0, "00000", "a red circle"),
                                                                           (1, "00001", "a blue square")]
    dpg_dir = tmp_path / "dpg"
    dpg_dir.mkdir()
    (dpg_dir / "b_item.txt").write_text("second\n")
    (dpg_dir / "a_item.txt").write_text("first")
    (dpg_dir / "notes.md").write_text("ignored")
    fmt, items = read_t2i_prompts(dpg_dir)
    assert fmt == "dpg" and [(i.id, i.prompt) for i in items] == [("a_item", "first"), ("b_item", "second")]
    js = tmp_path / "dpg.json"
    js.write_text(json.dumps({"x1": "one", "x2": "two"}))
    assert [(i.id, i.prompt) for i in read_t2i_prompts(js)[1]] == [("x1", "one"), ("x2", "two")]
    csv = tmp_path / "dpg_bench.csv"
    csv.write_text("item_id,text,keywords,proposition_id\nx1,one,k,1\nx1,one,k,2\nx2,\"two, with comma\",k,1\n")
    fmt, items = read_t2i_prompts(csv)
    assert fmt == "dpg" and [(i.id, i.prompt) for i in items] == [("x1", "one"), ("x2", "two, with comma")]
    fmt, items = read_t2i_prompts(write_geneval(tmp_path / "evaluation_metadata.jsonl"))
    assert fmt == "geneval" and items[1].prompt == PROMPTS[1] and items[1].metadata == GENEVAL[1]
    assert read_t2i_prompts(["x", "y"])[0] == "text"

    (tmp_path / "bad.jsonl").write_text('{"tag": "x"}\n')
    with pytest.raises(FlashuError, match="prompt"):
        read_t2i_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(FlashuError, match="JSON object"):
        read_t2i_prompts(tmp_path / "list.json")
    with pytest.raises(FlashuError, match="does not exist"):
        read_t2i_prompts(tmp_path / "missing.txt")


def test_mmu_data(mmu_data, tmp_path):
    items = read_mmu_data(mmu_data)
    assert len(items) >= 2 and all(os.path.isfile(i.image) for i in items)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "x.png", "question": "q"}\n')
    with pytest.raises(FlashuError, match="answer"):
        read_mmu_data(bad)


# ---------------------------------------------------------------------------------------------- layouts, resuming
def test_layouts(bundle, tmp_path):
    common = dict(steps=2, progress=False)
    eval_t2i(bundle, PROMPTS[:2], ["none"], tmp_path / "text", **common)
    assert sorted(p.name for p in (tmp_path / "text" / "none").iterdir()) == ["00000.png", "00001.png",
                                                                             "prompts.jsonl"]
    manifest = [json.loads(line) for line in (tmp_path / "text" / "none" / "prompts.jsonl").read_text().splitlines()]
    assert manifest[1] == {"index": 1, "prompt": PROMPTS[1], "files": ["00001.png"]}

    dpg = tmp_path / "dpg.json"
    dpg.write_text(json.dumps({"item_a": PROMPTS[0]}))
    eval_t2i(bundle, dpg, "none", tmp_path / "dpg", samples_per_prompt=2, **common)
    assert [p.name for p in (tmp_path / "dpg" / "none").iterdir()] == ["item_a.png"]  # only what the scorer reads
    grid = Image.open(tmp_path / "dpg" / "none" / "item_a.png")
    assert grid.size == (2 * bundle.config.image_size, bundle.config.image_size)  # two samples side by side

    report = eval_t2i(bundle, write_geneval(tmp_path / "meta.jsonl", GENEVAL[:2]), "none", tmp_path / "geneval",
                      samples_per_prompt=2, **common)
    root = tmp_path / "geneval" / "none"
    assert sorted(p.name for p in root.iterdir()) == ["00000", "00001"]
    assert sorted(p.name for p in (root / "00001" / "samples").iterdir()) == ["0000.png", "0001.png"]
    assert json.loads((root / "00001" / "metadata.jsonl").read_text()) == GENEVAL[1]
    assert not np.array_equal(pixels(root / "00001/samples/0000.png"), pixels(root / "00001/samples/0001.png"))
    assert report["format"] == "geneval" and report["configs"]["none"]["images"] == 4
    assert json.loads((tmp_path / "geneval" / "eval_t2i.json").read_text()) == report


def test_t2i_resumes(bundle, tmp_path):
    kwargs = dict(steps=2, progress=False)
    first = eval_t2i(bundle, PROMPTS[:3], "none", tmp_path, **kwargs)["configs"]["none"]
    assert (first["generated"], first["resumed"], first["complete"]) == (3, 0, True)
    target = tmp_path / "none" / "00001.png"
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "none").glob("*.png")}
    reference = pixels(target)
    target.write_bytes(target.read_bytes()[:40])  # a torn write
    second = eval_t2i(bundle, PROMPTS[:3], "none", tmp_path, **kwargs)["configs"]["none"]
    assert (second["generated"], second["resumed"], second["complete"]) == (1, 2, True)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "none").glob("*.png")}
    assert after["00000.png"] == before["00000.png"] and after["00002.png"] == before["00002.png"]
    np.testing.assert_array_equal(pixels(target), reference)  # same seed per item: the same image again
    with pytest.raises(FlashuError, match="another run"):
        eval_t2i(bundle, PROMPTS[:3], "none", tmp_path, steps=3, progress=False)
    with pytest.raises(FlashuError, match="another run"):
        eval_t2i(bundle, PROMPTS[:2], "none", tmp_path, **kwargs)


def test_mmu_accuracy_and_resume(bundle, mmu_data, tmp_path):
    items = read_mmu_data(mmu_data)[:4]
    run = tmp_path / "run1"
    report = eval_mmu(bundle, mmu_data, "none", run, max_new_tokens=3, limit=4, progress=False)
    rows = [json.loads(line) for line in (run / "none" / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert report["configs"]["none"]["accuracy"] == sum(r["correct"] for r in rows) / 4

    # A data set whose answers are the model's own predictions for items 0 and 1 (in another case, with
    # punctuation: matched after normalisation) and wrong for 2 and 3: accuracy exactly 1/2.
    data = tmp_path / "data.jsonl"
    lines = []
    for item, row in zip(items, rows):
        expected = row["prediction"].upper() + " ." if item.index < 2 else "certainly not this"
        lines.append(json.dumps({"image": item.image, "question": item.question, "answer": expected}))
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run2"
    part_dir = out / ".flashu" / "mmu" / "none"
    first = eval_mmu(bundle, data, ["none"], out, max_new_tokens=3, progress=False)["configs"]["none"]
    assert (first["n"], first["correct"], first["accuracy"], first["generated"]) == (4, 2, 0.5, 4)
    assert not list(part_dir.glob("predictions-rank*"))  # merged into predictions.jsonl

    # interrupted run: item 3 missing from the merged file, a torn line in a rank's partial file
    final = out / "none" / "predictions.jsonl"
    kept = final.read_text().splitlines()
    final.write_text("\n".join(kept[:2]) + "\n")
    (part_dir / "predictions-rank0.jsonl").write_text(kept[2] + "\n" + kept[3][:20])
    second = eval_mmu(bundle, data, ["none"], out, max_new_tokens=3, progress=False)["configs"]["none"]
    assert (second["generated"], second["resumed"], second["accuracy"]) == (1, 3, 0.5)
    assert final.read_text().splitlines()[:3] == kept[:3]


def test_refuses_accelerated_bundle_and_bad_configs(bundle, tmp_path):
    with pytest.raises(FlashuError, match="no configuration"):
        eval_t2i(bundle, PROMPTS[:1], " ,", tmp_path, steps=2, progress=False)
    with pytest.raises(FlashuError, match="same directory"):
        eval_t2i(bundle, PROMPTS[:1], ["paper:generation.prune_ratio=0.3", "paper:generation.prune_ratio=0.3,"],
                 tmp_path, steps=2, progress=False)
    with pytest.raises(FlashuError, match="bad override"):
        eval_t2i(bundle, PROMPTS[:1], "paper:nonsense=1", tmp_path, steps=2, progress=False)
    flashu.accelerate(bundle, "paper", progress=False, calibration_samples=1)
    try:
        with pytest.raises(FlashuError, match="unaccelerated"):
            eval_t2i(bundle, PROMPTS[:1], "none", tmp_path, steps=2, progress=False)
    finally:
        flashu.restore(bundle)


def test_split_specs():
    assert split_specs("none, exact,paper:generation.prune_ratio=0.3,generation.layer_skip_ratio=0.1,plus") == [
        "none", "exact", "paper:generation.prune_ratio=0.3,generation.layer_skip_ratio=0.1", "plus"]
    assert split_specs(",,") == []
    assert config_dir_name("paper:generation.prune_ratio=0.3") == "paper_generation.prune_ratio=0.3"


# ---------------------------------------------------------------------------------------------- sharding
def test_shard_partition_and_env():
    items = list(range(10))
    shards = [distributed.Shard(r, 3, r).take(items) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(sum(shards, [])) == items
    assert distributed.from_env({}) == distributed.Shard(0, 1, 0)
    assert distributed.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == distributed.Shard(1, 2, 1)
    with pytest.raises(FlashuError, match="bad launcher environment: RANK=2, WORLD_SIZE=2"):
        distributed.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    single = distributed.Shard()
    single.barrier()
    assert single.broadcast({"a": 1}) == {"a": 1} and single.gather(5) == [5]


SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    import flashu
    from flashu.observe import distributed
    from flashu.observe.evaluation import eval_mmu, eval_t2i

    out, prompts, data = sys.argv[1:4]
    shard = distributed.init()
    bundle = flashu.load_model("tiny", device="cpu")
    t2i = eval_t2i(bundle, prompts, "none,paper", out + "/t2i", steps=3, samples_per_prompt=2,
                   calibration_samples=2, progress=False)
    mmu = eval_mmu(bundle, data, "none,paper", out + "/mmu", max_new_tokens=3, limit=4, calibration_samples=2,
                   progress=False)
    with open(f"{out}/returned-{shard.rank}.json", "w") as fh:
        json.dump({"t2i": t2i, "mmu": mmu, "gathered": shard.gather(shard.rank)}, fh)
    distributed.shutdown()
""")


def test_two_process_sharded_eval_matches_one_process(bundle, mmu_data, tmp_path):
    prompts = write_geneval(tmp_path / "meta.jsonl")
    script = tmp_path / "sharded.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                     "MASTER_PORT")}
    two = tmp_path / "two"
    two.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(two), str(prompts), str(mmu_data)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # Meanwhile, the same evaluation in this process, without a launcher.
    one = tmp_path / "one"
    t2i = eval_t2i(bundle, prompts, "none,paper", one / "t2i", steps=3, samples_per_prompt=2,
                   calibration_samples=2, progress=False)
    mmu = eval_mmu(bundle, mmu_data, "none,paper", one / "mmu", max_new_tokens=3, limit=4,
                   calibration_samples=2, progress=False)

    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    returned = [json.loads((two / f"returned-{r}.json").read_text()) for r in range(2)]
    assert returned[0] == {**returned[1], "gathered": [0, 1]} and returned[1]["gathered"] is None
    sharded = returned[0]
    assert sharded["t2i"]["world_size"] == 2 and t2i["world_size"] == 1
    assert stable(sharded["t2i"]) == stable(t2i)
    assert stable(sharded["mmu"]) == stable(mmu)
    for name in ("none", "paper"):
        # each rank generated its own half, all merged into complete results
        assert sharded["t2i"]["configs"][name]["generated"] == 4 and sharded["t2i"]["configs"][name]["complete"]
        assert sharded["mmu"]["configs"][name]["generated"] == 4
        for index in range(4):
            for k in range(2):
                rel = f"t2i/{name}/{index:05d}/samples/{k:04d}.png"
                np.testing.assert_array_equal(pixels(two / rel), pixels(one / rel))
        drop = lambda row: {k: v for k, v in row.items() if k != "seconds"}  # noqa: E731
        rows_two = [drop(json.loads(line)) for line in (two / f"mmu/{name}/predictions.jsonl").read_text().splitlines()]
        rows_one = [drop(json.loads(line)) for line in (one / f"mmu/{name}/predictions.jsonl").read_text().splitlines()]
        assert rows_two == rows_one and len(rows_one) == 4
    assert not list((two / "t2i" / ".flashu" / "t2i").glob("*/t2i-rank*"))  # partials merged and removed
