"""An LLM judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

One request per pair: the pairwise template (seed 002's oracle prompts by default) is
filled with the prompt and the two responses, shown in a random order (A/B swapped with
p = 0.5) to cancel the judge's position bias; the verdict ``Preferred: A|B`` is parsed
and un-swapped, so ``compare`` returns +1 when the *first* argument wins, -1 when the
second does, and ``None`` when the answer is unparseable (or a seeded coin flip, +-1, in
evaluation mode) or every retry failed. More than ``max_failed`` (``annotate.max_unlabelled``,
default 0) pairs whose every retry failed raise :class:`JudgeError` once the whole batch is
done: every answer received is cached by then, so the rerun of the stage pays only for
the failed pairs, and no label is lost by committing a stage without them. Unparseable
answers do not count: asking again would return the cached answer.

The order shown is a hash of (seed, prompt, unordered pair), not a draw from a running
RNG, so a restarted stage presents every pair exactly as before and finds it in the cache.

Requests run in a thread pool (``concurrency`` in flight) on one ``httpx.Client``.
Timeouts, connection errors, 429 and 5xx are retried with exponential backoff
(``backoff * 2**attempt`` seconds, or the server's ``Retry-After`` when longer); other
4xx answers (bad key, bad model name) stop the stage at once.

The cache is a SQLite file keyed by sha256 of (judge model, template, generation
settings, prompt, first shown response, second shown response): the order is part of
the key. It stores the raw answer and its token usage; parsing happens on read, so a
better parser re-reads old answers for free. The API key is read from the environment
variable named in the config and sent only in the Authorization header.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from iterdpo.errors import UserError

# --- templates -------------------------------------------------------------------------

_FORMAT = (
    "First, provide a one-sentence comparison of the two {what}, explaining which is better and why. "
    'Second, on a new line, state only "A" or "B" to indicate your choice. '
    "You must choose A or B for the preferred answer even if neither {one} is very good.\n"
    "Your response should use the format:\n"
    "Comparison: <one-sentence comparison and explanation>\n"
    'Preferred: <"A" or "B">'
)

TEMPLATES: dict[str, dict[str, str]] = {
    # seed 002 (Muldrew et al. 2024), Appendix A, Figure 4: the sentiment oracle
    "sentiment": {
        "system": "You are a helpful assistant that evaluates the quality and positive sentiment of movie reviews.",
        "user": "Which of the following movie reviews is better? The best one will be the one with the most "
        "positive sentiment, which also is grammatically correct, consistent, and avoids repetition.\n\n"
        "Review A: {prompt} {completion_a}\n\nReview B: {prompt} {completion_b}\n\n"
        + _FORMAT.format(what="reviews", one="review"),
    },
    # seed 002, Appendix A, Figure 4: the summarisation oracle
    "summarization": {
        "system": "You are a helpful assistant that evaluates the quality of summaries for internet posts.",
        "user": "Which of the following summaries does a better job of summarizing the most important points in "
        "the given forum post, without including unimportant or irrelevant details?\n\n"
        "Post: {prompt}\n\nSummary A: {completion_a}\n\nSummary B: {completion_b}\n\n"
        + _FORMAT.format(what="summaries", one="summary"),
    },
    "general": {
        "system": "You are a careful, impartial judge of responses to user requests.",
        "user": "Which of the following responses answers the user's request better? Judge helpfulness, "
        "correctness and clarity; ignore length unless it hurts the answer.\n\n"
        "Request: {prompt}\n\nResponse A: {completion_a}\n\nResponse B: {completion_b}\n\n"
        + _FORMAT.format(what="responses", one="response"),
    },
}
PLACEHOLDERS = ("{prompt}", "{completion_a}", "{completion_b}")


def load_template(spec: str) -> dict[str, str]:
    """A built-in template name, or a file: .txt (the user message) or .yaml/.json {system, user}."""
    if spec in TEMPLATES:
        return dict(TEMPLATES[spec])
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"judge template {spec!r}: neither a built-in ({sorted(TEMPLATES)}) nor an existing file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        import yaml

        data = yaml.safe_load(text)
        if not isinstance(data, dict) or not isinstance(data.get("user"), str):
            raise ValueError(f"{path}: a template file must map 'user' (and optionally 'system') to text")
        tpl = {"system": str(data.get("system") or ""), "user": data["user"]}
    else:
        tpl = {"system": "", "user": text}
    missing = [p for p in PLACEHOLDERS[1:] if p not in tpl["user"]]
    if missing:
        raise ValueError(f"{path}: field 'user': the template lacks {missing} (placeholders: {list(PLACEHOLDERS)})")
    return tpl


def render(template: dict[str, str], prompt: str, first: str, second: str) -> list[dict]:
    """Chat messages of one judgement. Plain replacement, so braces in texts are safe."""
    user = template["user"]
    # replace completions before the prompt: a prompt containing "{completion_a}" stays literal
    user = user.replace("{completion_a}", "\x00A\x00").replace("{completion_b}", "\x00B\x00")
    user = user.replace("{prompt}", prompt).replace("\x00A\x00", first).replace("\x00B\x00", second)
    msgs = [{"role": "system", "content": template["system"]}] if template.get("system") else []
    return msgs + [{"role": "user", "content": user}]


# --- parsing ---------------------------------------------------------------------------

_TAIL = r"[\s\"'*_\[(<]*(?i:(?:response|review|summary|option)\s+)?([AB])(?![A-Za-z])"
# "Preferred" may go without a colon ("Preferred B"); weaker words need one ("Choice: A"),
# so prose such as "answer A is shorter" is not read as a verdict
_PREFERRED = re.compile(r"(?i:preferred)[\s*_]*(?i:response|review|summary|answer)?[\s*_]*[:=\-]?" + _TAIL)
_LABELLED = re.compile(r"(?i:preference|choice|winner|verdict|answer)[\s*_]*[:=]" + _TAIL)
_ALONE = re.compile(r"^[\s\"'*\[(<]*(?i:(?:response|review|summary|option)\s+)?([AB])[\s\"'*\])>.]*$")


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B' or None. The last ``Preferred: X`` (or ``Choice:/Winner:/Verdict:/Answer: X``)
    wins; else a last non-empty line that is only A or B (``"B"``, ``**Response A**``)."""
    if not text:
        return None
    hits = [(m.start(), m.group(1)) for rx in (_PREFERRED, _LABELLED) for m in rx.finditer(text)]
    if hits:
        return max(hits)[1]
    for line in reversed([ln for ln in text.strip().splitlines() if ln.strip()]):
        m = _ALONE.match(line)
        return m.group(1) if m else None
    return None


# --- cache -----------------------------------------------------------------------------


class JudgeCache:
    """SQLite map key -> (raw answer, prompt tokens, completion tokens); safe across threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS judgements (key TEXT PRIMARY KEY, answer TEXT, "
            "prompt_tokens INTEGER, completion_tokens INTEGER, model TEXT, created REAL)"
        )
        self._db.commit()

    def get(self, key: str) -> tuple[str, int, int] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT answer, prompt_tokens, completion_tokens FROM judgements WHERE key = ?", (key,)
            ).fetchone()
        return tuple(row) if row else None

    def put(self, key: str, answer: str, prompt_tokens: int, completion_tokens: int, model: str) -> None:
        with self._lock:  # committed per answer: a killed stage keeps everything it paid for
            self._db.execute(
                "INSERT OR REPLACE INTO judgements VALUES (?, ?, ?, ?, ?, ?)",
                (key, answer, prompt_tokens, completion_tokens, model, time.time()),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --- the annotator ---------------------------------------------------------------------


class JudgeError(RuntimeError, UserError):
    """A judge answer that retrying cannot fix (bad key, unknown model, bad URL)."""


@dataclass
class _Result:
    answer: str | None  # None: every attempt failed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


class JudgeAnnotator:
    """Pairwise LLM judge; see the module docstring.

    ``stats()`` reports, for the calls of this instance: ``requests`` (HTTP calls made,
    retries included), ``cache_hits``, ``retries``, ``failed`` (pairs whose every attempt
    failed), ``unparseable``, ``swapped`` (pairs shown B-first), token counts and
    ``cost`` = prompt_tokens * price_in / 1e6 + completion_tokens * price_out / 1e6 of the
    calls actually paid for (cache hits cost nothing).
    """

    name = "judge"

    def __init__(self, cfg, *, cache_path: str | Path | None = None, seed: int = 0, on_unparseable: str = "drop",
                 progress: bool = True, max_failed: int = 0):
        import httpx

        if on_unparseable not in ("drop", "coin"):
            raise ValueError("on_unparseable must be 'drop' or 'coin'")
        self.cfg = cfg
        self.seed = seed
        self.on_unparseable = on_unparseable
        self.progress = progress
        self.max_failed = max_failed
        self.template = load_template(cfg.template)
        url = cfg.url.rstrip("/")
        self.endpoint = url if url.endswith("/chat/completions") else url + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise JudgeError(f"annotate.judge.api_key_env: environment variable {cfg.api_key_env!r} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(headers=headers, timeout=cfg.timeout,
                                    limits=httpx.Limits(max_connections=cfg.concurrency))
        self.cache = JudgeCache(cache_path) if cache_path else None
        self._tpl_id = hashlib.sha256(json.dumps(self.template, sort_keys=True).encode()).hexdigest()[:16]
        self._lock = threading.Lock()
        self._stats = {k: 0 for k in ("pairs", "requests", "cache_hits", "retries", "failed", "unparseable",
                                      "coin_flips", "swapped", "prompt_tokens", "completion_tokens",
                                      "cached_prompt_tokens", "cached_completion_tokens")}

    # -- public ---------------------------------------------------------------------

    def compare(self, prompts: list[str], a: list[str], b: list[str]) -> list[float | None]:
        from tqdm import tqdm

        swaps = [self._swap(x, ya, yb) for x, ya, yb in zip(prompts, a, b, strict=True)]
        jobs = [(x, yb, ya) if s else (x, ya, yb) for x, ya, yb, s in zip(prompts, a, b, swaps, strict=True)]
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            results = list(tqdm(pool.map(lambda j: self._judge(*j), jobs), total=len(jobs), desc="judge",
                                disable=not self.progress or not jobs, mininterval=2.0))
        out: list[float | None] = []
        failed = sum(res.answer is None for res in results)
        self._stats["failed"] += failed
        if jobs and failed == len(jobs) and failed > self.max_failed:
            raise JudgeError(f"every judge request to {self.endpoint} failed after {self.cfg.max_retries} retries")
        if failed > self.max_failed:
            # every other answer of the batch is in the cache by now: a rerun asks only for these
            raise JudgeError(
                f"{failed} of {len(jobs)} judge requests to {self.endpoint} still failed after {self.cfg.max_retries} retries "
                f"(annotate.max_unlabelled={self.max_failed}); the stage is not committed and the other "
                f"{len(jobs) - failed} answers are cached: run again to ask only for the failed ones, or raise "
                "annotate.max_unlabelled to drop them"
            )
        for x, ya, yb, s, res in zip(prompts, a, b, swaps, results, strict=True):
            verdict = parse_verdict(res.answer) if res.answer is not None else None
            if res.answer is not None and verdict is None:
                self._stats["unparseable"] += 1
            if verdict is None:
                if self.on_unparseable == "coin":
                    self._stats["coin_flips"] += 1
                    out.append(1.0 if self._coin(x, ya, yb) else -1.0)
                else:
                    out.append(None)
                continue
            first_wins = verdict == "A"
            out.append(1.0 if first_wins != s else -1.0)  # un-swap: shown first = b when swapped
        self._stats["pairs"] += len(jobs)
        self._stats["swapped"] += sum(swaps)
        return out

    def stats(self) -> dict:
        s = dict(self._stats)
        s["cost"] = round(
            s["prompt_tokens"] * self.cfg.price_input_per_mtok / 1e6
            + s["completion_tokens"] * self.cfg.price_output_per_mtok / 1e6, 6)
        s["judge_model"] = self.cfg.model
        return s

    def close(self) -> None:
        self._client.close()
        if self.cache is not None:
            self.cache.close()

    # -- internals ------------------------------------------------------------------

    def _hash(self, *parts: str) -> str:
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    def _swap(self, prompt: str, a: str, b: str) -> bool:
        """Show b first? p = 0.5, fixed per (seed, unordered pair): a restart, or the same
        pair asked the other way round, shows the same order and hits the cache."""
        lo, hi = sorted((a, b))
        lo_first = int(self._hash("swap", str(self.seed), prompt, lo, hi)[:8], 16) % 2 == 1
        return (lo_first and b == lo and a != b) or (not lo_first and b == hi and a != b)

    def _coin(self, prompt: str, a: str, b: str) -> bool:
        return int(self._hash("coin", str(self.seed), prompt, a, b)[:8], 16) % 2 == 1

    def _key(self, prompt: str, first: str, second: str) -> str:
        gen = f"{self.cfg.temperature}:{self.cfg.max_tokens}"
        return self._hash(self.cfg.model, self._tpl_id, gen, prompt, first, second)

    def _judge(self, prompt: str, first: str, second: str) -> _Result:
        key = self._key(prompt, first, second)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                with self._lock:
                    self._stats["cache_hits"] += 1
                    self._stats["cached_prompt_tokens"] += hit[1]
                    self._stats["cached_completion_tokens"] += hit[2]
                return _Result(hit[0], hit[1], hit[2], cached=True)
        res = self._request(render(self.template, prompt, first, second))
        if res.answer is not None:
            with self._lock:
                self._stats["prompt_tokens"] += res.prompt_tokens
                self._stats["completion_tokens"] += res.completion_tokens
            if self.cache is not None:
                self.cache.put(key, res.answer, res.prompt_tokens, res.completion_tokens, self.cfg.model)
        return res

    def _request(self, messages: list[dict]) -> _Result:
        import httpx

        body = {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                "max_tokens": self.cfg.max_tokens}
        for attempt in range(self.cfg.max_retries + 1):
            with self._lock:
                self._stats["requests"] += 1
                if attempt:
                    self._stats["retries"] += 1
            wait = self.cfg.backoff * 2**attempt
            try:
                r = self._client.post(self.endpoint, json=body)
            except (httpx.TimeoutException, httpx.TransportError):
                r = None
            if r is not None:
                if r.status_code == 200:
                    try:
                        data = r.json()
                        answer = data["choices"][0]["message"]["content"]
                        usage = data.get("usage") or {}
                        return _Result(answer or "", int(usage.get("prompt_tokens") or 0),
                                       int(usage.get("completion_tokens") or 0))
                    except (ValueError, KeyError, IndexError, TypeError):
                        pass  # a garbled body is as good as a 5xx: try again
                elif r.status_code == 429 or r.status_code >= 500:
                    wait = max(wait, _retry_after(r))
                else:
                    raise JudgeError(
                        f"judge endpoint {self.endpoint} answered HTTP {r.status_code}: {r.text[:300]!r} "
                        "(check annotate.judge.url, .model and .api_key_env)"
                    )
            if attempt < self.cfg.max_retries:
                time.sleep(wait * (1.0 + 0.1 * random.random()))  # jitter de-synchronises threads
        return _Result(None)


def _retry_after(r) -> float:
    try:
        return min(float(r.headers.get("retry-after", 0)), 120.0)  # never park a thread for long
    except ValueError:
        return 0.0
