"""Fuzzing what a user or a broken disk hands tunesmith: random YAML shapes and values as a run
config (the validation `train --config` runs), and run and dataset folders with a file damaged at
random. Either it works or it is a UserError (exit 2) naming the file: never another exception."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_damaged_files import pristine  # noqa: F401 - the module fixture: a home with a dataset and a tiny run

from tunesmith.config import DataSpec, EvalSpec, ModelSpec, RunSpec, TrainSpec, load_run_spec
from tunesmith.errors import UserError

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)


def section(cls) -> st.SearchStrategy:
    """Mostly the section's own field names (so validation goes deep), sometimes anything."""
    keys = st.sampled_from(sorted(cls.model_fields)) | st.text(max_size=8)
    return st.dictionaries(keys, values | st.dictionaries(st.text(max_size=8), values, max_size=3), max_size=6) | values


configs = (
    st.fixed_dictionaries(
        {},
        optional={
            "name": values,
            "model": section(ModelSpec),
            "data": section(DataSpec),
            "train": section(TrainSpec),
            "eval": section(EvalSpec),
            "versions": values,
        },
    )
    | values
)


def loads_or_names_the_file(path: Path) -> None:
    try:
        assert isinstance(load_run_spec(path), RunSpec)
    except UserError as exc:
        assert str(path) in exc.render(), exc.render()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs)
def test_any_yaml_config_is_a_spec_or_a_named_user_error(config):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        loads_or_names_the_file(path)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_as_a_config_are_a_named_user_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.yaml"
        path.write_bytes(data)
        loads_or_names_the_file(path)


FILES = [
    "runs/{run}/run.json",
    "runs/{run}/config.yaml",
    "runs/{run}/adapter/adapter_config.json",
    "runs/{run}/adapter/adapter_model.safetensors",
    "runs/{run}/adapter/tokenizer_config.json",
    "runs/{run}/adapter/tokenizer.json",
    "datasets/tickets/manifest.json",
    "datasets/tickets/test.jsonl",
    "datasets/tickets/train.jsonl",
]


def damage(path: Path, kind: str, where: float, junk: bytes) -> None:
    data = path.read_bytes()
    at = int(where * len(data))
    if kind == "truncate":
        path.write_bytes(data[:at])
    elif kind == "overwrite":
        path.write_bytes(data[:at] + junk + data[at + len(junk) :])
    elif kind == "insert":
        path.write_bytes(data[:at] + junk + data[at:])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "delete":
        path.unlink()
    elif kind == "folder":  # a folder where the file should be
        path.unlink()
        path.mkdir()


def open_everything(home: Path, run_id: str) -> None:
    """What `eval RUN` reads before it generates: the run's record and config, its dataset, its model."""
    from tunesmith.data.dataset import load_dataset
    from tunesmith.models.artefact import load_tuned
    from tunesmith.registry.runfolder import load_run_info, read_config
    from tunesmith.workspace import Workspace

    ws = Workspace.from_env(home)
    run_dir = ws.run_dir(run_id)
    info, spec = load_run_info(run_dir), read_config(run_dir)
    dataset = load_dataset(ws, info.dataset)
    assert sum(len(split) for split in dataset.splits.values()) > 0
    load_tuned(run_dir, info, spec.model)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    file=st.sampled_from(FILES),
    kind=st.sampled_from(["truncate", "overwrite", "insert", "empty", "delete", "folder"]),
    where=st.floats(0, 1),
    junk=st.binary(min_size=1, max_size=16),
)
def test_a_damaged_run_or_dataset_is_opened_or_named(pristine, file, kind, where, junk):  # noqa: F811
    source, run_id = pristine
    with tempfile.TemporaryDirectory() as folder:
        home = Path(shutil.copytree(source, Path(folder) / "home"))
        damage(home / file.format(run=run_id), kind, where, junk)
        try:
            open_everything(home, run_id)
        except UserError as exc:
            assert str(home) in exc.render(), exc.render()


@pytest.mark.parametrize("file", FILES)
def test_every_file_in_the_table_exists(pristine, file):  # noqa: F811
    """The fuzz above damages real files, not names that drifted from what a run writes."""
    source, run_id = pristine
    assert (source / file.format(run=run_id)).is_file()


# ---------------------------------------------------------------- the review import

cells = st.text(max_size=20) | st.sampled_from(["1", "2", "tie", "", "5", "0", "=1+1", "'-3", "x"])


@settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["id", "preferred", "rating_1", "rating_2", "answer_1", None]), cells), max_size=8),
    raw=st.none() | st.binary(max_size=300),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]),
)
def test_a_filled_review_sheet_imports_or_names_the_file(tmp_path_factory, edits, raw, encoding):
    """A rater's sheet edited at random (cells, deleted columns, raw bytes, the encodings spreadsheets
    save): the import gives a result or a UserError naming the sheet, never another exception."""
    import csv
    import io

    from tunesmith.eval.review import COLUMNS, export_review, import_review

    folder = tmp_path_factory.mktemp("review")
    rows = [{"id": f"ex-{i}", "prompt": f"q{i}", "reference": "r", "answer_a": f"a{i}", "answer_b": f"b{i}"} for i in range(6)]
    csv_path, _, key_path = export_review(rows, folder / "review", fraction=1.0, seed=0)
    with open(csv_path, encoding="utf-8", newline="") as handle:
        sheet = list(csv.DictReader(handle))
    columns = list(COLUMNS)
    for row, column, value in edits:
        if column is None:
            columns = [c for c in columns if c != columns[row % len(columns)]]
        elif row < len(sheet):
            sheet[row][column] = value
    filled = folder / "filled.csv"
    if raw is not None:
        filled.write_bytes(raw)
    else:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sheet)
        filled.write_bytes(text.getvalue().encode(encoding, errors="replace"))
    try:
        import_review(filled, key_path)
    except UserError as exc:
        assert filled.name in exc.render(), exc.render()
