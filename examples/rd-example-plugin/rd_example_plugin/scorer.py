"""``query_coverage``: how many of the query's words the reasoning talks about."""

from reasondistill import hookimpl


@hookimpl
def reward_dimensions():
    return ["query_coverage"]


@hookimpl
def score_reasoning(example, completion, domain):
    words = {w for w in domain.query_text(example).lower().split() if len(w) > 2}
    if not words:
        return None
    reasoning = domain.parse_completion(completion or "").reasoning.lower()
    return {"query_coverage": sum(w in reasoning for w in words) / len(words)}
