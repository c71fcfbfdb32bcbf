"""Opt-in (`make judge-server test-optin`): the OpenAI-compatible judge against a real server on
this machine, llama.cpp's (llama-cpp-python[server]) serving the embedded SmolLM2 GGUF.
CI does not build llama.cpp (it compiles for 10-30 minutes), hence opt-in."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx
import pytest

from soar import analysis
from soar.analysis import VerdictCache
from soar.data import Problem
from soar.models import gguf_path

pytestmark = pytest.mark.optin


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("llama_cpp.server", reason="needs `make judge-server` (llama-cpp-python[server])")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("server") / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path("smollm2-135m-instruct")),
                             "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("llama.cpp server did not come up in 120 s:\n" + log.read_text()[-3000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_judge_against_a_real_llama_cpp_server(server, tmp_path, grader, monkeypatch):
    monkeypatch.setenv("SOAR_JUDGE_API_KEY", "sk-local-not-checked")  # sent, never written
    judge = analysis.OpenAIJudge(server, "smollm2", concurrency=2, timeout_s=120, retries=2)
    qs = [Problem("a", "What is 12 + 7?", "19"), Problem("b", "A farmer has 3 cows and buys 4 more. How many cows?", "7"),
          Problem("c", "What is 6 times 7?", "42")]
    kw = dict(solve_samples=2, solve_max_new_tokens=96, verdict_max_new_tokens=96, temperature=0.7, seed=0)
    t = time.perf_counter()
    first = analysis.judge_questions(judge, qs, VerdictCache(tmp_path / "v.jsonl"), grader=grader, **kw)
    elapsed = time.perf_counter() - t
    assert all(len(r["solutions"]) == 2 and all(s.strip() for s in r["solutions"]) for r in first)
    assert all(r["verdict_text"].strip() for r in first)
    assert all((r["verdict"] is None) == bool(r["unparseable"]) for r in first)
    assert "sk-local" not in (tmp_path / "v.jsonl").read_text()

    cache = VerdictCache(tmp_path / "v.jsonl")
    assert analysis.judge_questions(judge, qs, cache, grader=grader, **kw) == first
    assert cache.hits == 3 and cache.misses == 0
    print(json.dumps({"server": "llama.cpp (llama-cpp-python)", "seconds": round(elapsed, 1),
                      "parsed": sum(r["verdict"] is not None for r in first),
                      "resolve_answers": sum(r["majority"] is not None for r in first),
                      "verdict_example": first[0]["verdict_text"][:200]}))
