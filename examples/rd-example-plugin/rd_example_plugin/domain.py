"""``job_search``: job seekers' queries against postings, two grades, with a tiny generator."""

import random

from reasondistill import Domain, hookimpl

ROLES = ["python developer", "nurse", "truck driver", "data analyst", "chef", "teacher"]
CITIES = ["Berlin", "Lyon", "Austin", "Osaka"]


class JobSearch(Domain):
    name = "job_search"
    description = "Job seekers' queries against job postings (example plugin)."
    task = "Judge how well a job posting matches a job seeker's query."
    item_noun = "job posting"
    labels = ("irrelevant", "relevant")
    label_descriptions = ("another job or another city", "the job asked for, in the city asked for")
    item_fields = ("city",)

    def generate(self, n, seed, noise=0.0):
        rng = random.Random(seed)
        rows = []
        for i in range(n):
            role, city = rng.choice(ROLES), rng.choice(CITIES)
            post_role = role if rng.random() < 0.5 else rng.choice(ROLES)
            post_city = city if rng.random() < 0.7 else rng.choice(CITIES)
            label = int(post_role == role and post_city == city)
            why = f"The posting is for a {post_role} in {post_city}; the query wants a {role} in {city}."
            rows.append({"pair_id": f"job-{seed}-{i}", "query": f"{role} jobs {city}", "item": f"{post_role.title()} wanted",
                         "city": post_city, "label": label, "rationale": why})
        return rows


@hookimpl
def register_domains(register):
    register(JobSearch())
