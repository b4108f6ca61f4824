"""The embedded demo domain: queries against local services and merchants (the paper's setting).

The generator is deterministic for a seed. Grading rule (documented in docs/domains.md):

- The service's category is in another family than the query's -> 0 (irrelevant).
- Same family, other category (hotpot for "sichuan") -> 1 if every stated constraint holds, else 0.
- Same category -> 2 if every stated constraint (district, price band, opening hours) holds,
  1 if exactly one fails, 0 if two or more fail.
- Label noise: with probability ``noise`` the grade moves one step (up or down, clipped).

Each row also carries ``rationale``, the rule's own explanation: usable as reasoning data.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from pydantic import Field

from reasondistill import Domain, Options, hookimpl

FAMILIES: dict[str, list[str]] = {
    "chinese": ["sichuan", "hotpot", "dumplings"],
    "italian": ["pizza", "pasta"],
    "japanese": ["sushi", "ramen"],
    "american": ["burgers", "barbecue"],
    "beauty": ["hair salon", "nail salon"],
    "wellness": ["massage", "spa"],
    "auto": ["car wash", "car repair"],
    "health": ["dentist", "pharmacy"],
    "fitness": ["gym", "yoga studio"],
}
CATEGORY_FAMILY = {c: f for f, cs in FAMILIES.items() for c in cs}
QUERY_WORDS = {
    "sichuan": ["sichuan food", "spicy sichuan"], "hotpot": ["hotpot", "hot pot"],
    "dumplings": ["dumplings", "dumpling house"], "pizza": ["pizza", "pizzeria"],
    "pasta": ["pasta", "italian pasta"], "sushi": ["sushi", "sushi bar"], "ramen": ["ramen", "ramen noodles"],
    "burgers": ["burgers", "burger joint"], "barbecue": ["bbq", "barbecue"],
    "hair salon": ["haircut", "hair salon"], "nail salon": ["manicure", "nail salon"],
    "massage": ["massage", "foot massage"], "spa": ["day spa", "spa"], "car wash": ["car wash"],
    "car repair": ["car repair", "mechanic"], "dentist": ["dentist", "teeth cleaning"],
    "pharmacy": ["pharmacy", "drugstore"], "gym": ["gym", "fitness center"], "yoga studio": ["yoga", "yoga class"],
}
NAME_A = ["Golden", "Lucky", "Green", "Red Lantern", "Blue Door", "Corner", "Sunny", "Harbor", "Royal", "Maple"]
NAME_B = ["House", "Studio", "Place", "Garden", "Works", "Kitchen", "Center", "Shop", "Club", "Spot"]
DISTRICTS = ["Riverside", "Old Town", "Harbor", "University", "Airport", "Westgate"]
PRICES = {"$": "cheap", "$$": "mid-range", "$$$": "upscale"}
HOURS = {"late": (10, 24), "early": (6, 15), "allday": (0, 24), "regular": (10, 21)}
HOUR_WORDS = {"late": "open late", "early": "for breakfast", "allday": "open 24 hours"}


def _hours_ok(want: str, opens: int, closes: int) -> bool:
    return {"late": closes >= 23, "early": opens <= 8, "allday": opens == 0 and closes == 24}[want]


def _grade(query: dict, svc: dict) -> tuple[int, str]:
    """The documented rule: grade and its explanation."""
    qcat, scat = query["category"], svc["category"]
    checks = []
    if query["district"]:
        checks.append(("district", svc["district"] == query["district"], f"it is in {svc['district']}"))
    if query["price"]:
        checks.append(("price", svc["price"] == query["price"], f"its price band is {svc['price']}"))
    if query["hours"]:
        ok = _hours_ok(query["hours"], svc["opens"], svc["closes"])
        checks.append(("hours", ok, f"it opens {svc['opens']:02d}:00-{svc['closes']:02d}:00"))
    failed = [c for c in checks if not c[1]]
    facts = "; ".join(c[2] + (" (matches)" if c[1] else " (does not match)") for c in checks)
    facts = f" Constraints: {facts}." if facts else ""
    if CATEGORY_FAMILY[qcat] != CATEGORY_FAMILY[scat]:
        return 0, f"The query wants {qcat}, but the service offers {scat}, a different kind of business."
    if qcat != scat:
        grade = 1 if not failed else 0
        return grade, f"The query wants {qcat}; the service offers the related {scat}.{facts}"
    grade = 2 if not failed else (1 if len(failed) == 1 else 0)
    return grade, f"The service offers {scat}, as asked.{facts}"


def generate_pairs(n: int = 600, seed: int = 0, noise: float = 0.05, queries: int | None = None) -> list[dict[str, Any]]:
    """``n`` graded query-service pairs, deterministic for ``seed``; ``queries`` distinct queries."""
    rng = random.Random(seed)
    categories = sorted(CATEGORY_FAMILY)
    services = []
    for i in range(max(60, n // 4)):
        cat = rng.choice(categories)
        opens, closes = HOURS[rng.choice(list(HOURS))]
        name = f"{rng.choice(NAME_A)} {rng.choice(NAME_B)}"
        services.append({"service_id": f"s{i}", "name": name, "category": cat, "district": rng.choice(DISTRICTS),
                         "price": rng.choice(list(PRICES)), "opens": opens, "closes": closes})
    by_cat: dict[str, list[dict]] = {}
    for s in services:
        by_cat.setdefault(s["category"], []).append(s)
    n_queries = queries or max(10, n // 6)
    query_list = []
    for _ in range(n_queries):
        cat = rng.choice(categories)
        q = {"category": cat, "district": rng.choice(DISTRICTS) if rng.random() < 0.6 else "",
             "price": rng.choice(list(PRICES)) if rng.random() < 0.4 else "",
             "hours": rng.choice(list(HOUR_WORDS)) if rng.random() < 0.3 else ""}
        words = [PRICES[q["price"]]] if q["price"] else []
        words.append(rng.choice(QUERY_WORDS[cat]))
        if q["hours"]:
            words.append(HOUR_WORDS[q["hours"]])
        if q["district"]:
            words.append(f"{rng.choice(['in', 'near'])} {q['district']}")
        q["text"] = " ".join(words)
        query_list.append(q)
    rows = []
    for i in range(n):
        q = query_list[i % n_queries]
        r = rng.random()
        if r < 0.45 and by_cat.get(q["category"]):
            svc = rng.choice(by_cat[q["category"]])
        elif r < 0.65:
            fam = [s for c in FAMILIES[CATEGORY_FAMILY[q["category"]]] for s in by_cat.get(c, [])]
            svc = rng.choice(fam or services)
        else:
            svc = rng.choice(services)
        grade, why = _grade(q, svc)
        if noise and rng.random() < noise:
            grade = min(2, max(0, grade + rng.choice((-1, 1))))
        rows.append({
            "pair_id": f"ls{seed}-{i}", "query": q["text"],
            "item": f"{svc['name']}: {svc['category']}",
            "district": svc["district"], "price": svc["price"],
            "hours": f"{svc['opens']:02d}:00-{svc['closes']:02d}:00",
            "label": grade, "rationale": why,
        })
    return rows


class LocalServices(Domain):
    """A query against a local service or merchant: category, district, price band, opening hours."""

    name = "local_services"
    description = "Local services and merchants (the paper's setting); embedded generator."
    task = "Judge how well a local service or merchant matches a user's search query."
    item_noun = "service"
    item_fields: ClassVar[tuple[str, ...]] = ("district", "price", "hours")

    class Options(Options):
        queries: int | None = Field(None, ge=1, description="distinct queries the generator draws "
                                                             "(default: one per six pairs, at least 10)")

    def generate(self, n: int, seed: int, noise: float = 0.05) -> list[dict[str, Any]]:
        return generate_pairs(n=n, seed=seed, noise=noise, queries=self.settings.queries)


@hookimpl
def register_domains(register):
    register(LocalServices())
