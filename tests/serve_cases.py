"""The bad-input table of docs/serving.md as data: each row is sent to a running server by
``tests/test_serve.py`` (started with ``LIMITS``), and ``test_the_docs_table_is_this_table`` checks
that the docs show exactly these rows. Rows that need a server of their own (a slow client, a full
queue, a closed connection, ...) name the test that checks them in ``OWN_TESTS``."""

from __future__ import annotations

import json

LIMITS = ["--max-pairs", "64", "--max-chars", "2000", "--max-body-bytes", "400000", "--body-timeout-s", "1.5"]
PAIR = {"query": "pizza", "item": "Golden Pizza House"}
JSON = {"content-type": "application/json"}


def body(value) -> bytes:
    return json.dumps(value).encode()


def pairs(*rows) -> bytes:
    return body({"pairs": list(rows)})


def rerank(**fields) -> bytes:
    return body({"query": "pizza", "documents": ["a", "b"], **fields})


def _exactly(size: int) -> bytes:
    """A valid /score body of exactly ``size`` bytes (padded with trailing spaces)."""
    raw = pairs(PAIR)
    return raw + b" " * (size - len(raw))


#: (input, method, path, body, headers, status, reason: a part of the ``error`` field, "" for a 200)
CASES: list[tuple[str, str, str, bytes, dict, int, str]] = [
    # the body as a whole
    ("malformed JSON", "POST", "/score", b'{"pairs": [', JSON, 400, "body is not valid JSON"),
    ("trailing text after the JSON", "POST", "/score", pairs(PAIR) + b" x", JSON, 400, "body is not valid JSON"),
    ("a UTF-8 byte-order mark", "POST", "/score", "\ufeff".encode() + pairs(PAIR), JSON, 400, "body is not valid JSON"),
    ("invalid UTF-8", "POST", "/score", b'{"pairs": [{"query": "\xff\xfe", "item": "x"}]}', JSON, 400,
     "body is not valid UTF-8"),
    ("a UTF-16 body", "POST", "/score", pairs(PAIR).decode().encode("utf-16"), JSON, 400, "body is not valid UTF-8"),
    ("an empty body", "POST", "/score", b"", JSON, 400, "empty body; send a JSON object"),
    ("a body of spaces", "POST", "/score", b"   \n", JSON, 400, "empty body; send a JSON object"),
    ("a body nested 100,000 levels deep", "POST", "/score", b"[" * 100_000 + b"]" * 100_000, JSON, 400,
     "body is nested too deeply"),
    ("a 5,000-digit number", "POST", "/score", b'{"pairs": [{"query": ' + b"9" * 5000 + b', "item": "x"}]}', JSON, 400,
     "body is not valid JSON"),
    ("a JSON list instead of an object", "POST", "/score", b"[1, 2]", JSON, 422,
     "body must be a JSON object with a 'pairs' list"),
    ("a JSON string", "POST", "/score", b'"pairs"', JSON, 422, "body must be a JSON object with a 'pairs' list"),
    ("JSON null", "POST", "/score", b"null", JSON, 422, "body must be a JSON object with a 'pairs' list"),
    ("a JSON number", "POST", "/score", b"5", JSON, 422, "body must be a JSON object with a 'pairs' list"),
    ("a body of exactly max_body_bytes", "POST", "/score", _exactly(400_000), JSON, 200, ""),
    ("a body one byte over max_body_bytes", "POST", "/score", _exactly(400_001), JSON, 413,
     "body of 400001 bytes, more than max_body_bytes 400000"),
    ("a 1 MB field (body over the limit)", "POST", "/score", pairs({"query": "q", "item": "x" * 1_000_000}), JSON, 413,
     "more than max_body_bytes 400000"),
    # Content-Type
    ("Content-Type: text/plain", "POST", "/score", pairs(PAIR), {"content-type": "text/plain"}, 415,
     "Content-Type 'text/plain'; send application/json"),
    ("Content-Type: application/x-www-form-urlencoded", "POST", "/score", pairs(PAIR),
     {"content-type": "application/x-www-form-urlencoded"}, 415, "send application/json"),
    ("Content-Type: multipart/form-data", "POST", "/score", pairs(PAIR),
     {"content-type": "multipart/form-data; boundary=x"}, 415, "send application/json"),
    ("an empty Content-Type", "POST", "/score", pairs(PAIR), {"content-type": ""}, 415, "Content-Type 'empty'"),
    ("Content-Type: application/json; charset=utf-8", "POST", "/score", pairs(PAIR),
     {"content-type": "application/json; charset=utf-8"}, 200, ""),
    ("Content-Type: application/vnd.api+json", "POST", "/score", pairs(PAIR),
     {"content-type": "application/vnd.api+json"}, 200, ""),
    ("no Content-Type", "POST", "/score", pairs(PAIR), {}, 200, ""),
    # /score fields
    ("no `pairs`", "POST", "/score", b"{}", JSON, 422, "pairs: missing, or not a list"),
    ("`pairs` an object", "POST", "/score", body({"pairs": PAIR}), JSON, 422, "pairs: missing, or not a list"),
    ("`pairs` a string", "POST", "/score", body({"pairs": "pizza"}), JSON, 422, "pairs: missing, or not a list"),
    ("`pairs` null", "POST", "/score", body({"pairs": None}), JSON, 422, "pairs: missing, or not a list"),
    ("`pairs` NaN", "POST", "/score", b'{"pairs": NaN}', JSON, 422, "pairs: missing, or not a list"),
    ("`pairs` 1e999 (infinity)", "POST", "/score", b'{"pairs": 1e999}', JSON, 422, "pairs: missing, or not a list"),
    ("an empty `pairs` list", "POST", "/score", body({"pairs": []}), JSON, 422, "pairs: empty list"),
    ("`pairs` twice: the last one counts", "POST", "/score", b'{"pairs": [{"query": "q", "item": "i"}], "pairs": []}',
     JSON, 422, "pairs: empty list"),
    ("an extra top-level field", "POST", "/score", body({"pairs": [PAIR], "debug": 1}), JSON, 422,
     "unknown field 'debug'; the body is"),
    ("a pair that is a string", "POST", "/score", pairs("pizza"), JSON, 422,
     "pairs[0]: must be an object with 'query' and 'item'"),
    ("a pair that is a list", "POST", "/score", pairs(["pizza", "x"]), JSON, 422, "pairs[0]: must be an object"),
    ("a pair that is null", "POST", "/score", pairs(None), JSON, 422, "pairs[0]: must be an object"),
    ("a pair without `query`", "POST", "/score", pairs({"item": "x"}), JSON, 422, "pairs[0].query: missing"),
    ("a pair without `item`", "POST", "/score", pairs({"query": "q"}), JSON, 422, "pairs[0].item: missing"),
    ("`query` null", "POST", "/score", pairs({"query": None, "item": "x"}), JSON, 422, "pairs[0].query: missing"),
    ("a number where a string belongs", "POST", "/score", pairs({"query": 5, "item": "x"}), JSON, 422,
     "pairs[0].query: must be a string"),
    ("`true` where a string belongs", "POST", "/score", pairs({"query": True, "item": "x"}), JSON, 422,
     "pairs[0].query: must be a string"),
    ("a list where a string belongs", "POST", "/score", pairs({"query": ["a"], "item": "x"}), JSON, 422,
     "pairs[0].query: must be a string"),
    ("an object where a string belongs", "POST", "/score", pairs({"query": "q", "item": {"a": 1}}), JSON, 422,
     "pairs[0].item: must be a string"),
    ("an empty string", "POST", "/score", pairs({"query": "", "item": "x"}), JSON, 422, "pairs[0].query: empty string"),
    ("a string of spaces, tabs and newlines", "POST", "/score", pairs({"query": " \t\n", "item": "x"}), JSON, 422,
     "pairs[0].query: empty string"),
    ("a bad pair after five good ones", "POST", "/score", pairs(*[PAIR] * 5, {"query": "q"}), JSON, 422,
     "pairs[5].item: missing"),
    ("an extra pair field", "POST", "/score", pairs({**PAIR, "colour": "red"}), JSON, 422,
     "pairs[0]: unknown field 'colour' (allowed:"),
    ("a domain field that is an object", "POST", "/score", pairs({**PAIR, "price": {"eur": 5}}), JSON, 422,
     "pairs[0].price: must be a string or a number"),
    ("a domain field that is a number", "POST", "/score", pairs({**PAIR, "price": 12}), JSON, 200, ""),
    ("a lone surrogate (`\\ud800`) in a string", "POST", "/score",
     b'{"pairs": [{"query": "pizza \\ud800", "item": "x"}]}', JSON, 422,
     "pairs[0].query: a lone surrogate at character 6 is not text"),
    ("control characters in a string", "POST", "/score", pairs({"query": "pi\x00zza\x1b[31m", "item": "x\x07\u200b"}),
     JSON, 200, ""),
    ("emoji and CJK text", "POST", "/score", pairs({"query": "披萨 🍕", "item": "金色披萨屋"}), JSON, 200, ""),
    ("a field of exactly max_chars characters", "POST", "/score", pairs({"query": "q", "item": "x" * 2000}), JSON, 200,
     ""),
    ("a field one character over max_chars", "POST", "/score", pairs({"query": "q", "item": "x" * 2001}), JSON, 413,
     "pairs[0].item: 2001 characters, more than max_chars 2000"),
    ("exactly max_pairs pairs", "POST", "/score", pairs(*[PAIR] * 64), JSON, 200, ""),
    ("one pair over max_pairs", "POST", "/score", pairs(*[PAIR] * 65), JSON, 413,
     "pairs: 65 pairs, more than max_pairs 64"),
    ("10,000 pairs in one request", "POST", "/score", pairs(*[{"query": "q", "item": "i"}] * 10000), JSON, 413,
     "pairs: 10000 pairs, more than max_pairs 64"),
    # /rerank fields
    ("/rerank: a JSON list", "POST", "/rerank", b"[]", JSON, 422,
     "body must be a JSON object with 'query' and 'documents'"),
    ("/rerank: an extra field", "POST", "/rerank", rerank(model="x"), JSON, 422, "unknown field 'model'"),
    ("/rerank: no `query`", "POST", "/rerank", body({"documents": ["a"]}), JSON, 422, "query: missing"),
    ("/rerank: `query` a number", "POST", "/rerank", rerank(query=5), JSON, 422, "query: must be a string"),
    ("/rerank: an empty `query`", "POST", "/rerank", rerank(query=""), JSON, 422, "query: empty string"),
    ("/rerank: no `documents`", "POST", "/rerank", body({"query": "q"}), JSON, 422,
     "documents: missing, empty, or not a list"),
    ("/rerank: `documents` empty", "POST", "/rerank", rerank(documents=[]), JSON, 422,
     "documents: missing, empty, or not a list"),
    ("/rerank: `documents` a string", "POST", "/rerank", rerank(documents="a"), JSON, 422,
     "documents: missing, empty, or not a list"),
    ("/rerank: a document that is a number", "POST", "/rerank", rerank(documents=["a", 7]), JSON, 422,
     "documents[1]: must be a string"),
    ("/rerank: an empty document", "POST", "/rerank", rerank(documents=["a", " "]), JSON, 422,
     "documents[1]: empty string"),
    ("/rerank: a document over max_chars", "POST", "/rerank", rerank(documents=["x" * 2001]), JSON, 413,
     "documents[0]: 2001 characters, more than max_chars 2000"),
    ("/rerank: exactly max_pairs documents, `top_n` max_pairs", "POST", "/rerank",
     rerank(documents=["a"] * 64, top_n=64), JSON, 200, ""),
    ("/rerank: one document over max_pairs", "POST", "/rerank", rerank(documents=["a"] * 65), JSON, 413,
     "documents: 65, more than max_pairs 64"),
    ("/rerank: `top_n` 0", "POST", "/rerank", rerank(top_n=0), JSON, 422,
     "top_n: must be an integer from 1 to max_pairs 64"),
    ("/rerank: `top_n` -1", "POST", "/rerank", rerank(top_n=-1), JSON, 422, "top_n: must be an integer"),
    ("/rerank: `top_n` 1e100", "POST", "/rerank", rerank(top_n=1e100), JSON, 422, "top_n: must be an integer"),
    ("/rerank: `top_n` a 101-digit integer", "POST", "/rerank", rerank(top_n=10**100), JSON, 422,
     "top_n: must be an integer"),
    ("/rerank: `top_n` \"3\"", "POST", "/rerank", rerank(top_n="3"), JSON, 422, "top_n: must be an integer"),
    ("/rerank: `top_n` true", "POST", "/rerank", rerank(top_n=True), JSON, 422, "top_n: must be an integer"),
    ("/rerank: `top_n` above the documents, within max_pairs", "POST", "/rerank", rerank(top_n=50), JSON, 200, ""),
    ("/rerank: `return_documents` \"no\"", "POST", "/rerank", rerank(return_documents="no"), JSON, 422,
     "return_documents: must be true or false"),
    ("/rerank: `return_documents` 1", "POST", "/rerank", rerank(return_documents=1), JSON, 422,
     "return_documents: must be true or false"),
    # routes and methods
    ("an unknown path", "POST", "/predict", pairs(PAIR), JSON, 404, "no route /predict; routes: /score, /rerank"),
    ("GET /score", "GET", "/score", b"", {}, 405, "GET is not allowed on /score; use POST"),
    ("POST /health", "POST", "/health", b"", {}, 405, "POST is not allowed on /health; use GET"),
]

#: rows checked by a test of their own: input -> (status, reason, the test in tests/test_serve.py)
OWN_TESTS: dict[str, tuple[int, str, str]] = {
    "`Content-Length: 50000000`": (413, "body of 50000000 bytes, more than max_body_bytes 400000",
                                   "test_declared_oversize_body_is_refused_before_reading"),
    "a client that sends its body slowly": (408, "body not received within 1.5 s",
                                            "test_slow_client_gets_408_while_others_are_served"),
    "a client that sends its headers slowly": (408, "request headers not received within 1 s",
                                               "test_slow_headers_are_cut_for_each_http_implementation"),
    "a 100 KB header": (431, "request headers larger than max_header_bytes 16384",
                        "test_oversize_headers_are_431_for_each_http_implementation"),
    "a connection over max_connections": (503, "too many connections (max_connections 3)",
                                          "test_connections_over_the_cap_are_refused_at_connect"),
    "more pairs waiting than max_queue": (503, "server busy: 4 pairs queued (max_queue 4)",
                                          "test_full_queue_is_503_with_retry_after"),
    "a request that would wait over max_queue_ms": (503, "more than max_queue_ms",
                                                    "test_overload_is_refused_at_once_and_accepted_requests_stay_fast"),
    "a client that disconnects while queued": (499, "(no answer: its work is dropped, one access-log line)",
                                               "test_work_of_a_disconnected_client_is_dropped_before_it_runs"),
    "no API key, a wrong one, or a Basic one": (401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                                "test_api_key_guards_every_route_but_health_and_the_access_log_has_a_line_per_request"),
}
