"""Chinese web search (query vs page title), e.g. ``../shared/data/qbqtc``."""

from __future__ import annotations

import re

from reasondistill import Domain, hookimpl

_SHARED = re.compile(r"查询与标题共有的词[：:]([^。\n]*)")


def _bigrams(text: str) -> set[str]:
    chars = [c for c in text if not c.isspace()]
    return {a + b for a, b in zip(chars, chars[1:])} | set(chars)


class WebSearchZh(Domain):
    """QQ-Browser-style web search in Chinese; Chinese instructions and label names."""

    name = "web_search_zh"
    description = "Chinese web search: query vs page title (QBQTC style), Chinese prompts and labels."
    labels = ("不相关", "部分相关", "相关")
    label_descriptions = ("网页与查询无关", "网页只满足查询的一部分", "网页满足查询")
    task = "判断搜索结果网页与用户查询的相关程度。"
    item_noun = "网页标题"
    reasoning_key = "理由"
    label_key = "标签"

    def system_prompt(self) -> str:
        scale = "\n".join(f"- {n}：{d}" for n, d in zip(self.labels, self.label_descriptions))
        return (f"{self.task}先分析查询的需求和网页标题提供的内容，再给出一个标签。\n标签：\n{scale}\n"
                f"严格按以下格式回答：\n{self.reasoning_key}：<一两句话>\n{self.label_key}：<标签>")

    def user_prompt(self, row) -> str:
        return f"查询：{self.query_text(row)}\n{self.item_noun}：{self.item_text(row)}"

    def format_completion(self, reasoning: str, label: int) -> str:
        return f"{self.reasoning_key}：{reasoning.strip()}\n{self.label_key}：{self.labels[label]}"

    def rationale(self, row, label: int | None = None) -> str:
        """Character overlap written out (a stand-in for teacher reasoning, like product_search's)."""
        q, t = _bigrams(str(row["query"])), _bigrams(str(row["item"]))
        shared = sorted(x for x in q & t if len(x) == 2)[:6]
        text = f"查询与标题共有的词：{'、'.join(shared) or '无'}。"
        if label is not None:
            text += f"因此网页与查询{self.labels[label]}。"
        return text

    def check_claims(self, row, reasoning: str) -> float | None:
        """The share of the words the chain says query and title share that both contain
        ("无" is right only where they share no two-character word); 0 without that sentence."""
        lists = _SHARED.findall(reasoning)
        if not lists:
            return 0.0
        q, t = _bigrams(str(row["query"])), _bigrams(str(row["item"]))
        named = [w.strip() for part in lists for w in re.split(r"[、，,]", part) if w.strip()]
        if named in ([], ["无"]):
            return float(not any(len(x) == 2 for x in q & t))
        return sum(w in q and w in t for w in named) / len(named)


@hookimpl
def register_domains(register):
    register(WebSearchZh())
