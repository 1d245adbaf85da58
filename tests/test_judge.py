"""LLM-as-a-judge against a small OpenAI-compatible server on 127.0.0.1, and with a local callable."""

from __future__ import annotations

import re

import pytest
from chatserver import ChatCompletions, serve

from tunesmith.errors import UserError
from tunesmith.eval.judge import JudgeItem, PairItem, compare_pairwise, endpoint_judge, grade, parse_grade, parse_verdict, summarize_grades


def judge_reply(model: str, messages: list[dict]) -> str:
    """Deterministic judging rules. Grading: the answer's wording picks the reply's form (fenced
    JSON, "Name: 4" lines, or nothing readable). Pairwise: "fair" prefers the answer with "GOOD"
    in whichever position; "first" always prefers the first position shown."""
    user = messages[-1]["content"]
    if "Score each criterion" in messages[0]["content"]:
        answer = user.split("[Answer to grade]\n", 1)[1]
        if "good" in answer:
            return 'Here you go:\n```json\n{"scores": {"correctness": 5, "helpfulness": 4, "tone": 5}, "reason": "accurate"}\n```'
        if "fine" in answer:
            return "Correctness: 3/5\nHelpfulness: 3\nTone: 4"
        if "long" in answer:
            return '{"scores": {"correctness": 9, "helpfulness": 2, "tone": 2}}'  # 9 is off the scale
        return "I am not able to grade this."
    first, second = re.search(r"\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)", user, re.DOTALL).groups()
    if model == "first":
        return "Both are fine but the first is better. [[A]]"
    if "???" in first + second:
        return "Hmm, hard to say."
    if "GOOD" in first and "GOOD" not in second:
        return "Answer A is correct. [[A]]"
    if "GOOD" in second and "GOOD" not in first:
        return '{"verdict": "B", "reason": "B is correct"}'
    return "They are equally good. [[C]]"


class _Judge(ChatCompletions):
    def reply(self, body: dict) -> str | None:
        return None if body["model"] == "locked" else judge_reply(body["model"], body["messages"])


@pytest.fixture()
def judge_server():
    with serve(_Judge) as url:
        yield url


PAIRS = [
    PairItem(id="1", prompt="2+2?", answer_a="4 GOOD", answer_b="5"),
    PairItem(id="2", prompt="capital of France?", answer_a="Lyon", answer_b="Paris GOOD"),
    PairItem(id="3", prompt="hi", answer_a="hello GOOD", answer_b="hi there GOOD"),
    PairItem(id="4", prompt="3+3?", answer_a="6 GOOD", answer_b="7"),
    PairItem(id="5", prompt="odd one", answer_a="???", answer_b="x"),
]


def test_rubric_grades_over_http_with_the_key(judge_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "secret-123")
    ask = endpoint_judge(judge_server, "fair", api_key_env="JUDGE_KEY")
    items = [
        JudgeItem(id="a", prompt="q1", answer="a good answer", reference="ref"),
        JudgeItem(id="b", prompt="q2", answer="a fine answer"),
        JudgeItem(id="c", prompt="q3", answer="a long answer"),
        JudgeItem(id="d", prompt="q4", answer="nonsense"),
    ]
    grades = grade(items, ask=ask)
    assert [g.id for g in grades] == ["a", "b", "c", "d"]
    assert grades[0].scores == {"correctness": 5, "helpfulness": 4, "tone": 5} and grades[0].reason == "accurate" and grades[0].parsed
    assert grades[1].scores == {"correctness": 3, "helpfulness": 3, "tone": 4} and grades[1].parsed
    assert grades[2].scores == {"helpfulness": 2, "tone": 2} and grades[2].missing == ["correctness"]  # 9 is not clamped
    assert grades[3].scores == {} and not grades[3].parsed
    summary = summarize_grades(grades)
    assert summary.n == 4 and summary.unparseable == 2
    assert summary.mean == {"correctness": 4.0, "helpfulness": 3.0, "tone": pytest.approx(11 / 3, abs=1e-4)}
    assert set(_Judge.seen_keys) == {"Bearer secret-123"} and _Judge.calls == 4


def test_pairwise_swaps_positions_and_counts_unparseable(judge_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k-1")
    result = compare_pairwise(PAIRS, ask=endpoint_judge(judge_server, "fair"))
    assert _Judge.calls == 2 * len(PAIRS)
    assert [v.verdict for v in result.verdicts] == ["A", "B", "tie", "A", "unparseable"]
    assert (result.wins_a, result.wins_b, result.ties, result.unparseable) == (2, 1, 1, 1)
    assert result.win_rate_a == 0.5 and result.win_rate_b == 0.25 and result.tie_rate == 0.25
    assert result.order_disagreements == 0
    assert set(_Judge.seen_keys) == {"Bearer k-1"}


def test_a_judge_that_prefers_the_first_position_gives_only_ties(judge_server):
    result = compare_pairwise(PAIRS, ask=endpoint_judge(judge_server, "first"))
    assert result.ties == len(PAIRS) and result.wins_a == result.wins_b == 0
    assert result.order_disagreements == len(PAIRS)
    assert all(v.a_first == "A" and v.b_first == "B" for v in result.verdicts)


def test_a_local_callable_can_judge():
    seen = []

    def local(messages: list[dict]) -> str:
        seen.append(messages)
        return judge_reply("fair", messages)

    result = compare_pairwise(PAIRS[:2], ask=local)
    assert [v.verdict for v in result.verdicts] == ["A", "B"]
    assert len(seen) == 4 and all(m[0]["role"] == "system" and m[1]["role"] == "user" for m in seen)
    # the second call of each pair shows the answers swapped
    assert "[Answer A]\n4 GOOD" in seen[0][1]["content"] and "[Answer A]\n5" in seen[1][1]["content"]
    grades = grade([JudgeItem(prompt="q", answer="good")], criteria=["correctness"], ask=local)
    assert grades[0].scores == {"correctness": 5}


def test_unreachable_or_refusing_endpoints_are_clear_errors(judge_server):
    with pytest.raises(UserError, match="judge endpoint") as info:
        grade([JudgeItem(prompt="q", answer="a")], ask=endpoint_judge("http://127.0.0.1:9/v1", "m", timeout=5))
    assert info.value.fix
    with pytest.raises(UserError, match="HTTP 401"):
        compare_pairwise(PAIRS[:1], ask=endpoint_judge(judge_server, "locked"))


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Reasoning... [[A]]", "A"),
        ("[[ b ]]", "B"),
        ("[[C]]", "tie"),
        ('```json\n{"winner": "tie"}\n```', "tie"),
        ("Final verdict: B", "B"),
        ("[[A]] ... actually [[B]]", None),  # contradicts itself: not guessed
        ("verdict: a toss-up", None),
        ("I prefer the first one.", None),
        ("", None),
    ],
)
def test_verdict_parsing(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    ("text", "scores"),
    [
        ('{"scores": {"Correctness": "4/5"}, "reason": "x"}', {"correctness": 4}),
        ("correctness: 4/10", {}),  # another scale is not mapped onto 1-5
        ("Score: 2", {"correctness": 2}),  # a lone score, one criterion
        ("Score: 2 and later score: 4", {}),
        ('text {not json} then {"correctness": 5}', {"correctness": 5}),
    ],
)
def test_grade_parsing(text, scores):
    assert parse_grade(text, ["correctness"])[0] == scores


def test_no_verdict_when_most_replies_are_unreadable():
    from tunesmith.eval.judge import JudgeGaveNoVerdict, check_readable

    check_readable(4, 2, "j", "rubric", "x.json")  # half readable: a verdict, with its count shown
    with pytest.raises(JudgeGaveNoVerdict, match="3 of 5") as info:
        check_readable(5, 3, "tiny", "pairwise", "x.json")
    assert info.value.exit_code == 1 and "[[A]]" in str(info.value) and "--judge-url" in info.value.fix
