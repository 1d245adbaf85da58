"""The quickstart's task: route support tickets full of in-house jargon to the team's own
queues and priority, answered as a small JSON object.

A general model cannot know that "KST" boxes belong to CORE-INFRA or that a "dunning run"
is FINOPS's problem: exactly the knowledge fine-tuning is for. Deterministic given a seed.
"""

from __future__ import annotations

import json
import random

SYSTEM_PROMPT = 'Route this Nimbus support ticket. Reply with JSON only: {"team": ..., "priority": ..., "product": ...}'

# team -> (product code prefixes, in-house jargon the ticket may mention)
TEAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "FINOPS": (("BLX", "INV"), ("the dunning run", "ledger sync", "proration on the invoice", "the PO mismatch", "a double charge", "the refund batch")),
    "CORE-INFRA": (("KST", "GW"), ("a Kestrel node", "pod evictions", "the edge gateway", "TLS handshake errors", "the blue/green cutover", "disk pressure")),
    "APPX": (
        ("MOB", "WDG"),
        ("the iOS build", "push notifications", "the Android widget", "the app crashing on launch", "the dark-mode toggle", "the offline cache"),
    ),
    "DATAPIPE": (("ETL", "LKH"), ("the nightly ETL", "the lakehouse sync", "a stuck CDC stream", "schema drift", "the backfill job", "stale dashboards")),
    "IAM": (("SSO", "MFA"), ("SAML assertions", "SCIM provisioning", "MFA resets", "the SSO redirect loop", "expired API tokens", "role mappings")),
    "DEVICES": (("RMA", "HWK"), ("a dead HWK scanner", "the RMA label", "firmware 4.2 rollout", "a cracked dock", "battery swelling", "the replacement unit")),
}

# Priorities are words, not "P1/P2/P3": the digits' output embeddings are so alike that a LoRA
# adapter on a 135M model barely separates them in one epoch (measured: chance level), while
# full fine-tuning does. Words also read better in a queue.
PRIORITY_CUES = {
    "urgent": (
        "production is down",
        "all customers are affected",
        "this is a sev1",
        "we are losing money every minute",
        "nobody can work",
        "complete outage since 9am",
    ),
    "normal": (
        "it happens intermittently",
        "some users see it",
        "it is slowing us down",
        "there is a workaround but it hurts",
        "about a third of requests fail",
        "it started after the last update",
    ),
    "low": ("no rush on this", "whenever you get a chance", "just a cosmetic thing", "more of a question really", "low priority", "not urgent at all"),
}

OPENERS = ("Hi team,", "Hello,", "hey", "Good morning support,", "", "Hi Nimbus,", "To whom it may concern,", "URGENT?", "Quick one:")
BODIES = (
    "We have a problem with {jargon} on {code}. {cue}.",
    "{code}: {jargon} is broken again and {cue}.",
    "Seeing issues with {jargon} ({code}) since this morning, {cue}.",
    "Can someone look at {jargon}? Asset {code}. {cue}.",
    "ticket re {code} - {jargon} not working. {cue}",
    "Our ops lead reports trouble with {jargon} for unit {code}; {cue}.",
    "{cue}. The problem is {jargon}, reference {code}.",
    "Following up on {code}: {jargon} still misbehaves and {cue}.",
)
CLOSERS = ("Thanks", "Thanks, Dana", "-- sent from my phone", "", "Regards, Ops at Contoso", "cheers", "Best, M. Okafor", "")
EXTRAS = ("We are on the enterprise plan.", "Ticket #{n} might be related.", "I already restarted everything.", "", "", "Screenshot attached.")


def _typo(text: str, rng: random.Random) -> str:
    """One swapped pair of adjacent letters somewhere in the text: real tickets are not proofread."""
    positions = [i for i in range(len(text) - 1) if text[i].isalpha() and text[i + 1].isalpha()]
    if not positions:
        return text
    i = rng.choice(positions)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def make_ticket(rng: random.Random) -> tuple[str, dict[str, str]]:
    team = rng.choice(sorted(TEAMS))
    prefixes, jargon = TEAMS[team]
    priority = rng.choice(sorted(PRIORITY_CUES))
    code = f"{rng.choice(prefixes)}-{rng.randint(10, 999)}"
    cue = rng.choice(PRIORITY_CUES[priority])
    if rng.random() < 0.3:
        cue = _typo(cue, rng)  # typos only in prose: the product code must stay copyable
    body = rng.choice(BODIES).format(jargon=rng.choice(jargon), code=code if rng.random() > 0.15 else code.lower(), cue=cue)
    body = body[0].upper() + body[1:]
    parts = [rng.choice(OPENERS), body, rng.choice(EXTRAS).format(n=rng.randint(1000, 99999)), rng.choice(CLOSERS)]
    text = " ".join(p for p in parts if p)
    if rng.random() < 0.1:
        text = text.lower()
    return text, {"team": team, "priority": priority, "product": code}


def generate(n: int = 500, seed: int = 0) -> list[dict]:
    """n distinct tickets in chat `messages` format, with the team as the example's label."""
    rng = random.Random(seed)
    seen: set[str] = set()
    records = []
    while len(records) < n:
        text, answer = make_ticket(rng)
        if text in seen:
            continue
        seen.add(text)
        records.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": json.dumps(answer)},
                ],
                "label": answer["team"],
            }
        )
    return records


def write_jsonl(path, n: int = 500, seed: int = 0) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in generate(n, seed)), encoding="utf-8")
