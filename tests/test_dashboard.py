"""The dashboard as its users meet it: Debian's Chromium (driven by playwright) against a live `tunesmith
api` on 127.0.0.1, over a real workspace (a prepared dataset, two tiny runs, one evaluation comparing
them) with an API key in force. One server and one browser for the module.

Screenshots of every page go to $TUNESMITH_SCREENSHOTS (default: a folder under pytest's tmp dir,
printed): look at them."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from apiserver import start_api, training_file
from conftest import read_metrics, tiny_records, train_tiny

CHROMIUM = Path("/usr/bin/chromium")
PAYLOAD = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'

pytestmark = pytest.mark.slow  # a server, its worker and a browser: several processes (runs in `make test`)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("TUNESMITH_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {folder}")
    return folder


def unlabelled_home(folder: Path):
    """tickets_home's workspace, its tickets without their "label": the comparisons then bootstrap no
    macro-F1 (2,000 scikit-learn calls per comparison, tens of seconds on a loaded machine), and the
    pages have the same metrics, intervals and examples to show."""
    from tunesmith.config import PrepareSpec
    from tunesmith.data.dataset import prepare_dataset
    from tunesmith.workspace import Workspace

    folder.mkdir(parents=True, exist_ok=True)
    workspace = Workspace.from_env(folder)
    for name, records in (("tickets", tiny_records(30)), ("risky", tiny_records(12, seed=3))):
        for record in records:
            record.pop("label", None)
            if name == "risky":  # a dataset whose examples carry markup that must stay text
                record["messages"][1]["content"] += " " + PAYLOAD
        source = folder / f"{name}.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        prepare_dataset(source, workspace, name=name, seed=0, ratios=(0.7, 0.1, 0.2), options=PrepareSpec(pii="off"))
    return workspace


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model):
    """The workspace (dataset `tickets`, dataset `risky` whose examples carry a <script>, runs A and B, B
    evaluated against its base and A), an API key, and `tunesmith ui` (the API's service) with one worker. It starts
    while the runs train (a thread), as its start-up is mostly imports."""
    import threading

    import tunesmith
    from tunesmith.api.keys import KeyStore
    from tunesmith.api.store import api_db

    root = tmp_path_factory.mktemp("dashboard")
    workspace = unlabelled_home(root / "home")
    _, secret = KeyStore(api_db(workspace)).create("dashboard-test")
    started: dict = {}
    server = threading.Thread(target=lambda: started.update(api=start_api(workspace.home, tiny_model, "--workers", "1", command_name="ui")))
    server.start()
    try:
        run_a = train_tiny(workspace, tiny_model, epochs=1, batch_size=4)
        run_b = train_tiny(workspace, tiny_model, epochs=2, batch_size=4, evals_per_epoch=2)
        tunesmith.evaluate(run_b, workspace=workspace, compare_base=True, compare=[run_a], forgetting=True, settings={"max_new_tokens": 8})
    finally:
        server.join()
        if sys.exc_info()[0] is not None and "api" in started:
            started["api"].kill()
    assert "api" in started, "tunesmith api did not start (see the log beside the workspace)"
    try:
        yield {"api": started["api"], "key": secret, "runs": (run_a, run_b), "home": workspace.home, "root": root}
    finally:
        started["api"].kill()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"the dashboard tests drive Debian's Chromium at {CHROMIUM}: `apt-get install chromium` (or `make install-dev`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        found = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield found
        found.close()


@pytest.fixture(scope="module")
def page(browser, site):
    """A tab that already holds the key (as the key prompt leaves it), and records script errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"sessionStorage.setItem('tunesmith-key', {json.dumps(site['key'])})")
    tab = context.new_page()
    tab.errors = []
    tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    tab.set_default_timeout(20_000)
    yield tab
    context.close()


def url(site, fragment: str = "") -> str:
    return f"http://127.0.0.1:{site['api'].port}/{fragment}"


def shot(page, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def open_page(page, site, fragment: str, ready: str) -> None:
    page.goto(url(site, fragment))
    page.wait_for_selector(ready)


# ---------------------------------------------------------------- keys: nothing renders without one


def test_the_dashboard_asks_for_the_key_and_shows_nothing_without_it(browser, site, shots):
    with urllib.request.urlopen(url(site)) as answer:  # the static shell is open
        assert answer.status == 200 and b"/ui/static/app.js" in answer.read()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url(site, "ui/api/runs"))
    assert refused.value.code == 401 and json.loads(refused.value.read())["error"]["code"] == "invalid_api_key"

    context = browser.new_context(viewport={"width": 1280, "height": 700})
    tab = context.new_page()
    try:
        tab.goto(url(site, "#/runs"))
        tab.wait_for_selector("#key-form")
        assert tab.locator("#runs").count() == 0 and site["runs"][0] not in tab.content()
        shot(tab, shots, "00-key-prompt")
        tab.fill("#api-key", "sk-wrong")
        tab.click("#key-form button[type=submit]")
        tab.wait_for_selector("#key-form >> text=That key was refused")
        tab.fill("#api-key", site["key"])
        tab.click("#key-form button[type=submit]")
        tab.wait_for_selector("#runs tbody tr")
        assert tab.evaluate("sessionStorage.getItem('tunesmith-key')") == site["key"]
        assert tab.locator("#runs").inner_text().count(site["runs"][0]) == 1
    finally:
        context.close()


# ---------------------------------------------------------------- runs


def test_runs_table_lists_both_runs_and_filters_and_sorts(page, site, shots):
    run_a, run_b = site["runs"]
    open_page(page, site, "#/runs", "#runs tbody tr")
    rows = page.locator("#runs tbody tr")
    assert rows.count() == 2
    text = page.locator("#runs").inner_text()
    assert site["api"].base in text and "lora" in text and "tickets@" in text
    assert "exact_match" in text  # the evaluated run's key metric
    shot(page, shots, "01-runs")
    page.fill("#filter", run_a)
    assert rows.count() == 1 and run_a in rows.first.inner_text()
    page.fill("#filter", "")
    page.click("th[data-sort=best_val_loss]")
    first = rows.first.get_attribute("data-id")
    page.click("th[data-sort=best_val_loss]")
    assert rows.first.get_attribute("data-id") != first
    assert not page.errors


def test_run_page_draws_every_logged_step_of_the_loss(page, site, shots):
    run_b = site["runs"][1]
    open_page(page, site, f"#/run/{run_b}", "#loss-chart")
    records = read_metrics(site["home"] / "runs" / run_b)
    steps = [r for r in records if "loss" in r]
    validations = [r for r in records if "val_loss" in r]
    assert page.locator("#loss-chart circle[data-series=train]").count() == len(steps) > 1
    assert page.locator("#loss-chart circle[data-series=validation]").count() == len(validations) >= 1
    assert page.locator("#status").inner_text() == "completed"
    estimate = page.locator("#estimate-vs-actual").inner_text()
    assert f"optimizer steps\t{steps[-1]['step']}\t{steps[-1]['step']}" in estimate  # estimated before, taken in fact
    assert "model:" in page.locator("#config").inner_text()
    shot(page, shots, "02-run")
    assert not page.errors


# ---------------------------------------------------------------- start a job from the browser


def test_start_a_job_from_the_browser_see_the_estimate_then_watch_it_succeed(page, site, shots):
    upload = training_file(site["root"], 20, name="browser-upload.jsonl")
    open_page(page, site, "#/new", "#estimate-button")
    page.set_input_files("#upload", str(upload))
    page.click("#upload-button")
    page.wait_for_selector("#training-file option:has-text('browser-upload.jsonl')", state="attached")
    page.select_option("#base-model", site["api"].base)
    page.fill("#epochs", "1")
    page.fill("#batch-size", "4")
    page.fill("#price", "2.5")
    page.uncheck("#evaluate")
    assert page.is_disabled("#start")  # nothing starts before the estimate is seen
    page.click("#estimate-button")
    page.wait_for_selector("#estimate-title", timeout=60_000)
    estimate = page.locator("#estimate").inner_text()
    assert "time" in estimate and "peak memory" in estimate and "MiB" in estimate and "optimizer steps" in estimate
    assert "give a price" not in estimate  # a cost, at 2.5 an hour
    shot(page, shots, "03-new-job-estimate")
    page.click("#start")
    page.wait_for_url("**/#/run/ftjob-*")
    cancel_a_waiting_job(page, site, shots, page.url.rsplit("/", 1)[1])
    page.wait_for_selector("#status [data-status=succeeded]", timeout=90_000)
    assert page.locator("#loss-chart circle[data-series=train]").count() >= 1
    assert "The job has successfully completed" in page.locator("#events").inner_text()
    shot(page, shots, "05-job-succeeded")
    job = call(site, f"v1/fine_tuning/jobs/{page.url.rsplit('/', 1)[1]}")
    assert job["status"] == "succeeded" and job["hyperparameters"]["n_epochs"] == 1 and job["budget"] == {"price_per_hour": 2.5}
    assert page.is_disabled("#cancel") and page.is_disabled("#resume")
    assert not page.errors


def call(site, path: str, body: dict | None = None) -> dict:
    """One API request with the key, as any client would make it."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {site['key']}", "Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url(site, path), data=data, headers=headers)) as answer:
        return json.loads(answer.read())


def cancel_a_waiting_job(page, site, shots, running: str) -> None:
    """While the browser's job holds the one worker slot, a second job waits: its page's Cancel button
    cancels it through the API (at once: it never started)."""
    first = call(site, f"v1/fine_tuning/jobs/{running}")
    waiting = call(site, "v1/fine_tuning/jobs", {"model": site["api"].base, "training_file": first["training_file"], "hyperparameters": {"n_epochs": 50}})
    tab = page.context.new_page()
    try:
        tab.goto(url(site, f"#/run/{waiting['id']}"))
        tab.wait_for_selector("#cancel:not([disabled])")
        assert tab.is_disabled("#resume") and tab.is_disabled("#pause")  # only a paused job resumes, only a running one pauses
        tab.click("#cancel")
        tab.wait_for_selector("#status [data-status=cancelled]")
        assert "The job was cancelled." in tab.locator("#events").inner_text()
        shot(tab, shots, "04-job-cancelled")
    finally:
        tab.close()
    assert call(site, f"v1/fine_tuning/jobs/{waiting['id']}")["status"] == "cancelled"


# ---------------------------------------------------------------- datasets, escaping


def test_dataset_page_shows_splits_histogram_and_escapes_a_script_in_an_example(page, site, shots):
    open_page(page, site, "#/datasets", "#datasets tbody tr")
    listed = page.locator("#datasets").inner_text()
    assert "tickets" in listed and "risky" in listed
    shot(page, shots, "06-datasets")
    open_page(page, site, "#/dataset/risky", "#sample .example")
    sample = page.locator("#sample").inner_text()
    assert PAYLOAD in sample  # shown as the text it is
    assert page.locator("#view script, #view img").count() == 0
    assert page.evaluate("window.__pwned === undefined")
    assert page.locator("#token-histogram rect.bar").count() >= 1
    manifest = json.loads((site["home"] / "datasets" / "risky" / "manifest.json").read_text())
    assert f"train\n{manifest['counts']['train']}" in page.locator("table.kv").first.inner_text().replace("\t", "\n")
    shot(page, shots, "07-dataset")
    assert not page.errors


# ---------------------------------------------------------------- evaluation and compare


def test_evaluation_page_shows_intervals_side_by_side_examples_and_forgetting(page, site, shots):
    run_b = site["runs"][1]
    open_page(page, site, f"#/eval/{run_b}", "#metrics")
    table = page.locator("#metrics").inner_text()
    assert "exact_match" in table and "[" in table  # mean [low, high]
    assert page.locator("#metric-bars rect.bar").count() >= 2
    assert page.locator(".pair").count() >= 1  # examples that changed, base beside tuned
    assert page.locator("#forgetting").is_visible()
    assert "tuned vs base" in page.locator("#view").inner_text()
    shot(page, shots, "08-evaluation")
    assert not page.errors


def test_compare_two_runs_on_the_same_split(page, site, shots):
    run_a, run_b = site["runs"]
    open_page(page, site, "#/runs", "#runs tbody tr")
    for run in (run_a, run_b):
        page.check(f"tr[data-id='{run}'] input.pick")
    page.click("#compare-selected")
    page.wait_for_selector("#compare")
    header = page.locator("#compare thead").inner_text()
    assert run_a in header and run_b in header
    assert "Same examples" in page.locator("#view").inner_text()
    assert page.locator("#compare-loss g.series").count() == 2
    shot(page, shots, "09-compare")
    assert not page.errors


# ---------------------------------------------------------------- playground, alerts


def test_playground_chats_with_two_models_side_by_side(page, site, shots):
    run_b = site["runs"][1]
    open_page(page, site, "#/playground", "#model-0")
    page.select_option("#model-0", site["api"].base)
    page.select_option("#model-1", run_b)
    page.fill("#max-tokens", "6")
    page.fill("#prompt", "my invoice is wrong")
    page.click("#send")
    for pane in ("#chat-0", "#chat-1"):
        page.wait_for_selector(f"{pane} .answer", timeout=60_000)
        assert "my invoice is wrong" in page.locator(pane).inner_text()
        assert page.locator(f"{pane} .error").count() == 0
    shot(page, shots, "10-playground")
    assert not page.errors


def test_alerts_from_the_monitor_are_listed_escaped(page, site, shots):
    folder = site["home"] / "monitor"
    folder.mkdir(exist_ok=True)
    alert = {
        "id": "alert-1",
        "time": time.time(),
        "model": "ft:tiny:support:1234",
        "run_id": site["runs"][1],
        "check": "refusal_rate",
        "status": "alert",
        "value": 0.31,
        "baseline": 0.05,
        "threshold": 0.15,
        "window": {"since": time.time() - 3600, "until": time.time()},
        "request_ids": ["req-1", "req-2"],
        "examples": [{"id": "req-1", "prompt": PAYLOAD, "answer": "I cannot help with that.", "why": "refusal"}],
        "message": "refusal rate 31% against 5% in the baseline",
    }
    (folder / "alerts.jsonl").write_text(json.dumps(alert) + "\n{not json\n", encoding="utf-8")
    open_page(page, site, "#/alerts", "#alerts .alert-row")
    assert page.locator("#alerts .alert-row").count() == 1
    page.click("#alerts summary")
    assert PAYLOAD in page.locator("#alerts").inner_text() and page.evaluate("window.__pwned === undefined")
    assert "refusal rate 31%" in page.locator("#alerts").inner_text()
    shot(page, shots, "11-alerts")
    assert not page.errors
