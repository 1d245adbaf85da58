"""What a user sees in a log file or CI (no terminal): progress as it happens, lines never folded at 80 columns."""

from __future__ import annotations

import subprocess
import sys
import time

from clihelp import SRC

from tunesmith.ui import PLAIN_MIN_GAP_S

SCRIPT = """
import time
from tunesmith.ui import console, progress
console.print("a long message " + "word " * 40 + "END")
with progress() as bar:
    task = bar.add_task("training", total=40, info="")
    for step in range(40):
        bar.update(task, advance=1, info=f"loss {1 / (step + 1):.3f}")
        time.sleep(0.01)
"""


def _run_without_terminal(script: str) -> subprocess.CompletedProcess:
    # no COLUMNS: as under CI; no minimum gap between lines, so 40 quick steps show every 5%
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "TERM": "xterm-256color", "TUNESMITH_PROGRESS_MIN_S": "0"}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)


def test_without_a_terminal_progress_is_plain_lines_as_the_work_goes_and_lines_are_not_folded():
    result = _run_without_terminal(SCRIPT)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("a long message") and line.endswith("END") for line in lines)  # one line, not folded at 80
    progress_lines = [line for line in lines if line.startswith("training: ")]
    assert len(progress_lines) >= 19  # every 5% of 40 steps, not one bar drawn at the end
    assert "training: 20/40 (50%) loss 0.050" in result.stderr and "training: 40/40 (100%)" in progress_lines[-1]
    assert "━" not in result.stderr  # no bar characters in a log


def test_the_corpus_metric_bootstrap_shows_its_progress(capsys):
    from tunesmith.eval.compare import compare_rows

    rows = [{"id": str(i), "prediction": f"the answer is {i}", "reference": f"the answer is {i % 3}", "exact_match": float(i % 3 == i)} for i in range(30)]
    tuned = [{**r, "prediction": r["reference"], "exact_match": 1.0} for r in rows]
    started = time.monotonic()
    compare_rows(rows, tuned, {"exact_match": 1.0, "bleu": 50.0})
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert "bootstrap + permutation test of bleu: " in err and "(100%)" in err
    lines = [line for line in err.splitlines() if line.startswith("bootstrap + permutation test of bleu: ")]
    assert len(lines) <= seconds / PLAIN_MIN_GAP_S + 2  # a quick bootstrap is a line or two in a log, not twenty
