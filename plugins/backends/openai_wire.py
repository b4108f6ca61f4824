"""The OpenAI wire format as the ``openai`` backend reads it: the HTTP client library, logprobs
in both reply shapes, ``Retry-After``, and stable request ids."""

from __future__ import annotations

import json
from typing import Any


def httpx_module():
    """The HTTP client library: ``httpx2`` (what huggingface_hub 2 installs) or ``httpx``."""
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - older stacks ship httpx
        import httpx
    return httpx


def request_id(body: dict) -> str:
    """A stable id of a request (its body's hash): a retried request keeps it, so a server or a
    proxy that logs it sees one request tried twice, not two."""
    import hashlib

    return hashlib.sha1(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:24]


def chat_logprobs(logprobs: Any) -> tuple[list[str], list[dict[str, float]]]:
    content = (logprobs or {}).get("content") or []
    return ([c["token"] for c in content],
            [{t["token"]: t["logprob"] for t in (c.get("top_logprobs") or [])} or {c["token"]: c["logprob"]}
             for c in content])


def completion_logprobs(logprobs: Any) -> tuple[list[str], list[dict[str, float]]]:
    logprobs = logprobs or {}
    tokens = logprobs.get("tokens") or []
    tops = logprobs.get("top_logprobs") or [{} for _ in tokens]
    return list(tokens), [dict(t or {}) for t in tops]


def retry_after(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header (delta seconds; an HTTP date counts as unknown), at most 10 min."""
    try:
        return min(600.0, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 0.0
