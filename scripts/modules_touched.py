"""Which tunesmith modules run code during one LoRA `tunesmith train` of a prepared dataset (tiny
random-weight model, one epoch), for the architecture note's "modules a run passes through".
Counts modules whose functions run (class bodies and imports left out).

    PYTHONPATH=src python scripts/modules_touched.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ["TUNESMITH_HOME"] = tempfile.mkdtemp()

import conftest  # noqa: E402  (the tests' tiny model and demo records)

from tunesmith.cli import main  # noqa: E402

CO_NEWLOCALS = 0x2  # set on function code objects, not on module or class bodies


def run(*argv: str) -> None:
    sys.argv = ["tunesmith", *argv]
    try:
        main()
    except SystemExit:
        pass


corpus = [m["content"] for r in conftest.tiny_records(200, 1) for m in r["messages"]]
model = conftest.build_tiny_model(Path(tempfile.mkdtemp()), corpus)
data = Path(tempfile.mkdtemp()) / "tiny.jsonl"
data.write_text("".join(json.dumps(r) + "\n" for r in conftest.tiny_records(40, 0)))
run("data", "prepare", str(data), "--out", "tiny")

seen: set[str] = set()


def profile(frame, event, arg):  # noqa: ANN001
    if event == "call" and frame.f_code.co_flags & CO_NEWLOCALS and "/tunesmith/" in frame.f_code.co_filename:
        seen.add(frame.f_code.co_filename.split("/tunesmith/", 1)[1])


sys.setprofile(profile)
run("train", "--data", "tiny", "--model", str(model), "--method", "lora", "--epochs", "1")
sys.setprofile(None)
print(len(seen), "modules:", " ".join(sorted(seen)), file=sys.__stdout__)
