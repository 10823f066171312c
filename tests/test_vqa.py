"""The VQA world (testbed v2): every question's answer checked against an oracle written here from the scene
alone, the extra questions a training row packs per scene, and the packed rows they make."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
import torch

from flashu.testbed import data as D
from flashu.testbed import train as T
from flashu.testbed import vqa
from flashu.testbed.world import number_word
from test_testbed import tiny_pixel_config

_REL = {"left of": "left", "right of": "right", "above": "above", "below": "below"}


def oracle(scene: vqa.Scene, question: str) -> tuple[str, str]:
    """The right one-word answer of ``question`` (first line; choice options resolved by the caller) and its topic."""
    q = question.split("\n")[0]
    items = {f"{i.colour} {i.shape}": i for i in scene.items}
    if m := re.fullmatch(r"is there an? (\w+) (\w+) in the image\? answer yes or no\.", q):
        return ("yes" if (m[1], m[2]) in {(i.colour, i.shape) for i in scene.items} else "no"), "exist"
    if m := re.fullmatch(r"are there (\w+) shapes in the image\? answer yes or no\.", q):
        return ("yes" if number_word(len(scene.items)) == m[1] else "no"), "count"
    if q == "is there one shape in the image? answer yes or no.":
        return ("yes" if len(scene.items) == 1 else "no"), "count"
    if m := re.fullmatch(r"is the (\w+ \w+) (left of|right of|above|below) the (\w+ \w+)\? answer yes or no\.", q):
        return ("yes" if vqa.clear_relation(items[m[1]], items[m[3]]) == _REL[m[2]] else "no"), "relation"
    if m := re.fullmatch(r"what colou?r is the (\w+)\?", q):
        (item,) = [i for i in scene.items if i.shape == m[1]]  # asked only when it is the only one of its kind
        return item.colour, "colour"
    if m := re.fullmatch(r"what shape is the (\w+) object\?", q):
        (item,) = [i for i in scene.items if i.colour == m[1]]
        return item.shape, "shape"
    if q == "how many shapes are there?":
        return number_word(len(scene.items)), "count"
    if m := re.fullmatch(r"where is the (\w+ \w+) relative to the (\w+ \w+)\?", q):
        return vqa.clear_relation(items[m[1]], items[m[2]]), "relation"
    raise AssertionError(f"a question the oracle does not know: {q!r}")


def check(scene: vqa.Scene, qa) -> None:
    right, topic = oracle(scene, qa.question)
    assert qa.topic == topic, qa.question
    if qa.kind == "choice":
        options = dict(re.findall(r"^([A-D])\. (\w+)$", qa.question, flags=re.M))
        assert list(options.values()).count(right) == 1, qa.question
        assert options[qa.answer] == right, qa.question
        assert qa.question.endswith("\nanswer with the letter.")
    else:
        assert qa.answer == right, qa.question


def test_every_question_has_the_answer_the_scene_gives():
    kinds = Counter()
    for index in range(60):
        ex = vqa.sample("train", index)
        for qa in ex.qas:
            check(ex.scene, qa)
            kinds[qa.kind, qa.answer if qa.kind == "yesno" else "-"] += 1
    assert kinds["yesno", "yes"] > 15 and kinds["yesno", "no"] > 15  # both answers asked


def test_more_questions_are_distinct_right_and_take_the_families_in_turn():
    families = Counter()
    for index in range(40):
        ex = vqa.sample("train", index)
        qas = vqa.more_questions(ex.scene, random.Random(index), list(ex.qas), 9)
        assert qas[:3] == list(ex.qas)  # the scene's own questions first
        assert len(qas) == 9 and len({qa.question for qa in qas}) == 9
        for qa in qas:
            check(ex.scene, qa)
        families.update(qa.kind for qa in qas)
    assert min(families.values()) >= 0.25 * sum(families.values())  # every family, about a third each
    only = vqa.more_questions(ex.scene, random.Random(0), [], 4, ("choice",))
    assert [qa.kind for qa in only] == ["choice"] * 4


@pytest.fixture(scope="module")
def tiny_vqa():
    return T.build_bundle(tiny_pixel_config("testbed-v2", "tiny-vqa"), 0)


def _segments(batch) -> list[int]:
    """Answered segments per row (runs of consecutive answer targets)."""
    a = (batch.targets != -100).int()
    return ((a[:, 1:] - a[:, :-1] == 1).sum(1) + a[:, 0]).tolist()


def test_packed_rows_hold_the_requested_questions_per_scene(tiny_vqa):
    plain = D.draw_understanding_batch(tiny_vqa, 3, 7, 2)
    more = D.draw_understanding_batch(tiny_vqa, 3, 7, 2, per_scene=6)
    again = D.draw_understanding_batch(tiny_vqa, 3, 7, 2, per_scene=6)
    assert _segments(plain) == [3, 3] and _segments(more) == [6, 6]
    assert torch.equal(more.targets, again.targets) and torch.equal(more.mask, again.mask)  # a function of (seed, step)
    # the first scene is the same; the extra questions draw from the step's stream, so later scenes may differ
    assert torch.equal(plain.inputs.latents[0], more.inputs.latents[0])
    assert more.targets.shape[1] > plain.targets.shape[1]
    curriculum = D.draw_understanding_batch(tiny_vqa, 3, 7, 2, families="yesno", per_scene=4)
    assert _segments(curriculum) == [4, 4]
    eos = tiny_vqa.special.eos
    for row in curriculum.targets:
        answers = [t for t in row.tolist() if t not in (-100, eos)]
        assert re.fullmatch(r"(yes|no)+", tiny_vqa.decode_text(answers))


def test_train_cli_refuses_bad_question_counts():
    with pytest.raises(SystemExit):
        T.parse_args(["--out", "x", "--model", "testbed-v2", "--mmu-questions", "-1"])
    with pytest.raises(SystemExit):
        T.parse_args(["--out", "x", "--model", "testbed", "--mmu-questions", "6"])
    cfg, _ = T.parse_args(["--out", "x", "--model", "testbed-v2", "--mmu-questions", "6"])
    assert cfg.mmu_questions == 6


def test_evaluation_reports_accuracy_per_family_and_topic(tiny_vqa):
    from flashu.testbed.evaluate import evaluate, format_reports

    report = evaluate(tiny_vqa, "none", n_gen=0, n_mmu=6, max_new_tokens=2, progress=False)
    und = report["understanding"]
    asked = vqa.questions_of("test", 6)
    expected = Counter(f"{qa.kind}/{qa.topic}" for _, qa in asked)
    assert {k: v["n"] for k, v in und["topics"].items()} == dict(expected)
    for key, part in und["topics"].items():
        hits = [ok for ok, (_, qa) in zip(und["correct"], asked) if f"{qa.kind}/{qa.topic}" == key]
        assert part["correct"] == sum(hits)
    table = format_reports([report])
    assert "by topic" in table and all(key in table for key in expected)
    assert all(qa.topic in ("exist", "colour", "shape", "count", "relation") for _, qa in asked)


def test_topic_weights_thin_out_a_topic_among_the_extra_questions():
    def count_share(weights):
        topics = Counter()
        for index in range(60):
            ex = vqa.sample("train", index)
            extra = vqa.more_questions(ex.scene, random.Random(index), list(ex.qas), 9, topic_weights=weights)[3:]
            topics.update(qa.topic for qa in extra)
        return topics["count"] / sum(topics.values())

    plain, thinned = count_share(None), count_share({"count": 0.1})
    assert plain > 0.15 and thinned < plain / 3


def test_train_cli_refuses_bad_topic_weights():
    ok = ["--out", "x", "--model", "testbed-v2", "--mmu-questions", "6"]
    cfg, _ = T.parse_args(ok + ["--mmu-topic-weights", "count=0.25,shape=0.5"])
    assert T.topic_weights(cfg.mmu_topic_weights) == {"count": 0.25, "shape": 0.5}
    for bad in ("count", "size=0.5", "count=0", "count=1.5", "count=x"):
        with pytest.raises(SystemExit):
            T.parse_args(ok + ["--mmu-topic-weights", bad])
    with pytest.raises(SystemExit):  # weights without extra questions weigh nothing
        T.parse_args(["--out", "x", "--model", "testbed-v2", "--mmu-topic-weights", "count=0.5"])


def test_prefix_once_gives_the_packed_rows_loss_and_gradients(tiny_vqa):
    """Running each scene's prefix once and then every question row against its keys/values is the packed rows'
    function: same loss, same gradients (float rounding apart)."""
    packed = D.draw_understanding_batch(tiny_vqa, 5, 3, 3, per_scene=5)
    batch = D.draw_understanding_batch(tiny_vqa, 5, 3, 3, per_scene=5, prefix_once=True)
    assert batch.inputs is None and packed.segments is None  # one layout each, never both built
    torch.testing.assert_close(batch.prefix.latents, packed.inputs.latents)
    assert sum(seg.ids.shape[0] for seg in batch.segments) == 15 and len(batch.segments) > 1
    assert sorted(torch.cat([seg.scene for seg in batch.segments]).tolist()) == [0] * 5 + [1] * 5 + [2] * 5
    widths = [seg.ids.shape[1] for seg in batch.segments]
    assert widths == sorted(widths) and widths[0] < widths[-1]  # batched by length: less padding
    model = tiny_vqa.model
    results = []
    for prefix_once in (False, True):
        for per_answer in (False, True):
            model.zero_grad()
            loss = T.ce_loss(tiny_vqa, batch if prefix_once else packed, per_answer=per_answer,
                             prefix_once=prefix_once)
            loss.backward()
            results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                            if p.grad is not None}))
    for (packed, packed_grads), (once, once_grads) in zip(results[:2], results[2:]):
        torch.testing.assert_close(once, packed, rtol=1e-5, atol=1e-6)
        assert packed_grads.keys() == once_grads.keys() and len(packed_grads) > 20
        for name in packed_grads:
            torch.testing.assert_close(once_grads[name], packed_grads[name], rtol=1e-4, atol=1e-6)
    model.zero_grad()


def test_train_cli_reads_boolean_flags():
    ok = ["--out", "x", "--model", "testbed-v2"]
    assert T.parse_args(ok)[0].mmu_prefix_once is True
    assert T.parse_args(ok + ["--mmu-prefix-once", "false"])[0].mmu_prefix_once is False
    with pytest.raises(SystemExit):
        T.parse_args(ok + ["--mmu-prefix-once", "maybe"])


def test_a_second_stage_may_widen_the_position_table(tmp_path):
    """--init from a model whose SigLIP position table is 8×8 into one whose table is 16×16: the table is resized
    as the model resizes it at run time, so the 64 px understanding branch computes what it computed before."""
    import dataclasses

    narrow = T.build_bundle(tiny_pixel_config("testbed-v2", "narrow"), 0)
    narrow.model.init_random_weights(3)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": narrow.model.state_dict(), "model_config": narrow.config.to_dict()}, path)
    wide_cfg = tiny_pixel_config("testbed-v2", "wide")
    wide_cfg.vision = dataclasses.replace(wide_cfg.vision, position_grid=16)
    wide = T.build_bundle(wide_cfg, 1)
    T._load_weights(wide.model, path, wide_cfg)
    assert wide.model.position_embedding.weight.shape[0] == 256
    latents = narrow.codec.encode(torch.rand(2, 3, 64, 64) * 2 - 1)  # two 64 px understanding images
    with torch.no_grad():
        torch.testing.assert_close(wide.model.semantic_tokens(latents), narrow.model.semantic_tokens(latents),
                                   rtol=1e-5, atol=1e-5)
    other = tiny_pixel_config("testbed-v2", "other")
    other.llm = dataclasses.replace(other.llm, num_layers=4)
    with pytest.raises(SystemExit, match="another model architecture"):
        T._load_weights(T.build_bundle(other, 0).model, path, other)


def test_the_sincos_position_pattern_tells_every_row_and_column_apart():
    pattern = T.sincos_grid(16, 128)
    assert pattern.shape == (256, 128)
    torch.testing.assert_close(pattern.pow(2).mean(), torch.tensor(1.0))
    distances = torch.cdist(pattern, pattern) + torch.eye(256) * 1e3
    assert distances.min() > 0.1  # no two grid cells share an embedding
    square = pattern.reshape(16, 16, 128)
    # the first half depends on the row only, the second on the column only
    assert torch.equal(square[:, :1, :64].expand(16, 16, 64), square[:, :, :64])
    assert torch.equal(square[:1, :, 64:].expand(16, 16, 64), square[:, :, 64:])
    assert T.sincos_grid(4, 30).shape == (16, 30)  # widths not divisible by 4 are padded with zeros


def test_position_sincos_changes_the_table_at_a_fresh_start_only(tmp_path, capsys):
    """The pattern is added once, when a run starts; --resume continues the learnt table as it was."""
    model_config = tiny_pixel_config("testbed-v2", "sincos")
    bundle = T.build_bundle(model_config, 0)
    start = bundle.model.position_embedding.weight.detach().clone()
    T.add_position_pattern(bundle.model, 2.0)
    moved = (bundle.model.position_embedding.weight - start).pow(2).mean().sqrt()
    torch.testing.assert_close(moved, 2.0 * start.pow(2).mean().sqrt(), rtol=1e-4, atol=0)

    cfg = T.TrainConfig(model="testbed-v2", steps=1, gen_batch=1, mmu_batch=1, position_sincos=2.0, log_every=1,
                        checkpoint_every=1)
    trained = T.train(cfg, tmp_path / "run", progress=False, model_config=model_config)
    table = trained.model.position_embedding.weight.detach().clone()
    again = T.train(cfg, tmp_path / "run", resume=True, progress=False, model_config=model_config)  # 0 steps left
    assert torch.equal(again.model.position_embedding.weight, table)

    with pytest.raises(SystemExit):
        T.parse_args(["--out", "x", "--model", "testbed-v2", "--position-sincos", "-1"])
    assert "--position-sincos must be a finite number >= 0" in capsys.readouterr().err
