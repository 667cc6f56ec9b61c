"""Schedules and priority in a real JupyterLab and Chromium: "Run on a schedule" and "Priority" in the submit dialog,
the panel's schedules list (next run, pause, resume, delete), and the dialog's errors for a bad schedule."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from playwright.sync_api import expect

from .conftest import command_job, open_launch_panel, screenshot_dir, wait_for_job
from .test_dialog import launch_dialog, open_notebook, submit


NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def schedules(lab) -> list[dict]:
    status, body = lab.api("GET", "schedules")
    assert status == 200, body
    return body["schedules"]


def saved_parameters(path: Path) -> dict:
    """The values the notebook's saved ``parameters`` cell assigns."""
    cells = json.loads(path.read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse("".join(cell["source"])).body}


def test_run_on_a_schedule_from_the_dialog_then_pause_resume_and_delete_it_in_the_panel(page, lab):
    before = {s["id"] for s in schedules(lab)}
    notebook = open_notebook(page, "params.ipynb")
    dialog = launch_dialog(page, notebook)
    expect(dialog.locator("[data-field=cron]")).to_be_hidden()
    dialog.locator("[data-field=priority] input").fill("4")
    dialog.locator("[data-field=scheduled] input").check()
    dialog.locator("[data-field=cron] input").fill("0 6 * * mon-fri")
    dialog.locator("[data-field=tz] input").fill("Europe/Berlin")
    dialog.screenshot(path=str(screenshot_dir() / "panel-dialog-schedule.png"))
    submit(dialog)
    expect(dialog).to_have_count(0)

    [created] = [s for s in schedules(lab) if s["id"] not in before]
    assert (created["name"], created["cron"], created["tz"], created["spec"]["priority"]) == (
        "params", "0 6 * * mon-fri", "Europe/Berlin", 4)
    # The notebook's own parameters cell as saved (the dialog tests before this one edit and save it).
    assert created["spec"]["parameters"] == saved_parameters(lab.root / "params.ipynb")
    assert set(created["spec"]["parameters"]) == {"greeting", "count"}

    panel = open_launch_panel(page)
    panel.locator(".jp-LaunchPanel-tab[data-view='schedules']").click()
    row = panel.locator(f".jp-LaunchSchedule[data-schedule='{created['id']}']")
    expect(row.locator(".jp-LaunchSchedule-name")).to_have_text("params")
    expect(row.locator(".jp-LaunchSchedule-when")).to_have_text("0 6 * * mon-fri (Europe/Berlin) · default")
    expect(row.locator(".jp-LaunchSchedule-next")).to_have_text(re.compile(r"^next .*6:00"))
    page.locator("#jupyter-launch-panel").screenshot(path=str(screenshot_dir() / "panel-schedules.png"))

    row.get_by_role("button", name="Pause schedule params").click()
    expect(row.locator(".jp-LaunchSchedule-next")).to_have_text("paused")
    assert [s["paused"] for s in schedules(lab) if s["id"] == created["id"]] == [True]
    row.get_by_role("button", name="Resume schedule params").click()
    expect(row.locator(".jp-LaunchSchedule-next")).to_have_text(re.compile(r"^next "))
    assert [s["paused"] for s in schedules(lab) if s["id"] == created["id"]] == [False]
    row.get_by_role("button", name="Delete schedule params").click()
    expect(row).to_have_count(0)
    panel.locator(".jp-LaunchPanel-tab[data-view='queues']").click()
    assert created["id"] not in {s["id"] for s in schedules(lab)}


def test_a_bad_schedule_or_priority_is_shown_in_the_dialog_naming_the_field(page, lab):
    before = len(schedules(lab))
    notebook = open_notebook(page, "params.ipynb")
    dialog = launch_dialog(page, notebook)
    error = dialog.locator(".jp-LaunchSubmit-error")
    dialog.locator("[data-field=scheduled] input").check()
    dialog.locator("[data-field=cron] input").fill("0 6 * *")
    submit(dialog)
    expect(error).to_contain_text("Cron needs five fields")
    expect(dialog.locator("[data-field=cron] input")).to_have_attribute("aria-invalid", "true")
    dialog.locator("[data-field=cron] input").fill("0 25 * * *")  # five fields: the server names the bad one
    submit(dialog)
    expect(error).to_contain_text("cron: hour: 25 is out of range (0-23)")
    dialog.locator("[data-field=cron] input").fill("0 6 * * *")
    dialog.locator("[data-field=priority] input").fill("5000")
    submit(dialog)
    expect(error).to_contain_text("Priority must be a whole number from -1000 to 1000")
    expect(dialog.locator("[data-field=priority] input")).to_have_attribute("aria-invalid", "true")
    assert len(schedules(lab)) == before
    dialog.locator(".jp-Dialog-button.jp-mod-reject").click()


def test_a_sweeps_view_shows_its_children_best_first_with_their_metrics_overlaid(page, lab):
    (lab.root / "sweep.ipynb").write_bytes((NOTEBOOKS / "sweep.ipynb").read_bytes())
    status, sweep = lab.api("POST", "sweeps", {"notebook": "sweep.ipynb", "sweep": {
        "parameters": {"lr": {"values": [0.5, 0.1, 0.3]}, "epochs": {"value": 3}},
        "metric": {"name": "loss", "goal": "minimize"}, "max_parallel": 2, "name": "ui-sweep"}})
    assert status == 201, sweep
    status, page_of_jobs = lab.api("GET", f"jobs?parent={sweep['id']}")
    children = page_of_jobs["jobs"]
    assert len(children) == 3
    for child in children:
        wait_for_job(lab, child["id"], ("succeeded",), timeout=120)

    panel = open_launch_panel(page)
    queue = panel.locator(".jp-LaunchQueue[data-queue='default']")
    toggle = queue.locator(".jp-LaunchQueue-toggle")
    if toggle.get_attribute("aria-expanded") != "true":
        toggle.click()
    row = queue.locator(f".jp-LaunchJobRow[data-job-id='{children[0]['id']}']")
    row.get_by_role("button", name=re.compile("Open the sweep of job")).click()
    view = page.locator(f"#jp-launch-sweep-{sweep['id']}")
    expect(view.locator(".jp-LaunchSweep-status")).to_contain_text("3 job(s), at most 2 at once, ranked by loss "
                                                                   "(minimize): 3 succeeded")
    rows = view.locator(".jp-LaunchSweep-row")
    expect(rows).to_have_count(3)
    expect(view.locator("th")).to_have_text(["Job", "lr", "epochs", "State", "loss", "accuracy"])
    expect(rows.nth(0).locator("td")).to_have_text(["ui-sweep-2", "0.1", "3", "succeeded", "0.3", "0.9"])
    expect(rows.nth(2).locator("td").nth(1)).to_have_text("0.5")
    chart = view.locator(".jp-LaunchSweep-chart[data-metric='loss']")
    expect(chart.locator(".jp-LaunchSweep-series")).to_have_count(3)
    view.screenshot(path=str(screenshot_dir() / "panel-sweep.png"))


def test_move_to_front_on_a_queued_row(page, lab):
    status, _ = lab.api("POST", "queues", {"queue_name": "parked"})
    assert status in (201, 409)
    ids = []
    for i in range(3):
        status, job = lab.api("POST", "jobs", {"queue": "parked", "spec": command_job("pass", name=f"parked-{i}")})
        ids.append(job["id"])
    panel = open_launch_panel(page)
    queue = panel.locator(".jp-LaunchQueue[data-queue='parked']")
    toggle = queue.locator(".jp-LaunchQueue-toggle")
    if toggle.get_attribute("aria-expanded") != "true":
        toggle.click()
    last = queue.locator(f".jp-LaunchJobRow[data-job-id='{ids[2]}']")
    expect(last.locator(".jp-LaunchJobRow-reason")).to_contain_text("2 job(s) ahead of it", timeout=10_000)
    last.get_by_role("button", name="Move job parked-2 to the front").click()
    expect(last.locator(".jp-LaunchJobRow-reason")).not_to_contain_text("ahead of it", timeout=10_000)
    _, moved = lab.api("GET", f"jobs/{ids[2]}")
    assert moved["priority"] == 1, moved
    for job_id in ids:
        lab.api("POST", f"jobs/{job_id}/cancel")
