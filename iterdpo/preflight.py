"""Checks before a run creates anything: what would otherwise fail hours later fails now.

:func:`preflight` runs at the top of ``start_run`` (and of a single-stage command) before
the run directory exists. Each failure is one :class:`~iterdpo.errors.PreflightError`
line naming the config field and the value; the CLI prints it and exits with status 2.

- models (``model.name_or_path``, ``model.tokenizer``, ``annotate.reward_model`` when a
  stage uses it) resolve: a built-in shorthand, a local folder with ``config.json`` (a
  tokenizer folder: ``tokenizer.json`` / ``tokenizer_config.json``; a GGUF folder: a
  ``.gguf`` file), or a hub id: in the local cache when ``HF_HUB_OFFLINE=1``, else on a
  reachable hub;
- the tokenizer has a chat template (every prompt is rendered with it);
- files named by the config exist: prompt files, SeRA's offline pairs;
- the judge (annotator or evaluation judge ``judge``): the API key variable is set, the
  URL is well formed and its host accepts a connection; a listed sampling server that does not
  accept one yet is a warning (a pool started beside the run may still be loading);
- the run directory (or its nearest existing parent) is writable;
- free disk against a rough size of the run: a warning only, estimates are rough.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from iterdpo import builtins
from iterdpo.errors import PreflightError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
CONNECT_TIMEOUT = 5.0


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.count("/") > 1 or not _HUB_ID.match(value)


def _names_a_file(value: str) -> bool:
    """A data spec that is a file path (not a built-in task's name such as 'toy', not 'hf:...')."""
    if value in builtins.TASKS or value.startswith("hf:"):
        return False
    return "/" in value or Path(value).suffix.lower() in (".jsonl", ".json", ".parquet", ".csv")


def _has_any(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / n).is_file() for n in names)


def _hub_file(repo: str, name: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, name)
    return Path(hit) if isinstance(hit, str) else None


def resolve_model(field: str, value: str, *, tokenizer: bool = False) -> Path | None:
    """Check one model reference; returns its local folder (None for shorthands and hub ids not cached)."""
    if value in builtins.MODELS or value in builtins.REWARD_MODELS:  # the run builds these itself
        return None
    what = "tokenizer" if tokenizer else "model"
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise PreflightError(f"{field}: {value}: a file, not a {what} folder (save_pretrained writes a folder)")
        need = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model") if tokenizer else ("config.json",)
        if field == "annotate.reward_model":  # a lexical reward model (iterdpo.annotation.lexical) is one JSON file
            need = (*need, "lexical_reward.json")
        if not _has_any(path, need) and not any(path.glob("*.gguf")):
            raise PreflightError(f"{field}: {value}: no {' or '.join(need)} in this folder (is it a {what} saved with save_pretrained?)")
        return path
    if _looks_like_path(value):
        raise PreflightError(f"{field}: {value}: no such folder")
    # a hub id
    cached = _hub_file(value, "config.json" if not tokenizer else "tokenizer_config.json")
    if cached is not None:
        return cached.parent
    if _offline():
        raise PreflightError(
            f"{field}: {value!r} is not a local folder and HF_HUB_OFFLINE=1, so the hub cannot be asked and it is not "
            "in the hub cache (give a folder with config.json, or download it first)"
        )
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(value, timeout=10)
    except Exception as e:
        kind = type(e).__name__
        reason = "not found on the hub" if "NotFound" in kind or "404" in str(e) else f"the hub is unreachable ({kind})"
        raise PreflightError(f"{field}: {value!r} is not a local folder and {reason}") from None
    return None


def check_chat_template(field: str, folder: Path) -> None:
    """The tokenizer folder carries a chat template (tokenizer_config.json or chat_template.jinja/.json)."""
    if any(folder.glob("*.gguf")) or _has_any(folder, ("chat_template.jinja", "chat_template.json")):
        return
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            if json.loads(config.read_text(encoding="utf-8")).get("chat_template"):
                return
        except (ValueError, OSError):
            pass
    raise PreflightError(
        f"{field}: {folder}: the tokenizer has no chat template (no 'chat_template' in tokenizer_config.json, no "
        "chat_template.jinja); every prompt is rendered with it: add one to the folder or use an instruction-tuned tokenizer"
    )


def unreachable(field: str, url: str) -> str | None:
    """Why ``url`` (http(s)://host[:port]/...) accepts no TCP connection now, or None if it does.

    A malformed URL is an error, not a reason.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PreflightError(f"{field}: {url!r}: expected an http:// or https:// URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT):
            return None
    except OSError as e:
        return f"{field}: {url}: cannot connect to {parts.hostname}:{port} ({e.strerror or type(e).__name__})"


def check_connect(field: str, url: str) -> None:
    """``url`` is http(s)://host[:port]/... and the host accepts a TCP connection."""
    reason = unreachable(field, url)
    if reason is not None:
        raise PreflightError(f"{reason}; start the server or fix the URL")


def check_writable(field: str, folder: Path) -> Path:
    """The nearest existing folder at or above ``folder`` accepts a new file (made and removed at once)."""
    probe = folder.resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise PreflightError(f"{field}: {probe}: not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".iterdpo-preflight-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise PreflightError(f"{field}: {probe}: not writable ({e.strerror or e})") from None
    return probe


def _folder_bytes(folder: Path | None) -> int:
    if folder is None or not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def estimate_bytes(cfg, model_folder: Path | None) -> int:
    """A rough size of the run: a saved model per iteration, one training checkpoint
    (weights + two Adam moments) at a time, and the stage tables (~2 KB a completion, four copies)."""
    model = _folder_bytes(model_folder) or 1 << 20
    rows = sum(cfg.prompts_for(k) for k in range(1, cfg.run.iterations + 1)) * cfg.sample.n
    return model * (cfg.run.iterations + 3) + rows * 2048 * 4


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _eval_judge(cfg) -> str:
    name = cfg.evaluate.judge
    if name == "auto":
        name = cfg.annotate.annotator if cfg.annotate.annotator in ("gold", "reward_model", "judge") else "gold"
    return name


def preflight(cfg, stage: str | None = None, *, warn=None) -> None:
    """Run every check that the whole run (``stage`` None) or one stage needs; raise on the first failure.

    ``warn(line)`` receives warnings (default: stderr on rank 0).
    """
    if warn is None:
        def warn(line: str) -> None:
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"[iterdpo] warning: {line}", file=sys.stderr, flush=True)

    from iterdpo import failpoints

    try:
        failpoints.armed()
    except ValueError as e:
        raise PreflightError(str(e)) from None
    every = stage is None
    annotating = every or stage == "annotate"
    evaluating = every or stage == "evaluate"
    m = cfg.model
    model_folder = resolve_model("model.name_or_path", m.name_or_path)
    tok_folder = resolve_model("model.tokenizer", m.tokenizer, tokenizer=True) if m.tokenizer else model_folder
    if tok_folder is not None and tok_folder.is_dir():
        check_chat_template("model.tokenizer" if m.tokenizer else "model.name_or_path", tok_folder)
    uses = set()
    if annotating and cfg.select.selector != "sera":
        uses.add(cfg.annotate.annotator)
    if evaluating:
        uses.add(_eval_judge(cfg))
    if "reward_model" in uses:
        if not cfg.annotate.reward_model:
            raise PreflightError("annotate.reward_model: set it to the reward model's folder for annotator or evaluate.judge 'reward_model'")
        resolve_model("annotate.reward_model", cfg.annotate.reward_model)
    if "judge" in uses:
        j = cfg.annotate.judge
        if j.api_key_env and not os.environ.get(j.api_key_env):
            raise PreflightError(f"annotate.judge.api_key_env: environment variable {j.api_key_env!r} is not set (it holds the judge's API key)")
        check_connect("annotate.judge.url", j.url)
    if (every or stage in ("sample", "evaluate")) and cfg.sample.backend == "server":
        # a pool started beside the run (launch/slurm/vllm_servers.sbatch) may still be loading its
        # model: the sampler waits for /health up to sample.server_start_timeout, so only say so
        for url in cfg.sample.servers:
            reason = unreachable("sample.servers", url)
            if reason is not None:
                warn(f"{reason}; sampling waits up to sample.server_start_timeout={cfg.sample.server_start_timeout:g} s for it")
    for field, value in (("data.prompts", cfg.data.prompts), ("data.eval_prompts", cfg.data.eval_prompts)):
        if _names_a_file(value) and not Path(value).expanduser().is_file():
            raise PreflightError(f"{field}: {value}: prompt file not found")
    if cfg.select.selector == "sera" and _names_a_file(cfg.sera.offline) and not Path(cfg.sera.offline).expanduser().is_file():
        raise PreflightError(f"sera.offline: {cfg.sera.offline}: preference file not found")
    probe = check_writable("run.output_dir", cfg.run_dir())
    if every:
        need, free = estimate_bytes(cfg, model_folder), shutil.disk_usage(probe).free
        if free < need:
            warn(f"run.output_dir: {probe} has {_human(free)} free; this run may need about {_human(need)} "
                 f"({cfg.run.iterations} saved models + a training checkpoint + stage tables); a full disk stops a stage, "
                 "finished stages are kept and `iterdpo run` resumes once space is freed")
