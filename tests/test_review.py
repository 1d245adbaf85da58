"""Human review: blinded export, the filled sheet's import, rater agreement, clear errors."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess

import pytest
from sklearn.metrics import cohen_kappa_score

from tunesmith.errors import UserError
from tunesmith.eval.review import COLUMNS, export_review, import_review


def make_rows(n: int = 40) -> list[dict]:
    return [
        {
            "id": f"ex-{i}",
            "prompt": f'Question {i}, with "quotes", commas\nand a <b>tag</b>',
            "reference": f"ref {i}",
            "answer_a": f"base answer {i}",
            "answer_b": f"tuned answer {i}",
        }
        for i in range(n)
    ]


def read(path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def write(path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def fill(sheet: list[dict], choose) -> list[dict]:
    """A rater: `choose(model_1, model_2, index)` -> preferred; ratings 5 for tuned, 2 for base."""
    out = []
    for i, row in enumerate(sheet):
        first = "tuned" if row["answer_1"].startswith("tuned") else "base"
        second = "base" if first == "tuned" else "tuned"
        out.append({**row, "preferred": choose(first, second, i), "rating_1": "5" if first == "tuned" else "2", "rating_2": "5" if second == "tuned" else "2"})
    return out


def test_round_trip_gives_the_expected_win_rate(tmp_path):
    csv_path, html_path, key_path = export_review(make_rows(40), tmp_path / "review", fraction=0.5, seed=3)
    sheet = read(csv_path)
    assert len(sheet) == 20 and list(sheet[0]) == COLUMNS
    assert sheet[0]["prompt"].endswith("and a <b>tag</b>")  # quotes, commas and newlines survive the CSV

    # the rater prefers the tuned answer in 3 rows of 4 and calls the 4th a tie, whatever its position
    def choose(first, second, i):
        return "tie" if i % 4 == 3 else ("1" if first == "tuned" else "2")

    write(tmp_path / "filled.csv", fill(sheet, choose))
    result = import_review(tmp_path / "filled.csv", key_path)
    assert result.raters == 1 and result.rated == 20
    assert (result.tuned_wins, result.base_wins, result.ties) == (15, 0, 5)
    assert result.win_rate_tuned == 0.75 and result.win_rate_base == 0 and result.tie_rate == 0.25
    assert result.mean_rating == {"base": 2.0, "tuned": 5.0}
    assert result.agreement is None and result.cohen_kappa is None


def test_unrated_rows_are_not_counted(tmp_path):
    csv_path, _, key_path = export_review(make_rows(10), tmp_path, fraction=1.0)
    sheet = fill(read(csv_path), lambda first, second, i: "1" if first == "base" else "2")
    for row in sheet[4:]:
        row.update(preferred="", rating_1="", rating_2="")
    write(tmp_path / "filled.csv", sheet)
    result = import_review(tmp_path / "filled.csv", key_path)
    assert result.rated == 4 and result.base_wins == 4 and result.win_rate_base == 1.0


def test_blinding_varies_per_row_is_seeded_and_kept_out_of_the_sheet(tmp_path):
    csv_path, html_path, key_path = export_review(make_rows(40), tmp_path / "a", fraction=1.0, seed=0)
    key = json.loads(key_path.read_text())["order"]
    firsts = [key[row["id"]][0] for row in read(csv_path)]
    assert 5 < firsts.count("tuned") < 35  # both orders occur, roughly half each
    for row in read(csv_path):
        assert row["answer_1"].startswith(key[row["id"]][0])
    assert "tuned" not in csv_path.read_text().replace("tuned answer", "") and "answer_a" not in csv_path.read_text()
    _, _, again = export_review(make_rows(40), tmp_path / "b", fraction=1.0, seed=0)
    _, _, other = export_review(make_rows(40), tmp_path / "c", fraction=1.0, seed=1)
    assert json.loads(again.read_text())["order"] == key != json.loads(other.read_text())["order"]


def test_a_small_fraction_still_samples_one_row(tmp_path):
    csv_path, _, _ = export_review(make_rows(3), tmp_path, fraction=0.01)
    assert len(read(csv_path)) == 1


def test_html_holds_every_row_and_fetches_nothing(tmp_path):
    csv_path, html_path, _ = export_review(make_rows(30), tmp_path, fraction=1.0)
    page = html_path.read_text()
    assert not re.search(r"https?://", page)
    assert "<b>tag</b>" not in page.split("<script")[0]  # row text is escaped, not rendered
    for i, row in enumerate(read(csv_path)):
        assert f'data-id="{row["id"]}"' in page
        assert f'name="preferred-{i}"' in page and f'id="rating_1-{i}"' in page and f'id="rating_2-{i}"' in page
    for n in range(30):
        assert f"base answer {n}" in page and f"tuned answer {n}" in page
    assert "downloadCsv" in page and all(c in page for c in COLUMNS)


def test_two_raters_agreement_matches_sklearn(tmp_path):
    csv_path, _, key_path = export_review(make_rows(24), tmp_path, fraction=1.0, seed=5)
    sheet = read(csv_path)
    labels = ["tuned", "base", "tie"]
    first_choices = [labels[i % 3] for i in range(24)]
    second_choices = [labels[(i * 7 // 5) % 3] for i in range(24)]

    def as_position(picks):
        return lambda first, second, i: "tie" if picks[i] == "tie" else ("1" if first == picks[i] else "2")

    write(tmp_path / "r1.csv", fill(sheet, as_position(first_choices)))
    write(tmp_path / "r2.csv", fill(sheet, as_position(second_choices)))
    result = import_review([tmp_path / "r1.csv", tmp_path / "r2.csv"], key_path)
    expected_agreement = sum(a == b for a, b in zip(first_choices, second_choices)) / 24
    assert result.raters == 2 and result.rated == 48 and result.agreement_rows == 24
    assert result.agreement == pytest.approx(expected_agreement, abs=1e-4)
    assert result.cohen_kappa == pytest.approx(cohen_kappa_score(first_choices, second_choices), abs=1e-4)
    assert result.tuned_wins == first_choices.count("tuned") + second_choices.count("tuned")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "nope"}, "unknown id 'nope'"),
        ({"rating_1": "7"}, "rating_1 is '7'"),
        ({"preferred": "A"}, "preferred is 'a'"),
    ],
)
def test_bad_sheet_rows_name_file_and_line(tmp_path, change, message):
    csv_path, _, key_path = export_review(make_rows(6), tmp_path, fraction=1.0)
    sheet = read(csv_path)
    sheet[2].update(change)
    write(tmp_path / "bad.csv", sheet)
    with pytest.raises(UserError) as info:
        import_review(tmp_path / "bad.csv", key_path)
    text = info.value.render()
    # rows 0 and 1 each span two lines (the prompt has a newline), so row 2 starts on line 6
    assert f"bad.csv:6: {message}" in text and info.value.fix


def test_missing_column_is_a_clear_error(tmp_path):
    csv_path, _, key_path = export_review(make_rows(4), tmp_path, fraction=1.0)
    text = csv_path.read_text().replace("rating_2", "score_2", 1)
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(UserError, match="missing column") as info:
        import_review(tmp_path / "bad.csv", key_path)
    assert "bad.csv:1" in info.value.render() and "rating_2" in info.value.fix


def test_bad_export_input_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        export_review([], tmp_path)
    with pytest.raises(UserError, match="not usable"):
        export_review([{"id": 1, "answer_a": "x", "answer_b": "y"}, {"id": 1, "answer_a": "x", "answer_b": "y"}], tmp_path)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_html_download_button_writes_an_importable_sheet(tmp_path):
    """Runs the page's own script under node with a stub DOM: every row tied, rated 4 and 2."""
    csv_path, html_path, key_path = export_review(make_rows(5), tmp_path, fraction=1.0)
    page = html_path.read_text()
    data = re.search(r'<script type="application/json" id="rows">(.*?)</script>', page, re.S).group(1)
    script = re.findall(r"<script>(.*?)</script>", page, re.S)[-1]
    stub = (
        "let out = null;\n"
        f"const ROWS_TEXT = {json.dumps(data)};\n"
        "const document = {getElementById: id => id === 'rows' ? {textContent: ROWS_TEXT}"
        " : {value: id.startsWith('rating_1') ? '4' : id.startsWith('rating_2') ? '2' : 'fine, \"ok\"'},"
        " querySelector: q => ({value: 'tie'}), createElement: () => ({click() {}, remove() {}}), body: {appendChild() {}}};\n"
        "class Blob { constructor(parts) { out = parts.join(''); } }\n"
        "const URL = {createObjectURL: () => 'blob'};\n"
    )
    (tmp_path / "page.js").write_text(stub + script + "\ndownloadCsv(); process.stdout.write(out);\n")
    done = subprocess.run(["node", str(tmp_path / "page.js")], capture_output=True, text=True, timeout=30, check=True)
    (tmp_path / "downloaded.csv").write_text(done.stdout, encoding="utf-8", newline="")
    downloaded = read(tmp_path / "downloaded.csv")
    assert [r["prompt"] for r in downloaded] == [r["prompt"] for r in read(csv_path)]
    assert downloaded[0]["comment"] == 'fine, "ok"'
    result = import_review(tmp_path / "downloaded.csv", key_path)
    assert result.rated == 5 and result.ties == 5
    assert all(2 <= m <= 4 for m in result.mean_rating.values())


FORMULAS = ['=HYPERLINK("http://x","y")', "+1+1", "-2", "@SUM(A1)", "\tx", "\rx", "'=already quoted", "'plain"]


def test_cells_a_spreadsheet_would_run_are_defused_and_read_back_exactly(tmp_path):
    rows = [{"id": f"-{i}" if i % 2 else f"ex-{i}", "prompt": text, "reference": text, "answer_a": text, "answer_b": "fine"} for i, text in enumerate(FORMULAS)]
    csv_path, _, key_path = export_review(rows, tmp_path, fraction=1.0)
    sheet = read(csv_path)
    cells = [row[c] for row in sheet for c in ("id", "prompt", "reference", "answer_1", "answer_2")]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]  # none starts as a formula
    assert {r["prompt"] for r in sheet} == {"'" + t for t in FORMULAS}  # a leading ' is doubled, so stripping one is always right
    write(tmp_path / "filled.csv", fill(sheet, lambda first, second, i: "1"))
    result = import_review(tmp_path / "filled.csv", key_path)  # the ids "-1", "-3" ... are matched once the ' is stripped
    assert result.rated == len(FORMULAS)


@pytest.mark.parametrize(("encoding", "delimiter"), [("utf-8-sig", ";"), ("cp1252", ","), ("utf-16", "\t"), ("utf-16-le", "\t")])
def test_sheets_saved_by_a_spreadsheet_are_read_in_their_encoding(tmp_path, encoding, delimiter):
    """Excel saves "CSV UTF-8" with a BOM (';' in many locales), "CSV" in CP1252 on Windows, and
    "Unicode text" as UTF-16 with tabs (with a BOM; some tools without one)."""
    csv_path, _, key_path = export_review(make_rows(8), tmp_path, fraction=1.0, seed=1)
    filled = [{**row, "comment": "très bien, café"} for row in fill(read(csv_path), lambda first, second, i: "1" if first == "tuned" else "2")]
    with open(tmp_path / "filled.csv", "w", encoding=encoding, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter=delimiter)
        writer.writeheader()
        writer.writerows(filled)
    result = import_review(tmp_path / "filled.csv", key_path)
    assert result.rated == 8 and result.tuned_wins == 8


def test_an_unreadable_sheet_names_the_file(tmp_path):
    _, _, key_path = export_review(make_rows(4), tmp_path, fraction=1.0)
    bad = tmp_path / "photo.csv"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x81\x8d\x8f\x90\x9d" * 20)
    with pytest.raises(UserError) as caught:
        import_review(bad, key_path)
    assert str(bad) in caught.value.render() and "UTF-8" in caught.value.render()
