"""The addition world (soar.addition): its problem family, tokenizer, exact reading of questions,
and a real (short) pretraining run loaded back through the model registry."""

import random

import pytest

from soar import addition, config, data, grading, models, prompts, worlds
from soar.sampling import encode_prompts, generate


@pytest.mark.parametrize("a, b, expected", [
    (1234, 5678, 2),  # 4+8 and 3+7+1 carry; 2+6+1 and 1+5 do not
    (1111, 2222, 0),
    (9999, 1, 4),  # a chain through every column
    (5, 5, 1),
    (0, 0, 0),
])
def test_carries_counts_the_column_carries(a, b, expected):
    assert addition.carries(a, b) == expected


def test_make_problem_has_the_asked_level_and_the_world_shape():
    rng = random.Random(0)
    for level in addition.LEVELS:
        for _ in range(50):
            a, b = addition.make_problem(rng, level)
            assert addition.carries(a, b) == level
            assert len(str(a)) == len(str(b)) == addition.DIGITS  # leading digits nonzero
            assert (a + b) % 10 != 0  # no answer starts with 0 in the reversed notation


def test_pools_are_seeded_uniform_over_levels_and_disjoint():
    test, train = addition.pool("addition_test"), addition.pool("addition_train")
    assert test == addition.pool("addition_test")  # deterministic
    assert len(test) == addition.POOL_SIZE["addition_test"]
    levels = [p.metadata["level"] for p in test]
    assert {levels.count(lv) for lv in addition.LEVELS} == {len(test) // len(addition.LEVELS)}
    assert not {p.problem for p in test} & {p.problem for p in train}
    p = test[0]
    a, b = (int(x[::-1]) for x in p.problem.split("+"))
    assert p.answer == str(a + b)[::-1] and p.metadata["level"] == addition.carries(a, b)
    some = worlds.Addition().pool("addition_test", levels=[4], limit=5)  # a seeded sample, in pool order
    assert len(some) == 5 and some == [q for q in test if q.id in {r.id for r in some}]
    assert {q.metadata["level"] for q in some} == {4}


@pytest.mark.parametrize("question, answer, expected", [
    ("4321+8765", "2196", addition.Reading(True, 2, True, (4, 4), "2196")),  # 1234 + 5678 = 6912
    ("4321+8765", "6912", addition.Reading(True, 2, False, (4, 4), "2196")),  # written the usual way: wrong here
    ("12+3", "42", addition.Reading(True, 0, True, (2, 1), "42")),  # 21 + 3 = 24
    ("12+", "1", addition.Reading(False, None, None, None)),  # not an addition of two numbers
    ("1+2+3", "6", addition.Reading(False, None, None, None)),  # three terms: not this world's question
    ("", None, addition.Reading(False, None, None, None)),
])
def test_read_judges_a_teacher_question_exactly(question, answer, expected):
    assert addition.read(question, answer) == expected


def test_tokenizer_reads_the_soar_prompts_and_round_trips_the_answer_contract():
    tok = addition.build_tokenizer()
    ids = encode_prompts(tok, [prompts.student_messages("4321+8765"), prompts.teacher_messages()])
    assert tok.decode(ids[0]) == "<s><solve><question>4321+8765</question><answer>"  # the teacher's frame
    assert tok.decode(ids[1]) == "<s><teach><sep>"
    text = "<question>12+34</question><answer>\\boxed{46}</answer>"
    enc = tok(text, add_special_tokens=False)["input_ids"]
    assert len(enc) == 13 and tok.decode(enc) == text  # tags are single tokens; digits one each
    pair = grading.parse_teacher_output(text)
    assert pair.question == "12+34" and pair.answer == "46"
    with pytest.raises(Exception, match="reads only the SOAR student prompt"):
        encode_prompts(tok, [prompts.teacher_messages(one_shot=True)])  # never taught to read it


def test_written_sum_keeps_the_carries_it_is_told_to():
    assert addition.written_sum(1234, 5678) == 6912
    assert addition.written_sum(1234, 5678, keep=lambda: False) == 6802  # the beginner's answer
    assert addition.written_sum(9999, 1, keep=lambda: False) == 9990  # a dropped carry still happened
    kept = iter([False, True, True, True])  # the units' carry dropped, the next ones kept
    assert addition.written_sum(9999, 1, keep=lambda: next(kept)) == 10090


def test_the_student_corpus_holds_the_misconception_at_its_rate():
    """A level-c student example is right with probability carry_kept**c: what the base model's
    solve mode fits (docs/world-design.md, C2); carry_kept=1 (the clean steps) is always right."""
    cfg = config.PretrainConfig(teacher_share=0.0, student_levels=(0, 0, 1), carry_kept=0.5)
    for kept, rate in ((None, 0.25), (1.0, 1.0)):
        texts = addition.corpus_batch(random.Random(0), 2000, cfg, carry_kept=kept)
        right = [addition.read(p.split("<question>")[1].split("</question>")[0], c[len("\\boxed{"):-len("}</s>")]).correct
                 for p, c in texts]
        assert abs(sum(right) / len(right) - rate) < 0.03
    teacher = addition.corpus_batch(random.Random(0), 500, config.PretrainConfig(teacher_share=1.0, teacher_levels=(0, 1)))
    pairs = [grading.parse_teacher_output(c) for _, c in teacher]
    assert {addition.read(p.question, p.answer).level for p in pairs} == {1}  # levels past the weights never appear
    assert all(addition.read(p.question, p.answer).correct for p in pairs)


def test_a_short_pretraining_saves_a_model_the_registry_loads_and_the_pipeline_samples(tmp_path, monkeypatch):
    monkeypatch.setattr(models.paths, "MODELS", tmp_path)
    with pytest.raises(FileNotFoundError, match="dvc repro pretrain"):
        models.load_model(addition.NAME)
    info = addition.pretrain(config.PretrainConfig(steps=30, batch=16), tmp_path / addition.NAME, progress=False)
    assert len(info["loss"]) == 30 and info["loss"][-1] < info["loss"][0]  # it learns something
    model, tok = models.load_model(addition.NAME, device="cpu")
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
    out = generate(model, tok, [prompts.student_messages("4321+8765")], n=2, max_new_tokens=10, seed=0,
                   progress=False)
    assert len(out[0]) == 2 and all(isinstance(s.text, str) for s in out[0])


def test_pretraining_is_reproducible(tmp_path):
    cfg = config.PretrainConfig(steps=3, batch=8)
    a = addition.pretrain(cfg, tmp_path / "a", seed=1, progress=False)["loss"]
    b = addition.pretrain(cfg, tmp_path / "b", seed=1, progress=False)["loss"]
    assert a == b


def test_exact_judge_answers_the_analysis_prompts_by_computing():
    """analysis.judge: exact reads the same prompts as any judge: a re-solve is the true sum,
    a verdict is read() as strict JSON that soar.analysis parses."""
    from soar import analysis

    judge = analysis.make_judge(config.load("params.yaml", {"analysis": {"judge": "exact"}}))
    solves = judge.chat([prompts.student_messages("4321+8765"), prompts.student_messages("two plus two")],
                        n=3, temperature=1.0, max_tokens=8, seed=0)
    assert solves[0] == ["\\boxed{2196}"] * 3 and grading.extract_answer(solves[0][0]) == "2196"
    assert grading.extract_answer(solves[1][0], fallback=False) is None  # nothing to solve
    cases = [("4321+8765", "2196", (True, True, "none")), ("4321+8765", "6902", (True, False, "arithmetic")),
             ("4321+", "1", (False, None, "impossibility"))]
    replies = judge.chat([prompts.judge_messages(q, a) for q, a, _ in cases], n=1, temperature=0.0,
                         max_tokens=8, seed=0)
    for (q, a, expected), reply in zip(cases, replies):
        verdict, reason = analysis.parse_verdict(reply[0])
        assert reason == "" and (verdict.well_posed, verdict.correct, verdict.error_type) == expected


def test_structure_kernel_and_exact_topics():
    import numpy as np

    from soar import analysis

    emb = analysis.load_embedder("addition-structure", worlds.Addition())
    x = analysis.embed(emb, ["4321+8765", "4321+8765", "1111+2222", "not a sum"])
    sim = x @ x.T
    assert np.isclose(sim[0, 1], 1.0) and sim[0, 2] < 0.5 and np.isclose(sim[0, 3], 0.0)
    assert analysis.vendi_score(x[:2]) < 1.01 and analysis.vendi_score(x[[0, 2, 3]]) > 2.0
    assert emb.topics(["4321+8765", "12+3", "hello"]) == ["level 2", "other length", "ill-posed"]


def test_the_exact_grader_reads_the_sum_as_written():
    """In-process and exact: the gold digit string itself, never math-verify's numeric reading
    (units first, `021` is 120, not `21` = 12), and a number is all an answer can be."""
    g = addition.ExactGrader()
    jobs = [("2196", "2196"), (" 2196 ", "2196"), ("021", "21"), ("12+3", "15"), (None, "1"), ("7", ["8", "7"]),
            ("2196", "2196", True)]
    assert g.grade_many(jobs) == [True, True, False, False, False, True, True]
    assert g.stats["calls"] == 7 and g.stats["math_verify"] == 0
    assert [g.parses(a) for a in ("2196", " 12 ", "12+3", "", "1.5", "-3")] == [True, True, False, False, False, False]
    with math_verify_grader() as mv:  # where both decide, they agree; math-verify is lenient only on form
        same = [j for j in jobs if j[0] is not None and j[0].strip().isdigit() and j[0].strip()[0] != "0"]
        assert mv.grade_many(same) == g.grade_many(same)
        assert mv.grade_many([("021", "21")]) == [True]


def math_verify_grader():
    return grading.Grader(timeout=5.0, workers=1)


def test_the_world_of_a_config_owns_pools_oracle_and_grader():
    from soar import worlds

    cfg = config.load(config._ROOT / "params.yaml")
    world = worlds.of(cfg)
    assert world.name == "addition" and isinstance(world.grader(cfg.grading), addition.ExactGrader)
    pool = world.pool("addition_test", levels=[4], limit=10, seed=0)
    assert len(pool) == 10 and {p.metadata["level"] for p in pool} == {4}
    assert pool == world.pool("addition_test", levels=[4], limit=10, seed=0)  # seeded
    assert not {p.problem for p in world.oracle_pool("addition_test")} & {p.problem for p in addition.pool("addition_test")}
    tiny = config.load(config._ROOT / "params.yaml", {"profile": "tiny"})
    assert worlds.of(tiny).name == "math" and isinstance(worlds.of(tiny).grader(tiny.grading), grading.Grader)
    assert worlds.of(tiny).oracle_pool("harp") is None
    with pytest.raises(ValueError, match="mix the addition world's pools with benchmarks"):
        worlds.of(config.load(config._ROOT / "params.yaml", {"fail_at_k": {"pools": ["addition_test", "math_test"]}}))
