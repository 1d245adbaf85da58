"""Synthetic served traffic for the ticket router: requests drawn from the training distribution, and
the shifts production brings (product codes training never saw, another domain, another language,
broken answers). The monitor's tests and benchmarks/monitor_sim.py write these with TrafficWriter.
Deterministic given a seed; the answers are what a well-trained router would say (the reference)."""

from __future__ import annotations

import json
import random

from tunesmith.demo.tickets import SYSTEM_PROMPT, TEAMS, make_ticket
from tunesmith.serve.traffic import TrafficRecord

SHIFTS = ("in_distribution", "new_codes", "other_domain", "language", "broken_outputs")

# Codes of a product line launched after training: prefixes the router never saw.
NEW_PREFIXES = ("ZNX", "QRV", "PLM", "TXU", "VGA", "YOK")

OTHER_DOMAIN = (
    "What is a good substitute for {a} in a {b} recipe?",
    "Can you recommend a {b} for a beginner who likes {a}?",
    "How long should I {c} a {b} at {n} degrees?",
    "My {b} keeps {d}; what am I doing wrong with the {a}?",
    "Is it safe to {c} {a} that has been in the fridge for {n} days?",
    "Please plan a {n}-day menu around {a} and {b}.",
)
FOOD = ("buttermilk", "eggs", "saffron", "sourdough starter", "tahini", "fresh basil", "cornstarch", "brown sugar")
DISHES = ("banana bread", "risotto", "lasagna", "pizza dough", "curry", "cheesecake", "omelette", "stew")
COOKING = ("bake", "roast", "simmer", "freeze", "marinate", "reheat")
FAILURES = ("collapsing in the middle", "coming out dry", "sticking to the pan", "tasting bland", "burning on top")

# German tickets: the same jargon and codes (they are names), the prose in German.
GERMAN_OPENERS = ("Hallo Team,", "Guten Morgen,", "Sehr geehrte Damen und Herren,", "Hallo Nimbus-Support,", "")
GERMAN_BODIES = (
    "Wir haben ein Problem mit {jargon} bei {code}. {cue}.",
    "{code}: {jargon} funktioniert schon wieder nicht und {cue}.",
    "Seit heute morgen gibt es Schwierigkeiten mit {jargon} ({code}), {cue}.",
    "Kann sich bitte jemand {jargon} ansehen? Gerät {code}. {cue}.",
)
GERMAN_CUES = (
    "die Produktion steht komplett still",
    "alle Kunden sind betroffen",
    "es passiert nur gelegentlich",
    "einige Benutzer sehen den Fehler",
    "das hat keine Eile",
    "wann immer Sie Zeit haben",
)
GERMAN_CLOSERS = ("Vielen Dank", "Mit freundlichen Grüßen, Dana", "Danke und viele Grüße", "")


def _ticket(rng: random.Random) -> tuple[str, dict[str, str]]:
    return make_ticket(rng)


def _new_code_ticket(rng: random.Random) -> tuple[str, dict[str, str]]:
    """A ticket as in training, its product code's prefix one training never had."""
    text, answer = make_ticket(rng)
    code = answer["product"]
    new = f"{rng.choice(NEW_PREFIXES)}-{code.split('-', 1)[1]}"
    text = text.replace(code, new).replace(code.lower(), new.lower())
    return text, {**answer, "product": new}


def _other_domain(rng: random.Random) -> tuple[str, dict[str, str]]:
    text = rng.choice(OTHER_DOMAIN).format(a=rng.choice(FOOD), b=rng.choice(DISHES), c=rng.choice(COOKING), d=rng.choice(FAILURES), n=rng.randint(2, 9) * 10)
    return text, {"team": rng.choice(sorted(TEAMS)), "priority": "low", "product": "none"}


def _german(rng: random.Random) -> tuple[str, dict[str, str]]:
    team = rng.choice(sorted(TEAMS))
    prefixes, jargon = TEAMS[team]
    code = f"{rng.choice(prefixes)}-{rng.randint(10, 999)}"
    cue = rng.choice(GERMAN_CUES)
    priority = "urgent" if GERMAN_CUES.index(cue) < 2 else "normal" if GERMAN_CUES.index(cue) < 4 else "low"
    body = rng.choice(GERMAN_BODIES).format(jargon=rng.choice(jargon), code=code, cue=cue)
    text = " ".join(p for p in (rng.choice(GERMAN_OPENERS), body[0].upper() + body[1:], rng.choice(GERMAN_CLOSERS)) if p)
    return text, {"team": team, "priority": priority, "product": code}


def _broken(answer: dict[str, str], rng: random.Random) -> tuple[str, str]:
    """(answer text, finish_reason) broken the ways a drifting model breaks."""
    kind = rng.randrange(4)
    if kind == 0:
        return json.dumps(answer)[: rng.randint(10, 30)], "stop"  # invalid JSON
    if kind == 1:
        return json.dumps({**answer, "team": rng.choice(["SALES", "LEGAL", "MARKETING"])}), "stop"  # label outside the trained set
    if kind == 2:
        return json.dumps({k: v for k, v in answer.items() if k != "priority"}), "stop"  # a missing field
    return "I'm sorry, but I cannot help with routing this ticket.", "stop"  # a refusal


def make_record(kind: str, rng: random.Random, *, t: float, model: str, run_id: str | None) -> TrafficRecord:
    """One request of the given kind (SHIFTS) arriving at unix time t."""
    maker = {"new_codes": _new_code_ticket, "other_domain": _other_domain, "language": _german}.get(kind, _ticket)
    text, answer = maker(rng)
    reply, finish = _broken(answer, rng) if kind == "broken_outputs" else (json.dumps(answer), "stop")
    return TrafficRecord(
        id=f"chatcmpl-{rng.getrandbits(64):016x}",
        time=t,
        model=model,
        run_id=run_id,
        endpoint="chat.completions",
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
        answer=reply,
        prompt_tokens=len(text) // 4,
        completion_tokens=len(reply) // 4,
        max_tokens=64,
        latency_ms=rng.gauss(180.0, 25.0),
        finish_reason=finish,
    )


def make_window(
    kind: str, n: int, *, start: float, seconds: float, model: str, run_id: str | None, seed: int, shifted_share: float = 1.0
) -> list[TrafficRecord]:
    """n requests spread over [start, start + seconds): a share `shifted_share` of them of `kind`, the
    rest in-distribution (production rarely shifts all at once)."""
    rng = random.Random(seed)
    return [
        make_record(kind if rng.random() < shifted_share else "in_distribution", rng, t=start + seconds * i / n, model=model, run_id=run_id) for i in range(n)
    ]
