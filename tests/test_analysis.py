"""soar.analysis: Vendi, strict verdict parsing, the verdict cache, the HTTP judge's retries,
concurrency and key handling, and the reward association."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from soar import analysis, config, prompts
from soar.analysis import VerdictCache, Verdict, parse_verdict
from soar.data import Problem
from soar.metrics import wilson_ci


# --- Vendi -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedder():
    return analysis.load_embedder("all-MiniLM-L6-v2")


def test_vendi_of_identical_questions_is_one(embedder):
    emb = analysis.embed(embedder, ["What is 7 times 8?"] * 6)
    assert analysis.vendi_score(emb) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_vendi_of_orthogonal_rows_is_their_count(n):
    assert analysis.vendi_score(np.eye(n, 32) * 3.0) == pytest.approx(n, rel=1e-9)


def test_vendi_of_distinct_questions_is_between_one_and_their_count(embedder):
    qs = ["What is 7 times 8?", "Find all real x with x^2 - 5x + 6 = 0.",
          "A train leaves at 3 pm at 60 mph; when has it gone 150 miles?", "How many primes are below 30?"]
    v = analysis.vendi_score(analysis.embed(embedder, qs))
    assert 1.5 < v < 4


def test_standardized_vendi_draws_fixed_size_subsets_and_is_reproducible():
    emb = np.eye(10, 16)
    a = analysis.standardized_vendi(emb, size=4, draws=20, seed=1)
    b = analysis.standardized_vendi(emb, size=4, draws=20, seed=1)
    assert a == b and a["size"] == 4 and a["draws"] == 20
    assert all(len(set(i)) == 4 for i in a["indices"])
    assert a["mean"] == pytest.approx(4.0)  # any 4 orthogonal rows
    small = analysis.standardized_vendi(np.eye(3, 8), size=128, draws=5, seed=0)
    assert small["size"] == 3 and small["mean"] == pytest.approx(3.0)


# --- verdict parsing ---------------------------------------------------------------------------

GOOD = {"well_posed": True, "correct": False, "error_type": "arithmetic", "answer": "42"}


def _j(**over):
    return json.dumps({**GOOD, **over})


@pytest.mark.parametrize("text, expected", [
    (_j(), Verdict(True, False, "arithmetic", "42")),
    ("```json\n" + _j() + "\n```", Verdict(True, False, "arithmetic", "42")),
    ("  " + _j(correct=True, error_type="none") + "\n", Verdict(True, True, "none", "42")),
    (_j(well_posed=False, correct=None, error_type="ambiguity", answer=None), Verdict(False, None, "ambiguity", None)),
    (_j(answer=7), Verdict(True, False, "arithmetic", "7")),  # a bare number is an answer
])
def test_valid_verdicts_parse(text, expected):
    assert parse_verdict(text) == (expected, "")


@pytest.mark.parametrize("text, reason", [
    ("The question is well posed and correct.", "not a JSON object"),
    ("Verdict: " + _j(), "not a JSON object"),  # prose before the object: not guessed at
    (_j()[:-1], "invalid JSON"),
    (_j() + " and more", "invalid JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "answer"}), "keys"),
    (_j(extra=1), "keys"),
    (_j(well_posed="yes"), "well_posed is not a boolean"),
    (_j(correct="no"), "correct is not a boolean or null"),
    (_j(error_type="Arithmetic"), "unknown error_type"),
    (_j(error_type="typo"), "unknown error_type"),
    (_j(answer=["1"]), "answer is not a string or null"),
    (_j(correct=None), "well-posed but correct is null"),
    (_j(well_posed=False), "not well-posed but correct is judged"),
    (_j(error_type="none"), "contradicts"),
    (_j(correct=True), "contradicts"),
    (_j(well_posed=False, correct=None, error_type="none"), "contradicts"),
    (_j(well_posed=False, correct=None, error_type="arithmetic"), "contradicts"),  # ill-posed: impossibility/ambiguity
    (_j(error_type="ambiguity"), "contradicts"),  # well-posed and wrong: arithmetic/logic
])
def test_invalid_verdicts_are_counted_not_guessed(text, reason):
    verdict, why = parse_verdict(text)
    assert verdict is None and reason in why


def test_every_error_type_is_named_in_the_prompt():
    text = prompts.judge_messages("Q?", "1")[0]["content"]
    assert all(f'"{e}"' in text for e in prompts.ERROR_TYPES)


@pytest.mark.parametrize("answers, expected", [
    (["3", "4", "3"], ("3", 2)),
    (["4", "3"], ("4", 1)),  # tie: the earliest
    ([None, None], (None, 0)),
    ([None, "\\frac{1}{2}", "\\dfrac{1}{2}"], ("\\frac{1}{2}", 2)),  # grouped after clean_answer
])
def test_majority_answer(answers, expected):
    assert analysis.majority_answer(answers) == expected


def test_summary_shares_and_wilson_intervals():
    recs = [{"verdict": {"well_posed": True, "correct": True, "error_type": "none", "answer": "1"},
             "resolve_correct": True, "unparseable": None},
            {"verdict": {"well_posed": False, "correct": None, "error_type": "ambiguity", "answer": None},
             "resolve_correct": False, "unparseable": None},
            {"verdict": None, "resolve_correct": None, "unparseable": "invalid JSON"}]
    s = analysis.summarize_verdicts(recs)
    assert s["parsed"] == 2 and s["unparseable"] == {"invalid JSON": 1}
    assert s["well_posed"]["share"] == 0.5 and s["correct"]["share"] == 0.5
    assert s["errors"]["ambiguity"]["k"] == 1 and s["resolve_correct"] == {**s["resolve_correct"], "k": 1, "n": 2}
    assert s["no_resolve_answer"] == 1
    assert "| Well-posed | 50.0 (1/2) |" in analysis.taxonomy_table({"X": s})


@pytest.mark.parametrize("k, n, lo, hi", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
                                          (1, 3, 0.0615, 0.7923)])
def test_wilson_interval_known_values(k, n, lo, hi):
    got = wilson_ci(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-4) and got[1] == pytest.approx(hi, abs=1e-4)
    assert wilson_ci(0, 0) is None


# --- the cache, with the real embedded model as the judge ---------------------------------------

class Counting:
    """Wraps a judge and counts the conversations it is asked about."""

    def __init__(self, judge):
        self.judge, self.name, self.asked = judge, judge.name, 0

    def chat(self, conversations, **kw):
        self.asked += len(conversations)
        return self.judge.chat(conversations, **kw)


KW = dict(solve_samples=2, solve_max_new_tokens=24, verdict_max_new_tokens=24, temperature=1.0, seed=3)
QS = [Problem("a", "What is 2 + 3?", "5"), Problem("b", "What is 10 - 4?", "6"), Problem("c", "What is 2 + 3?", "5")]


def test_a_rerun_hits_the_cache_for_every_item(tmp_path, smol, grader):
    cfg = config.load(overrides={"generation": {"batch_size": 8}})
    judge = Counting(analysis.LocalJudge(cfg.model, cfg.generation, model=smol))
    first = analysis.judge_questions(judge, QS, VerdictCache(tmp_path / "v.jsonl"), grader=grader, **KW)
    assert judge.asked == 2 * 2  # two distinct questions, a re-solve and a verdict call each
    assert [r["question"] for r in first] == [q.problem for q in QS] and [r["id"] for r in first] == ["a", "b", "c"]
    assert {k: v for k, v in first[0].items() if k != "id"} == {k: v for k, v in first[2].items() if k != "id"}
    stored = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert len(stored) == 2 and not any("resolve_correct" in r for r in stored)  # grades are recomputed
    assert all(len(r["solutions"]) == 2 and ((r["verdict"] is None) == bool(r["unparseable"])) for r in first)

    again = VerdictCache(tmp_path / "v.jsonl")  # as a new process would
    second = analysis.judge_questions(judge, QS, again, grader=grader, **KW)
    assert judge.asked == 4 and again.misses == 0 and again.hits == len(QS)
    assert second == first

    other = VerdictCache(tmp_path / "v.jsonl")  # other settings are other items
    analysis.judge_questions(judge, QS[:1], other, grader=grader, **{**KW, "solve_samples": 3})
    assert other.misses == 1 and judge.asked == 6


def test_a_line_cut_by_a_kill_is_judged_again_but_a_bad_middle_line_is_an_error(tmp_path):
    path = tmp_path / "v.jsonl"
    path.write_text(json.dumps({"key": "k1", "x": 1}) + "\n" + '{"key": "k2", "x"')
    cache = VerdictCache(path)
    assert set(cache.items) == {"k1"}
    cache.put([{"key": "k2", "x": 2}])  # appended after the cut line was dropped
    assert set(VerdictCache(path).items) == {"k1", "k2"}
    path.write_text('{"key": "k2", "x"\n' + json.dumps({"key": "k1", "x": 1}) + "\n")
    with pytest.raises(ValueError, match=r"v.jsonl:1"):
        VerdictCache(path)


# --- the OpenAI-compatible judge over real HTTP --------------------------------------------------
# A stdlib server on localhost stands in for a hosted endpoint here so that failures (503, slow
# replies) can be scripted; the same client against a real llama.cpp server is the opt-in test below.

class Script:
    def __init__(self, plan):
        self.plan, self.lock, self.seen, self.inflight, self.peak = list(plan), threading.Lock(), [], 0, 0


def _server(script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.seen.append((self.path, self.headers.get("Authorization"), body))
                action = script.plan.pop(0) if script.plan else "ok"
                script.inflight += 1
                script.peak = max(script.peak, script.inflight)
            try:
                if action == "slow":
                    time.sleep(1.5)
                if action == "hang":  # accepts the request, never answers (within the test)
                    time.sleep(5)
                    return
                time.sleep(0.05)
                if action == "503":
                    self.send_response(503)
                    self.end_headers()
                    return
                reply = json.dumps({"choices": [{"message": {"role": "assistant",
                                                             "content": "echo:" + body["messages"][0]["content"][-12:]}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(reply.encode())
            finally:
                with script.lock:
                    script.inflight -= 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_http_judge_retries_limits_concurrency_and_never_stores_the_key(tmp_path, monkeypatch, grader):
    script = Script(["503", "slow", "503"])
    server = _server(script)
    monkeypatch.setenv("SOAR_TEST_JUDGE_KEY", "sk-secret-123")
    try:
        judge = analysis.OpenAIJudge(f"http://127.0.0.1:{server.server_port}/v1", "served-model",
                                     api_key_env="SOAR_TEST_JUDGE_KEY", concurrency=2, timeout_s=1.0,
                                     retries=3, backoff_s=0.01)
        convs = [[{"role": "user", "content": f"question number {i}"}] for i in range(5)]
        out = judge.chat(convs, n=2, temperature=0.5, max_tokens=8, seed=1)
        assert [len(r) for r in out] == [2] * 5 and out[3][1] == "echo:" + "question number 3"[-12:]
        assert len(script.seen) == 10 + 3  # two 503s and one timeout were retried
        assert script.peak <= 2
        paths, auths, bodies = zip(*script.seen)
        assert set(paths) == {"/v1/chat/completions"} and set(auths) == {"Bearer sk-secret-123"}
        assert {b["model"] for b in bodies} == {"served-model"} and len({b["seed"] for b in bodies}) >= 10

        cache = VerdictCache(tmp_path / "v.jsonl")
        analysis.judge_questions(judge, QS, cache, grader=grader, **KW)
        assert "sk-secret" not in (tmp_path / "v.jsonl").read_text()
        assert all(r["unparseable"] == "not a JSON object" for r in cache.items.values())

        script.plan = ["503"] * 10
        with pytest.raises(analysis.JudgeError, match="gave up after 4 attempts") as err:
            judge.chat(convs[:1], n=1, temperature=0.0, max_tokens=8, seed=1)
        assert "sk-secret" not in str(err.value)
    finally:
        server.shutdown()


def test_a_hung_judge_server_fails_after_two_timeouts_not_every_retry():
    """A server that accepts requests and never answers: the judge gives up after its second
    timeout (2 x timeout_s + backoff), not after retries x timeout_s (about 10 minutes with the
    old defaults of 120 s and 4 retries)."""
    script = Script(["hang"] * 10)
    server = _server(script)
    try:
        judge = analysis.OpenAIJudge(f"http://127.0.0.1:{server.server_port}/v1", "m", concurrency=1,
                                     timeout_s=0.5, retries=4, backoff_s=0.01)
        start = time.perf_counter()
        with pytest.raises(analysis.JudgeError, match="no answer within 0.5 s, twice"):
            judge.chat([[{"role": "user", "content": "q"}]], n=1, temperature=0.0, max_tokens=8, seed=0)
        assert time.perf_counter() - start < 2.0 and len(script.seen) == 2
    finally:
        server.shutdown()
    cfg = config.AnalysisConfig()
    assert 2 * cfg.timeout_s + 1.0 < 120  # the defaults fail a hung server within 2 minutes


def test_http_judge_needs_an_endpoint_and_a_model():
    with pytest.raises(ValueError, match="base_url"):
        analysis.OpenAIJudge("", "m")
    with pytest.raises(ValueError, match="judge_model"):
        analysis.OpenAIJudge("http://x/v1", None)
    with pytest.raises(ValueError, match="'local', 'openai' or 'exact'"):
        analysis.make_judge(config.load(overrides={"analysis": {"judge": "claude"}}))


# --- features ----------------------------------------------------------------------------------

def test_equation_density_and_pairwise_distance():
    assert analysis.equation_density("Solve x^2-5x+6=0") > 0.5 > analysis.equation_density(
        "Tom has some apples and gives half of them to Ann.")
    assert analysis.mean_pairwise_distance(np.eye(3)) == pytest.approx(1.0)
    assert analysis.mean_pairwise_distance(np.ones((4, 2)) / np.sqrt(2)) == pytest.approx(0.0)
    assert analysis.mean_pairwise_distance(np.eye(1)) is None


def test_subject_classifier_puts_questions_near_their_subject(embedder):
    problems = [Problem(f"g{i}", q, "1", metadata={"subject": "Geometry"}) for i, q in enumerate(
        ["What is the area of a triangle with base 4 and height 6?", "A circle has radius 3; find its circumference.",
         "Find the angle sum of a hexagon."])]
    problems += [Problem(f"c{i}", q, "1", metadata={"subject": "Counting & Probability"}) for i, q in enumerate(
        ["How many ways can 5 books be arranged on a shelf?", "A fair die is rolled twice; find the probability of two sixes.",
         "How many 3-person committees can be chosen from 8 people?"])]
    cents = analysis.subject_centroids(embedder, problems, per_subject=3, seed=0)
    assert set(cents) == {"Geometry", "Counting & Probability"}
    got = analysis.classify_subjects(analysis.embed(embedder, ["Find the area of a square with side 5.",
                                                               "In how many ways can 4 people sit in a row?"]), cents)
    assert got == ["Geometry", "Counting & Probability"]


def test_reward_association():
    rows = [{"step": i, "reward": r, "well_posed": w, "correct": None}
            for i, (r, w) in enumerate([(0.1, 0.2), (0.3, 0.5), (0.2, 0.4), (0.5, 0.9)])]
    a = analysis.association(rows, "well_posed", n_boot=200, seed=0)
    assert a["rho"] == pytest.approx(1.0) and a["datasets"] == 4 and a["ci"][1] == pytest.approx(1.0)
    assert analysis.association(rows, "correct", n_boot=10, seed=0)["rho"] is None  # no defined values
    flat = [dict(r, well_posed=0.5) for r in rows]
    assert analysis.association(flat, "well_posed", n_boot=10, seed=0)["rho"] is None  # a constant


def test_dataset_features_follow_the_question_ids_not_the_text():
    rows = [{"step": 0, "dataset": 0, "reward": 0.5, "questions": ["Q", "Q"], "answers": ["1", "2"]}]
    probs = analysis.as_problems(rows, "grounded/seed0")
    assert [p.id for p in probs] == ["grounded/seed0/0/0/0", "grounded/seed0/0/0/1"]
    judged = {probs[0].id: {"verdict": {"well_posed": True}, "resolve_correct": True},
              probs[1].id: {"verdict": {"well_posed": False}, "resolve_correct": False}}
    feats = analysis.dataset_features(rows, judged, "grounded/seed0")
    assert feats == [{"step": 0, "dataset": 0, "reward": 0.5, "well_posed": 0.5, "correct": 0.5}]


def test_topic_shares_are_exact_for_the_addition_world_and_the_figure_draws_every_kind(tmp_path):
    """The addition world's kernel names each question's level exactly; question_kinds draws one
    panel per kind with every variant's seed mean and the base teacher's share."""
    from soar import addition, plots

    embedder = addition.StructureEmbedder()
    qs = ["1000+1000", "9000+1000", "2000+3000", "not a question"]
    centroids = dict.fromkeys(addition.TOPICS)
    shares = analysis.topic_shares(qs, analysis.embed(embedder, qs), embedder, centroids)
    assert shares["level 0"] == 0.5 and shares["level 1"] == 0.25 and shares["ill-posed"] == 0.25
    assert analysis.topic_shares([], None, embedder, centroids) == {}
    runs = [{"variant": v, "seed": s, "promotions": [],
             "steps": [{"step": t, "subjects": {"level 0": 0.1 * t + s / 100, "level 1": 0.5}} for t in range(3)]}
            for v in ("grounded", "shuffled") for s in (0, 1)]
    png = tmp_path / "kinds.png"
    plots.question_kinds({"runs": runs, "topics": {"Base-T": {"level 0": 0.2, "level 1": 0.5}}}, png)
    assert png.exists() and png.with_suffix(".pdf").exists()
