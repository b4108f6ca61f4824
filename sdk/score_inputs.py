"""What ``reasondistill serve`` accepts: the request body read within its limits and checked field by
field, each refusal a :class:`BadRequest` with an HTTP status and a one-line reason naming the field.
``options`` is the server's :class:`~reasondistill.score_server.ServeOptions`."""

from __future__ import annotations

import asyncio
import json
from typing import Any


class BadRequest(Exception):
    """A refusal: HTTP ``status``, a one-line reason, and for a 503 the seconds to wait (``Retry-After``)."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None):
        super().__init__(reason)
        self.status, self.reason, self.retry_after = status, reason, retry_after


def check_pairs(body: Any, options: Any, extra_fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The ``/score`` body's pairs, or ``BadRequest`` naming the first field at fault."""
    if not isinstance(body, dict):
        raise BadRequest(422, "body must be a JSON object with a 'pairs' list")
    unknown = set(body) - {"pairs"}
    if unknown:
        raise BadRequest(422, f"unknown field {sorted(unknown)[0]!r}; the body is {{\"pairs\": [...]}}")
    pairs = body.get("pairs")
    if not isinstance(pairs, list):
        raise BadRequest(422, "pairs: missing, or not a list")
    if not pairs:
        raise BadRequest(422, "pairs: empty list")
    if len(pairs) > options.max_pairs:
        raise BadRequest(413, f"pairs: {len(pairs)} pairs, more than max_pairs {options.max_pairs}")
    allowed = {"query", "item", *extra_fields}
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise BadRequest(422, f"pairs[{i}]: must be an object with 'query' and 'item'")
        for key in ("query", "item"):
            check_text(pair.get(key), f"pairs[{i}].{key}", options)
        unknown = sorted(set(pair) - allowed)
        if unknown:
            raise BadRequest(422, f"pairs[{i}]: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
        for key in extra_fields:
            if key in pair and not isinstance(pair[key], (str, int, float)) and pair[key] is not None:
                raise BadRequest(422, f"pairs[{i}].{key}: must be a string or a number")
    return pairs


def check_text(value: Any, where: str, options: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest(422, f"{where}: {'missing' if value is None else 'must be a string'}")
    if not value.strip():
        raise BadRequest(422, f"{where}: empty string")
    if len(value) > options.max_chars:
        raise BadRequest(413, f"{where}: {len(value)} characters, more than max_chars {options.max_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800"): valid JSON, not valid text
        raise BadRequest(422, f"{where}: a lone surrogate at character {exc.start} is not text") from None
    return value


async def read_json(request: Any, options: Any) -> Any:
    """The body as JSON within the size and time limits; 400/408/413/415 otherwise."""
    kind = request.headers.get("content-type")
    if kind is not None:
        media = kind.split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise BadRequest(415, f"Content-Type {media or 'empty'!r}; send application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > options.max_body_bytes:
        raise BadRequest(413, f"body of {declared} bytes, more than max_body_bytes {options.max_body_bytes}")
    data = bytearray()

    async def receive() -> None:
        async for chunk in request.stream():
            data.extend(chunk)
            if len(data) > options.max_body_bytes:
                raise BadRequest(413, f"body larger than max_body_bytes {options.max_body_bytes}")

    try:
        if hasattr(asyncio, "timeout"):  # 3.11+: no extra task per request
            async with asyncio.timeout(options.body_timeout_s):
                await receive()
        else:  # pragma: no cover - Python 3.10
            await asyncio.wait_for(receive(), options.body_timeout_s)
    except (asyncio.TimeoutError, TimeoutError):
        raise BadRequest(408, f"body not received within {options.body_timeout_s:g} s") from None
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"body is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise BadRequest(400, "empty body; send a JSON object")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadRequest(400, f"body is not valid JSON ({exc})") from None
    except RecursionError:
        raise BadRequest(400, "body is nested too deeply") from None


def check_rerank(body: Any, options: Any) -> tuple[str, list[str], int, bool]:
    """A ``/rerank`` body checked field by field: the query, the documents, ``top_n`` and
    ``return_documents``; else a 4xx naming the field."""
    if not isinstance(body, dict):
        raise BadRequest(422, "body must be a JSON object with 'query' and 'documents'")
    unknown = set(body) - {"query", "documents", "top_n", "return_documents"}
    if unknown:
        raise BadRequest(422, f"unknown field {sorted(unknown)[0]!r}")
    query = check_text(body.get("query"), "query", options)
    docs = body.get("documents")
    if not isinstance(docs, list) or not docs:
        raise BadRequest(422, "documents: missing, empty, or not a list")
    if len(docs) > options.max_pairs:
        raise BadRequest(413, f"documents: {len(docs)}, more than max_pairs {options.max_pairs}")
    texts = [check_text(d, f"documents[{i}]", options) for i, d in enumerate(docs)]
    top_n = body.get("top_n", len(texts))
    if not isinstance(top_n, int) or isinstance(top_n, bool) or not 1 <= top_n <= options.max_pairs:
        raise BadRequest(422, f"top_n: must be an integer from 1 to max_pairs {options.max_pairs}")
    if not isinstance(body.get("return_documents", False), bool):
        raise BadRequest(422, "return_documents: must be true or false")
    return query, texts, top_n, body.get("return_documents", False)
