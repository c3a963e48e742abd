"""The judge against a real HTTP server on localhost (ThreadingHTTPServer in a thread).

The server plays an OpenAI-compatible judge: it prefers the shown response with more
"good" words, and misbehaves on request when the prompt contains a marker:
MALFORMED (no verdict), GARBLED (a body that is not JSON), SLOW (the first attempt
sleeps past the client's timeout), R429 / R500 (the first attempt fails), DEAD (always 500).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iterdpo.annotation.judge import (
    JudgeAnnotator,
    JudgeError,
    load_template,
    parse_verdict,
    render,
)
from iterdpo.config import JudgeConfig


class _Judge(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, body: bytes, headers: dict | None = None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        srv = self.server
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = req["messages"][-1]["content"]
        with srv.lock:
            srv.calls += 1
            srv.auth.append(self.headers.get("Authorization"))
            n = srv.attempts[user] = srv.attempts.get(user, 0) + 1
        if self.path != "/v1/chat/completions":
            return self._send(404, b"not found")
        if "DEAD" in user:
            return self._send(500, b"internal error")
        if srv.down and (user in srv.failing or int(hashlib.sha1(user.encode()).hexdigest(), 16) % srv.down == 0):
            with srv.lock:
                srv.failing.add(user)
            return self._send(500, b"down")
        if "R429" in user and n == 1:
            return self._send(429, b"slow down", {"Retry-After": "0"})
        if "R500" in user and n == 1:
            return self._send(503, b"overloaded")
        if "GARBLED" in user and n == 1:
            return self._send(200, b"{not json")
        if "SLOW" in user and n == 1:
            time.sleep(1.0)
        if "MALFORMED" in user:
            text = "Comparison: both are fine.\nI cannot decide."
        else:
            ra = re.search(r"Review A: (.*?)\n\nReview B:", user, re.S).group(1)
            rb = re.search(r"Review B: (.*?)\n\n", user, re.S).group(1)
            text = f"Comparison: one is kinder.\nPreferred: {'A' if ra.count('good') >= rb.count('good') else 'B'}"
        body = {"choices": [{"message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10}}
        return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    srv.daemon_threads = True
    srv.lock, srv.calls, srv.attempts, srv.auth = threading.Lock(), 0, {}, []
    srv.down, srv.failing = 0, set()  # down=m: every request whose message hashes to 0 mod m fails
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _cfg(srv, **kw) -> JudgeConfig:
    base = dict(url=f"http://127.0.0.1:{srv.server_address[1]}/v1", model="toy-judge", concurrency=4,
                timeout=0.4, max_retries=3, backoff=0.01, price_input_per_mtok=2.0, price_output_per_mtok=8.0)
    base.update(kw)
    return JudgeConfig(**base)


def _pairs(n: int, tag: str = ""):
    prompts = [f"Write about thing {i}. {tag}" for i in range(n)]
    good = [f"good good {i}" for i in range(n)]
    bad = [f"bad {i}" for i in range(n)]
    return prompts, good, bad


def test_well_formed_answers_are_unswapped_and_accounted(server, tmp_path):
    j = JudgeAnnotator(_cfg(server), cache_path=tmp_path / "c.sqlite", seed=0, progress=False)
    prompts, good, bad = _pairs(24)
    assert j.compare(prompts, good, bad) == [1.0] * 24
    s = j.stats()
    assert 0 < s["swapped"] < 24  # both orders were shown
    assert s["requests"] == 24 and s["cache_hits"] == 0 and server.calls == 24
    assert s["prompt_tokens"] == 2400 and s["completion_tokens"] == 240
    assert s["cost"] == pytest.approx(2400 * 2e-6 + 240 * 8e-6)
    # the same pairs asked the other way round: shown in the same order, so cached, and un-swapped
    assert j.compare(prompts, bad, good) == [-1.0] * 24
    assert j.stats()["cache_hits"] == 24 and server.calls == 24


def test_restart_hits_the_cache_and_makes_no_http_call(server, tmp_path):
    prompts, good, bad = _pairs(16)
    first = JudgeAnnotator(_cfg(server), cache_path=tmp_path / "c.sqlite", seed=3, progress=False)
    labels = first.compare(prompts, good, bad)
    first.close()
    calls = server.calls
    assert calls == 16
    second = JudgeAnnotator(_cfg(server), cache_path=tmp_path / "c.sqlite", seed=3, progress=False)
    assert second.compare(prompts, good, bad) == labels
    assert server.calls == calls  # zero HTTP calls
    s = second.stats()
    assert s["requests"] == 0 and s["cache_hits"] == 16 and s["cost"] == 0.0
    assert s["cached_prompt_tokens"] == 1600
    # another judge model is another cache entry
    third = JudgeAnnotator(_cfg(server, model="other"), cache_path=tmp_path / "c.sqlite", seed=3, progress=False)
    third.compare(prompts[:2], good[:2], bad[:2])
    assert server.calls == calls + 2


def test_malformed_answer_is_none_when_acquiring_and_a_coin_in_evaluation(server, tmp_path):
    prompts, good, bad = _pairs(10, "MALFORMED")
    j = JudgeAnnotator(_cfg(server), cache_path=None, progress=False)
    assert j.compare(prompts, good, bad) == [None] * 10
    assert j.stats()["unparseable"] == 10
    e = JudgeAnnotator(_cfg(server), cache_path=None, on_unparseable="coin", progress=False)
    flips = e.compare(prompts, good, bad)
    assert set(flips) <= {1.0, -1.0} and len(set(flips)) == 2
    assert e.compare(prompts, good, bad) == flips  # seeded, not a fresh draw
    assert e.stats()["coin_flips"] == 20


@pytest.mark.parametrize("marker", ["SLOW", "R429", "R500", "GARBLED"])
def test_transient_failures_are_retried(server, tmp_path, marker):
    prompts, good, bad = _pairs(4, marker)
    j = JudgeAnnotator(_cfg(server), cache_path=tmp_path / "c.sqlite", progress=False)
    assert j.compare(prompts, good, bad) == [1.0] * 4
    s = j.stats()
    assert s["retries"] == 4 and s["requests"] == 8 and s["failed"] == 0


def test_persistent_failure_drops_the_pair_only_when_tolerated_and_all_failing_raises(server):
    prompts, good, bad = _pairs(3)
    j = JudgeAnnotator(_cfg(server, max_retries=1), cache_path=None, progress=False, max_failed=1)
    labels = j.compare(prompts + ["x DEAD"], good + ["good"], bad + ["bad"])
    assert labels == [1.0, 1.0, 1.0, None]
    assert j.stats()["failed"] == 1
    assert sum(n for msg, n in server.attempts.items() if "DEAD" in msg) == 2  # 1 try + max_retries
    with pytest.raises(JudgeError, match="every judge request"):
        JudgeAnnotator(_cfg(server, max_retries=1), cache_path=None, progress=False).compare(["y DEAD"], ["a"], ["b"])


def test_a_failed_pair_fails_the_batch_after_caching_the_rest(server, tmp_path):
    """Before: a pair whose requests all failed was dropped and the stage committed, so its label was lost for good."""
    prompts, good, bad = _pairs(5)
    j = JudgeAnnotator(_cfg(server, max_retries=1), cache_path=tmp_path / "c.sqlite", progress=False)
    with pytest.raises(JudgeError, match=r"1 of 6 judge requests .* still failed .*max_unlabelled=0.* 5 answers are cached"):
        j.compare(prompts + ["x DEAD"], good + ["good"], bad + ["bad"])
    assert len(j.cache) == 5 and j.stats()["failed"] == 1
    j.close()
    calls = server.calls
    again = JudgeAnnotator(_cfg(server, max_retries=1), cache_path=tmp_path / "c.sqlite", progress=False, max_failed=1)
    assert again.compare(prompts + ["x DEAD"], good + ["good"], bad + ["bad"]) == [1.0] * 5 + [None]
    assert server.calls == calls + 2  # only the failed pair was asked again (1 try + 1 retry)


def test_client_errors_stop_at_once(server):
    j = JudgeAnnotator(_cfg(server, url=f"http://127.0.0.1:{server.server_address[1]}/wrong"), cache_path=None, progress=False)
    with pytest.raises(JudgeError, match="HTTP 404"):
        j.compare(["p"], ["a"], ["b"])
    assert server.calls == 1


def test_api_key_is_sent_but_never_stored(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-secret-123")
    j = JudgeAnnotator(_cfg(server, api_key_env="TEST_JUDGE_KEY"), cache_path=tmp_path / "c.sqlite", progress=False)
    j.compare(*_pairs(3))
    j.close()
    assert server.auth == ["Bearer sk-secret-123"] * 3
    for f in tmp_path.iterdir():
        assert b"sk-secret-123" not in f.read_bytes()
    assert "sk-secret-123" not in json.dumps(j.stats())
    monkeypatch.delenv("TEST_JUDGE_KEY")
    with pytest.raises(JudgeError, match="TEST_JUDGE_KEY"):
        JudgeAnnotator(_cfg(server, api_key_env="TEST_JUDGE_KEY"), cache_path=None)


@pytest.mark.parametrize(
    "text, want",
    [
        ("Comparison: A is kinder.\nPreferred: A", "A"),
        ("Comparison: x\nPreferred: B", "B"),
        ('Comparison: x\nPreferred: "B"', "B"),
        ("Comparison: x\n**Preferred:** **A**", "A"),
        ("Comparison: x\npreferred: Review B", "B"),
        ("Comparison: B reads better than A.\nB", "B"),
        ("Preferred: A\n...on reflection\nPreferred: B", "B"),
        ("Comparison: neither.\nPreferred: neither", None),
        ("Comparison: Both are good. A and B.", None),
        ("", None),
        (None, None),
        ("Preferred: Absolutely none", None),
        ("Comparison: x\nPreferred: B\nNote: answer A was close", "B"),
        ("Final answer: A", "A"),
        ("Comparison: answer A is shorter than B, which rambles.", None),
        ("Preferred B", "B"),
    ],
)
def test_parse_verdict(text, want):
    assert parse_verdict(text) == want


def test_templates_from_files(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("system: be fair\nuser: 'Q: {prompt} A: {completion_a} B: {completion_b}'\n")
    tpl = load_template(str(f))
    msgs = render(tpl, "p {completion_b}", "x", "y")
    assert msgs == [{"role": "system", "content": "be fair"}, {"role": "user", "content": "Q: p {completion_b} A: x B: y"}]
    bad = tmp_path / "bad.txt"
    bad.write_text("only {prompt} and {completion_a}")
    with pytest.raises(ValueError, match=r"bad.txt: field 'user'.*completion_b"):
        load_template(str(bad))
    with pytest.raises(ValueError, match="built-in"):
        load_template("nope")
    assert "positive sentiment" in load_template("sentiment")["user"]


def test_annotate_stage_reports_usage_and_a_rerun_pays_nothing(server, tmp_path):
    import shutil

    from iterdpo.config import load_config
    from iterdpo.pipeline.driver import open_run, run_stage
    from iterdpo.stages import DEFAULT
    from tests.annotation.conftest import fake_run

    root = fake_run(tmp_path, iterations=1)
    port = server.server_address[1]
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "annotate.annotator=judge", f"annotate.judge.url=http://127.0.0.1:{port}/v1",
                             "annotate.judge.price_input_per_mtok=1.0", "annotate.judge.backoff=0.01"])
    run = open_run(cfg, DEFAULT)
    m = run_stage(run, "annotate", 1)
    st = m["stats"]["annotator"]
    assert st["requests"] == server.calls == m["stats"]["candidates"] == 10
    assert st["prompt_tokens"] == 1000 and st["cost"] == pytest.approx(0.001)
    assert (root / "judge_cache.sqlite").exists()
    shutil.rmtree(root / "iter_1" / "annotate")  # as if the stage had died before committing
    m2 = run_stage(open_run(cfg, DEFAULT), "annotate", 1)
    assert server.calls == 10 and m2["stats"]["annotator"]["cache_hits"] == 10 and m2["stats"]["annotator"]["cost"] == 0


def test_annotate_stage_with_a_dead_judge_commits_nothing_and_a_rerun_pays_only_for_the_missing(server, tmp_path):
    from iterdpo.annotation.judge import JudgeError
    from iterdpo.config import load_config
    from iterdpo.pipeline.driver import open_run, run_stage
    from iterdpo.stages import DEFAULT
    from tests.annotation.conftest import fake_run

    def annotate(overrides):
        return run_stage(open_run(load_config(None, overrides), DEFAULT), "annotate", 1)

    root = fake_run(tmp_path, iterations=1)
    port = server.server_address[1]
    over = [f"run.output_dir={tmp_path}", "annotate.annotator=judge", f"annotate.judge.url=http://127.0.0.1:{port}/v1",
            "annotate.judge.backoff=0.01", "annotate.judge.max_retries=1"]
    server.down = 3  # the server answers 500 to every third distinct request (stable per message)
    with pytest.raises(JudgeError, match="still failed"):
        annotate(over)
    assert not (root / "iter_1" / "annotate").exists()  # nothing committed: no label lost
    failed = len(server.failing)
    assert 0 < failed < 10
    server.down = 0
    calls = server.calls
    m = annotate(over)
    assert server.calls == calls + failed  # the rerun asks only for the pairs that failed
    st = m["stats"]
    assert st["pairs"] + st["ties"] == 10 and st["unlabelled"] == 0
    assert st["unlabelled_failed"] == 0 and st["unlabelled_unparseable"] == 0 and st["annotator"]["cache_hits"] == 10 - failed
    # tolerance opted into: the failed pairs are dropped, counted, and the stage commits
    other = fake_run(tmp_path / "b", iterations=1)
    server.down, server.failing = 3, set()
    m = annotate([*over, f"run.output_dir={tmp_path / 'b'}", "annotate.max_unlabelled=10"])
    assert m["stats"]["unlabelled_failed"] == len(server.failing) > 0 and m["stats"]["unlabelled"] >= len(server.failing)
    assert (other / "iter_1" / "annotate" / "manifest.json").exists()


@settings(max_examples=200, deadline=None)
@given(words=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz AB.,'\"*", min_size=1, max_size=12), max_size=20),
       verdict=st.sampled_from(["A", "B"]), style=st.sampled_from(["Preferred: {}", 'Preferred: "{}"', "**Preferred:** {}", "Preferred: Review {}"]))
def test_a_final_verdict_line_always_wins(words, verdict, style):
    """Whatever the comparison says (it may mention A and B), the final verdict line decides."""
    text = "Comparison: " + " ".join(words) + "\n" + style.format(verdict)
    assert parse_verdict(text) == verdict
