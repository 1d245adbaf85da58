"""Human review: a blinded A/B sheet (CSV and a self-contained HTML page) for a seeded sample of
evaluation examples, and the import of the filled sheets: tuned-vs-base win rate, mean ratings,
and agreement between raters.

Which model wrote answer_1 and which answer_2 is drawn per row and written only to the key file,
which stays with whoever runs the review; raters get the CSV or the HTML page."""

from __future__ import annotations

import csv
import html
import io
import json
import random
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

from pydantic import BaseModel

from tunesmith.errors import ProblemList, UserError

COLUMNS = ["id", "prompt", "reference", "answer_1", "answer_2", "preferred", "rating_1", "rating_2", "comment"]
PREFERRED = ("1", "2", "tie")
MODELS = ("base", "tuned")  # answer_a is the base model's, answer_b the tuned model's


class ReviewResult(BaseModel):
    """Preferences are pooled over raters; rates are over the rows with a preference."""

    raters: int
    rated: int  # preferences given (rows x raters)
    tuned_wins: int
    base_wins: int
    ties: int
    win_rate_tuned: float | None
    win_rate_base: float | None
    tie_rate: float | None
    mean_rating: dict[str, float | None]  # per model
    agreement: float | None = None  # share of rows both raters gave the same preference (mean over rater pairs)
    cohen_kappa: float | None = None  # on the preference, mean over rater pairs; None when undefined
    agreement_rows: int = 0  # rows rated by both raters of a pair (summed over pairs)


def export_review(rows: Sequence[dict], folder: str | Path, *, fraction: float = 0.1, seed: int = 0) -> tuple[Path, Path, Path]:
    """Write review.csv, review.html and review-key.json into `folder`. Rows have id, prompt,
    reference, answer_a (base) and answer_b (tuned). Returns (csv, html, key) paths."""
    _check_rows(rows, fraction)
    rng = random.Random(seed)
    count = max(1, round(fraction * len(rows)))
    chosen = sorted(rng.sample(range(len(rows)), count))
    sheet, order = [], {}
    for index in chosen:
        row = rows[index]
        swap = rng.random() < 0.5
        first, second = (row["answer_b"], row["answer_a"]) if swap else (row["answer_a"], row["answer_b"])
        order[str(row["id"])] = ["tuned", "base"] if swap else ["base", "tuned"]
        sheet.append(
            {
                "id": str(row["id"]),
                "prompt": row.get("prompt") or "",
                "reference": row.get("reference") or "",
                "answer_1": first or "",
                "answer_2": second or "",
                "preferred": "",
                "rating_1": "",
                "rating_2": "",
                "comment": "",
            }
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key_path, suffix = _new_key_file(folder)
    csv_path, html_path = folder / f"review{suffix}.csv", folder / f"review{suffix}.html"
    write_sheet(csv_path, sheet)
    html_path.write_text(render_html(sheet), encoding="utf-8")
    key = {
        "about": "which model wrote answer_1 / answer_2 per row; do not share with raters",
        "sheet": csv_path.name,
        "seed": seed,
        "fraction": fraction,
        "order": order,
    }
    key_path.write_text(json.dumps(key, indent=2) + "\n", encoding="utf-8")
    return csv_path, html_path, key_path


def _new_key_file(folder: Path) -> tuple[Path, str]:
    """review-key.json, else review-key-2.json, -3 ...: created exclusively, so an earlier export's key
    (which raters' sheets still need) is never overwritten."""
    for n in range(1, 10_000):
        suffix = "" if n == 1 else f"-{n}"
        path = folder / f"review-key{suffix}.json"
        try:
            with path.open("x", encoding="utf-8"):
                return path, suffix
        except FileExistsError:
            continue
    raise UserError(f"{folder} holds 9,999 review exports", fix="move the old ones away")


def review_keys(folder: Path) -> list[Path]:
    """The review keys in an export folder, newest export first."""

    def number(path: Path) -> int:
        tail = path.stem.removeprefix("review-key").removeprefix("-")
        return int(tail) if tail.isdigit() else 1

    return sorted(folder.glob("review-key*.json"), key=number, reverse=True)


def find_key(sheet: Path, keys: list[Path]) -> Path:
    """The key this filled sheet was exported with: the one that knows all of its ids. Several keys
    that blind the sheet's rows alike are the same blinding (the newest is used); several that differ
    cannot be told apart, and none is a sheet from elsewhere: both are refused, naming the keys."""
    matches: list[tuple[Path, dict[str, list[str]], ProblemList | None]] = []
    for key in keys:
        order = load_key(key)
        try:
            read_sheet(sheet, order)
        except ProblemList as exc:
            if any("unknown id" in problem for problem in exc.problems):
                continue
            matches.append((key, order, exc))
            continue
        matches.append((key, order, None))
    names = ", ".join(k.name for k in keys)
    if not matches:
        raise UserError(
            f"no review key holds the ids of {sheet} (keys in {keys[0].parent if keys else '-'}: {names or 'none'})",
            fix="pass the key written when this sheet was exported: --key PATH/review-key-N.json",
        )
    first_key, first_order, problem = matches[0]
    differing = [k for k, order, _ in matches[1:] if any(order[i] != first_order[i] for i in first_order.keys() & order.keys())]
    if differing:
        raise UserError(
            f"{sheet} fits several review keys that blind it differently: {first_key.name}, {', '.join(k.name for k in differing)}",
            fix=f"say which export it came from: --key {first_key}",
        )
    if problem is not None:
        raise problem
    return first_key


def import_review(csv_paths: str | Path | Sequence[str | Path], key_path: str | Path | Sequence[str | Path]) -> ReviewResult:
    """Unblind one or more filled sheets with the key (or one key per sheet); with several, also rater agreement."""
    paths = [Path(csv_paths)] if isinstance(csv_paths, (str, Path)) else [Path(p) for p in csv_paths]
    if not paths:
        raise UserError("no review sheet given", fix="pass the filled review.csv (or several, one per rater)")
    keys = [Path(key_path)] * len(paths) if isinstance(key_path, (str, Path)) else [Path(k) for k in key_path]
    raters = [read_sheet(p, load_key(k)) for p, k in zip(paths, keys)]
    prefs = [p for rater in raters for p, _, _ in rater.values() if p is not None]
    counts = {m: prefs.count(m) for m in (*MODELS, "tie")}

    def rate(k: int) -> float | None:
        return round(k / len(prefs), 4) if prefs else None

    mean_rating = {}
    for model in MODELS:
        found = [ratings[model] for rater in raters for _, ratings, _ in rater.values() if model in ratings]
        mean_rating[model] = round(sum(found) / len(found), 4) if found else None
    result = ReviewResult(
        raters=len(raters),
        rated=len(prefs),
        tuned_wins=counts["tuned"],
        base_wins=counts["base"],
        ties=counts["tie"],
        win_rate_tuned=rate(counts["tuned"]),
        win_rate_base=rate(counts["base"]),
        tie_rate=rate(counts["tie"]),
        mean_rating=mean_rating,
    )
    if len(raters) > 1:
        result.agreement, result.cohen_kappa, result.agreement_rows = rater_agreement(raters)
    return result


def rater_agreement(raters: list[dict[str, tuple]]) -> tuple[float | None, float | None, int]:
    """Percent agreement and Cohen's kappa on the (unblinded) preference over the rows both raters
    of a pair answered; with more than two raters, the mean over all pairs."""
    from sklearn.metrics import cohen_kappa_score

    agreements, kappas, shared = [], [], 0
    for left, right in combinations(raters, 2):
        ids = [i for i in left if i in right and left[i][0] is not None and right[i][0] is not None]
        if not ids:
            continue
        x, y = [left[i][0] for i in ids], [right[i][0] for i in ids]
        shared += len(ids)
        agreements.append(sum(u == v for u, v in zip(x, y)) / len(ids))
        if len(set(x) | set(y)) > 1:  # kappa is 0/0 when both raters used one label only
            kappas.append(float(cohen_kappa_score(x, y)))
    agreement = round(sum(agreements) / len(agreements), 4) if agreements else None
    kappa = round(sum(kappas) / len(kappas), 4) if kappas else None
    return agreement, kappa, shared


# --- files -----------------------------------------------------------------------------------


# A cell starting with one of these is a formula to a spreadsheet (an answer "=HYPERLINK(...)" would
# run when a rater opens the sheet): such cells are written with a leading ' (OWASP's CSV-injection
# advice), and read back without it. "'" is in the set so that the prefix is always undone exactly.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def defuse(cell: str) -> str:
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def undefuse(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell


def write_sheet(path: Path, sheet: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: defuse(str(v)) for k, v in row.items()} for row in sheet)


def _delimiter(header: str) -> str:
    """Spreadsheets save "CSV" with ',' or, in many locales, ';', and "Unicode text" with tabs."""
    return max(",;\t", key=header.count)


def load_key(path: Path) -> dict[str, list[str]]:
    try:
        order = json.loads(path.read_text(encoding="utf-8"))["order"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"cannot read the review key: {exc}", where=str(path), fix="pass the review-key.json written by export_review next to the sheet"
        ) from None
    if not isinstance(order, dict) or not all(sorted(v) == sorted(MODELS) for v in order.values()):
        raise UserError("the review key has no valid 'order' table", where=str(path), fix="pass the review-key.json written by export_review")
    return order


def read_cells(path: Path, needed: Sequence[str] = ("id", "preferred", "rating_1", "rating_2")) -> list[tuple[int, dict[str, str]]]:
    """(line, row) for every row of a filled sheet, its cells as written before the CSV-injection guard
    (`defuse`) was added. The file may be saved by any spreadsheet (see below); a missing column is refused."""
    from tunesmith.files import read_text

    # A spreadsheet saves as UTF-8 with a BOM, UTF-16 ("Unicode text") or, on Windows, CP1252: all are read.
    text = read_text(path, fix="check the path; save the sheet as CSV UTF-8", fallbacks=("cp1252",))
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle, delimiter=_delimiter(text.split("\n", 1)[0]))
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"missing column(s) {', '.join(missing)}", where=f"{path}:1", fix=f"keep the header row of the exported sheet: {','.join(COLUMNS)}")
        rows, line = [], 1
        for record in reader:
            start, line = line + 1, reader.line_num
            rows.append((start, {k: undefuse(v) if isinstance(v, str) else (v or "") for k, v in record.items() if k is not None}))
    return rows


def read_sheet(path: Path, order: dict[str, list[str]]) -> dict[str, tuple[str | None, dict[str, int], str]]:
    """id -> (preferred model or "tie" or None, ratings per model, comment). Every problem in the
    file is reported at once, each with its file:line."""
    rows: dict[str, tuple] = {}
    problems: list[str] = []
    for start, record in read_cells(path):
        parsed, errors = _read_row(record, order, rows)
        problems += [f"{path}:{start}: {e}" for e in errors]
        if parsed is not None:
            rows[parsed[0]] = parsed[1:]
    if problems:
        raise ProblemList(
            f"{len(problems)} problem(s) in the review sheet {path}",
            problems,
            fix="ids must be the exported ones, each once; preferred is 1, 2, tie or empty; ratings are 1-5 or empty",
        )
    return rows


def _read_row(record: dict, order: dict[str, list[str]], seen: dict) -> tuple[tuple | None, list[str]]:
    row_id = (record.get("id") or "").strip()
    if row_id not in order:
        return None, [f"unknown id {row_id!r} (not in the review key)"]
    if row_id in seen:
        return None, [f"id {row_id!r} appears twice"]
    errors = []
    preferred = (record.get("preferred") or "").strip().lower()
    if preferred not in (*PREFERRED, ""):
        errors.append(f"preferred is {preferred!r}; use 1, 2, tie or leave it empty")
    ratings = {}
    for position in (1, 2):
        value = (record.get(f"rating_{position}") or "").strip()
        if not value:
            continue
        try:
            number = float(value)
        except ValueError:
            number = 0.0
        if not (number.is_integer() and 1 <= number <= 5):
            errors.append(f"rating_{position} is {value!r}; use a whole number 1-5 or leave it empty")
        else:
            ratings[order[row_id][position - 1]] = int(number)
    if errors:
        return None, errors
    winner = None if not preferred else "tie" if preferred == "tie" else order[row_id][int(preferred) - 1]
    return (row_id, winner, ratings, record.get("comment") or ""), []


def _check_rows(rows: Sequence[dict], fraction: float) -> None:
    if not rows:
        raise UserError("no rows to review", fix="pass at least one evaluated example with both models' answers")
    if not 0 < fraction <= 1:
        raise UserError(f"fraction {fraction} is out of range", fix="use a fraction in (0, 1], e.g. 0.1 for one row in ten")
    problems = [f"row {n}: missing {k}" for n, r in enumerate(rows) for k in ("id", "answer_a", "answer_b") if k not in r]
    ids = [str(r.get("id")) for r in rows]
    problems += [f"id {i!r} appears more than once" for i in sorted({i for i in ids if ids.count(i) > 1})]
    if problems:
        raise ProblemList("the rows to review are not usable", problems, fix="give every row a unique id, answer_a (base) and answer_b (tuned)")


# --- the HTML sheet --------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
.row{border:1px solid #ccc;border-radius:6px;padding:1rem;margin:1rem 0}
.answers{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.5rem;border-radius:4px;margin:.25rem 0}
h3{margin:.2rem 0}label{margin-right:1rem}textarea{width:100%;height:3rem}
button{font-size:1rem;padding:.5rem 1rem}
"""

_SCRIPT = """
const COLUMNS = %s;
const ROWS = JSON.parse(document.getElementById('rows').textContent);
function cell(v) {
  v = String(v ?? '');
  if (/^[=+\\-@\\t\\r']/.test(v)) v = "'" + v;  // as review.csv: a spreadsheet must not read a formula
  return /[",\\r\\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
}
function downloadCsv() {
  const lines = [COLUMNS.join(',')];
  ROWS.forEach((row, i) => {
    const picked = document.querySelector('input[name="preferred-' + i + '"]:checked');
    const filled = Object.assign({}, row, {
      preferred: picked ? picked.value : '',
      rating_1: document.getElementById('rating_1-' + i).value,
      rating_2: document.getElementById('rating_2-' + i).value,
      comment: document.getElementById('comment-' + i).value,
    });
    const edited = document.getElementById('answer_2-' + i);  // a sheet whose answer 2 is the reviewer's to write
    if (edited) filled.answer_2 = edited.value;
    lines.push(COLUMNS.map(c => cell(filled[c])).join(','));
  });
  const blob = new Blob([lines.join('\\r\\n') + '\\r\\n'], {type: 'text/csv'});
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = 'review-filled.csv';
  document.body.appendChild(link); link.click(); link.remove();
}
"""


BLIND_INTRO = (
    "For each example, pick the better answer (or tie) and rate each answer from 1 (poor) to 5 (excellent). "
    "The answers' order is random. When done, press the button and send the downloaded file back."
)


def render_html(sheet: list[dict], *, title: str = "Blind review", intro: str = BLIND_INTRO, editable_answer_2: bool = False) -> str:
    """One page, no external assets: every row with radio buttons and selects, and a button that
    downloads the ratings as a CSV in the same format as review.csv. `editable_answer_2`: answer 2 is a
    text box the reviewer may rewrite (served traffic under review: answer 1 as served, answer 2 as it should be)."""
    blocks = [_row_html(i, row, editable_answer_2) for i, row in enumerate(sheet)]
    data = json.dumps(sheet, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>tunesmith review</title>'
        f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}: {len(sheet)} example(s)</h1>\n"
        f"<p>{html.escape(intro)}</p>\n" + "\n".join(blocks) + '\n<p><button type="button" onclick="downloadCsv()">Download ratings (CSV)</button></p>\n'
        f'<script type="application/json" id="rows">{data}</script>\n'
        f"<script>{_SCRIPT % json.dumps(COLUMNS)}</script>\n</body></html>\n"
    )


def _row_html(i: int, row: dict, editable_answer_2: bool = False) -> str:
    e = html.escape
    options = "".join(f'<option value="{v}">{v or "-"}</option>' for v in ("", "1", "2", "3", "4", "5"))
    radios = "".join(
        f'<label><input type="radio" name="preferred-{i}" value="{v}"> {text}</label>' for v, text in (("1", "Answer 1"), ("2", "Answer 2"), ("tie", "Tie"))
    )
    reference = f"<h3>Reference</h3><pre>{e(row['reference'])}</pre>" if row["reference"] else ""

    def shown(n: int) -> str:
        if n == 2 and editable_answer_2:
            return f'<textarea id="answer_2-{i}" style="height:6rem">{e(row["answer_2"])}</textarea>'
        return f"<pre>{e(row[f'answer_{n}'])}</pre>"

    answers = "".join(f'<div><h3>Answer {n}</h3>{shown(n)}<label>Rating <select id="rating_{n}-{i}">{options}</select></label></div>' for n in (1, 2))
    return (
        f'<div class="row" data-id="{e(row["id"])}"><h2>#{i + 1} <small>{e(row["id"])}</small></h2>'
        f'<h3>Prompt</h3><pre>{e(row["prompt"])}</pre>{reference}<div class="answers">{answers}</div>'
        f'<p>Better: {radios}</p><textarea id="comment-{i}" placeholder="comment (optional)"></textarea></div>'
    )
