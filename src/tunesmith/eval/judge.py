"""LLM-as-a-judge: rubric grades (1-5 per criterion) and pairwise A/B verdicts with the two answers
shown in both orders, so a judge that prefers a position turns that bias into ties.

The judge is any `Ask` (messages -> reply text): an OpenAI-compatible endpoint
(`endpoint_judge`) or a local model wrapped in a function. Replies are parsed robustly (JSON
anywhere in the text or in a code fence, "Correctness: 4" lines, "[[A]]" tokens); a reply that
cannot be read is counted as unparseable, never guessed."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.errors import UserError
from tunesmith.models.endpoint import ChatEndpoint

Ask = Callable[[list[dict]], str]
Verdict = Literal["A", "B", "tie"]
DEFAULT_CRITERIA = ("correctness", "helpfulness", "tone")

GRADE_SYSTEM = (
    "You are a strict, fair grader of an AI assistant's answer. Score each criterion from 1 (very poor) "
    "to 5 (excellent). Reply with JSON only, in this form: "
    '{{"scores": {{{example}}}, "reason": "one or two sentences"}}.\nCriteria: {criteria}.'
)
PAIR_SYSTEM = (
    "You compare two AI assistant answers to the same user question. Judge which answer is better "
    "(correct, helpful, well phrased); do not let the order of the answers or their length sway you. "
    'Explain briefly, then end with your verdict: "[[A]]" if answer A is better, "[[B]]" if answer B is '
    'better, "[[C]]" for a tie.'
)


class JudgeItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    answer: str
    reference: str | None = None
    id: str | None = None


class PairItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    answer_a: str
    answer_b: str
    reference: str | None = None
    id: str | None = None


class Grade(BaseModel):
    """Scores found for each criterion; a criterion the reply gave no readable 1-5 score for is `missing`."""

    id: str | None
    scores: dict[str, int]
    missing: list[str]
    reason: str
    raw: str

    @property
    def parsed(self) -> bool:
        return not self.missing


class GradeSummary(BaseModel):
    n: int
    unparseable: int  # items with at least one criterion missing
    mean: dict[str, float | None]  # per criterion, over the items that have it


class PairVerdict(BaseModel):
    id: str | None
    verdict: Verdict | Literal["unparseable"]
    a_first: Verdict | None  # the judge's verdict with A shown first (None: unparseable)
    b_first: Verdict | None  # ... with B shown first, mapped back to A/B
    raw: tuple[str, str]


class PairwiseResult(BaseModel):
    """A wins when both orders say A; a tie when the orders disagree or the judge says tie.
    Rates are over the items with both replies readable; unparseable items are only counted."""

    n: int
    wins_a: int
    wins_b: int
    ties: int
    unparseable: int
    order_disagreements: int  # items where the two orders gave different verdicts (position bias)
    win_rate_a: float | None
    win_rate_b: float | None
    tie_rate: float | None
    verdicts: list[PairVerdict] = Field(default_factory=list)


class JudgeGaveNoVerdict(UserError):
    """Most of the judge's replies could not be read: there is no verdict to report. Exit 1."""

    exit_code = 1


def check_readable(n: int, unparseable: int, judge_name: str, kind: str, replies: str) -> None:
    """Raise when more than half of the `n` items got no readable grade or verdict: means over the
    few readable ones would be a verdict the judge did not give. `replies` names where they are."""
    if n and unparseable * 2 > n:
        form = "JSON scores from 1 to 5" if kind == "rubric" else "[[A]], [[B]] or [[C]]"
        raise JudgeGaveNoVerdict(
            f"the judge {judge_name} gave no readable {'grade' if kind == 'rubric' else 'verdict'} for {unparseable} of {n} "
            f"examples (unparseable {unparseable}), so there is no verdict. The judge model is most likely too small or does not "
            f"follow the grading format ({form}); a model of a few hundred million parameters, such as the embedded "
            f"smollm2-135m-instruct, cannot judge. Its replies are in {replies}.",
            fix="judge with a bigger instruction-tuned model: --judge-url URL --judge-model NAME (any OpenAI-compatible server), "
            "or --judge-local with a local folder of such a model",
        )


def endpoint_judge(
    url: str,
    model: str,
    *,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 60.0,
    temperature: float = 0.0,
    max_tokens: int = 512,
    concurrency: int = 4,
    retries: int = 3,
) -> ChatEndpoint:
    """Chat completions over HTTP (`url` ends before `/chat/completions`, e.g. http://host/v1);
    the key comes from the environment variable `api_key_env`, never from a file, and is sent only
    to `url`'s origin. Up to `concurrency` requests are in flight; see models/endpoint.py."""
    return ChatEndpoint(
        url,
        model,
        role="judge",
        api_key_env=api_key_env,
        timeout=timeout,
        retries=retries,
        concurrency=concurrency,
        fix=f"check the judge url, the model name {model!r} and the key in ${api_key_env}",
        temperature=temperature,
        max_tokens=max_tokens,
    )


def ask_all(ask: Ask, conversations: list[list[dict]]) -> list[str]:
    """Every reply, in order: several requests at a time when the judge is an endpoint (its
    `many`), one after another for a local model."""
    many = getattr(ask, "many", None)
    return many(conversations) if callable(many) else [ask(c) for c in conversations]


def grade(items: Sequence[JudgeItem], criteria: Sequence[str] = DEFAULT_CRITERIA, ask: Ask | None = None) -> list[Grade]:
    """One judge call per item; each reply is read as 1-5 scores for every criterion."""
    if ask is None:
        raise UserError("no judge given", fix="pass ask=endpoint_judge(url, model) or a function messages -> reply text")
    criteria = list(criteria)
    if not criteria:
        raise UserError("no grading criteria given", fix='pass criteria such as ["correctness", "helpfulness", "tone"]')
    grades = []
    replies = ask_all(ask, [grade_messages(item, criteria) for item in items])
    for item, raw in zip(items, replies):
        scores, reason = parse_grade(raw, criteria)
        grades.append(Grade(id=item.id, scores=scores, missing=[c for c in criteria if c not in scores], reason=reason, raw=raw))
    return grades


def summarize_grades(grades: Sequence[Grade], criteria: Sequence[str] = DEFAULT_CRITERIA) -> GradeSummary:
    mean: dict[str, float | None] = {}
    for name in criteria:
        found = [g.scores[name] for g in grades if name in g.scores]
        mean[name] = round(sum(found) / len(found), 4) if found else None
    return GradeSummary(n=len(grades), unparseable=sum(not g.parsed for g in grades), mean=mean)


def compare_pairwise(items: Sequence[PairItem], ask: Ask | None = None) -> PairwiseResult:
    """Two judge calls per item, A first then B first, combined per item."""
    if ask is None:
        raise UserError("no judge given", fix="pass ask=endpoint_judge(url, model) or a function messages -> reply text")
    verdicts = []
    conversations = [
        pair_messages(item.prompt, first, second, item.reference)
        for item in items
        for first, second in ((item.answer_a, item.answer_b), (item.answer_b, item.answer_a))
    ]
    replies = ask_all(ask, conversations)
    for index, item in enumerate(items):
        raw_ab, raw_ba = replies[2 * index], replies[2 * index + 1]
        a_first = parse_verdict(raw_ab)
        swapped = parse_verdict(raw_ba)
        b_first = {"A": "B", "B": "A", "tie": "tie", None: None}[swapped]
        verdicts.append(PairVerdict(id=item.id, verdict=combine(a_first, b_first), a_first=a_first, b_first=b_first, raw=(raw_ab, raw_ba)))
    return summarize_pairwise(verdicts)


def combine(a_first: Verdict | None, b_first: Verdict | None) -> Verdict | Literal["unparseable"]:
    if a_first is None or b_first is None:
        return "unparseable"
    return a_first if a_first == b_first else "tie"


def summarize_pairwise(verdicts: list[PairVerdict]) -> PairwiseResult:
    counts = {v: sum(p.verdict == v for p in verdicts) for v in ("A", "B", "tie", "unparseable")}
    decided = counts["A"] + counts["B"] + counts["tie"]

    def rate(k: int) -> float | None:
        return round(k / decided, 4) if decided else None

    disagreements = sum(p.a_first is not None and p.b_first is not None and p.a_first != p.b_first for p in verdicts)
    return PairwiseResult(
        n=len(verdicts),
        wins_a=counts["A"],
        wins_b=counts["B"],
        ties=counts["tie"],
        unparseable=counts["unparseable"],
        order_disagreements=disagreements,
        win_rate_a=rate(counts["A"]),
        win_rate_b=rate(counts["B"]),
        tie_rate=rate(counts["tie"]),
        verdicts=verdicts,
    )


# --- prompts ---------------------------------------------------------------------------------


def grade_messages(item: JudgeItem, criteria: list[str]) -> list[dict]:
    example = ", ".join(f'"{c}": 1-5' for c in criteria)
    system = GRADE_SYSTEM.format(example=example, criteria=", ".join(criteria))
    parts = [f"[Question]\n{item.prompt}"]
    if item.reference is not None:
        parts.append(f"[Reference answer]\n{item.reference}")
    parts.append(f"[Answer to grade]\n{item.answer}")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def pair_messages(prompt: str, first: str, second: str, reference: str | None) -> list[dict]:
    parts = [f"[Question]\n{prompt}"]
    if reference is not None:
        parts.append(f"[Reference answer]\n{reference}")
    parts += [f"[Answer A]\n{first}", f"[Answer B]\n{second}"]
    return [{"role": "system", "content": PAIR_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


# --- parsing ---------------------------------------------------------------------------------

_VERDICT_TOKEN = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_VERDICT_LINE = re.compile(r"\b(?i:verdict|winner|better answer)\s*(?i:is)?\s*[:=]?\s*\**\s*\"?(A|B|[Tt]ie|TIE)\b")
_VERDICT_WORD = {"a": "A", "b": "B", "c": "tie", "tie": "tie"}


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in the text, in order: bare, inside ```json fences, or among prose."""
    decoder = json.JSONDecoder()
    found, index = [], 0
    while (start := text.find("{", index)) != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            index = start + 1
            continue
        if isinstance(value, dict):
            found.append(value)
        index = end
    return found


def _score(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.0+)?)\s*(?:/\s*5)?\s*", value)
        value = float(match.group(1)) if match else None
    if isinstance(value, (int, float)) and float(value).is_integer() and 1 <= value <= 5:
        return int(value)
    return None


_SCORE = r"(\d+(?:\.\d+)?)(?:\s*/\s*(\d+))?"


def _score_of(match: re.Match) -> int | None:
    """The 1-5 score of "4" or "4/5"; None for "4/10" or "7" (another scale is not guessed onto this one)."""
    if match.group(2) not in (None, "5"):
        return None
    return _score(match.group(1))


def parse_grade(text: str, criteria: list[str]) -> tuple[dict[str, int], str]:
    """Scores per criterion (only the readable 1-5 ones) and the judge's reason."""
    scores: dict[str, int] = {}
    reason = ""
    lowered = {c.lower(): c for c in criteria}
    for obj in json_objects(text):
        table = obj.get("scores") if isinstance(obj.get("scores"), dict) else obj
        for key, value in table.items():
            name = lowered.get(str(key).strip().lower())
            if name and name not in scores and (score := _score(value)) is not None:
                scores[name] = score
        if not reason and isinstance(obj.get("reason"), str):
            reason = obj["reason"]
    for name in criteria:
        if name not in scores:
            match = re.search(rf"\b{re.escape(name)}\b\W{{0,4}}{_SCORE}", text, re.IGNORECASE)
            if match and (score := _score_of(match)) is not None:
                scores[name] = score
    if len(criteria) == 1 and criteria[0] not in scores:
        found = {_score_of(m) for m in re.finditer(rf"\bscore\W{{0,4}}{_SCORE}", text, re.IGNORECASE)}
        if len(found) == 1 and (score := found.pop()) is not None:  # one score, unambiguous
            scores[criteria[0]] = score
    return scores, reason or text.strip()[:500]


def parse_verdict(text: str) -> Verdict | None:
    """ "A", "B" or "tie" when the reply names exactly one; None when it names none or several."""
    tokens = {_VERDICT_WORD[t.lower()] for t in _VERDICT_TOKEN.findall(text)}
    if not tokens:
        for obj in json_objects(text):
            value = obj.get("verdict", obj.get("winner"))
            if isinstance(value, str) and value.strip().lower() in _VERDICT_WORD:
                tokens.add(_VERDICT_WORD[value.strip().lower()])
    if not tokens:
        tokens = {_VERDICT_WORD[t.lower()] for t in _VERDICT_LINE.findall(text)}
    return tokens.pop() if len(tokens) == 1 else None  # type: ignore[return-value]
