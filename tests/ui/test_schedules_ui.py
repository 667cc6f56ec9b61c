"""Schedules and priority in a real JupyterLab and Chromium: "Run on a schedule" and "Priority" in the submit dialog,
the panel's schedules list (next run, pause, resume, delete), and the dialog's errors for a bad schedule."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from .conftest import open_launch_panel, screenshot_dir
from .test_dialog import launch_dialog, open_notebook, submit


def schedules(lab) -> list[dict]:
    status, body = lab.api("GET", "schedules")
    assert status == 200, body
    return body["schedules"]


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
    assert created["spec"]["parameters"] == {"greeting": "hello", "count": 3}

    panel = open_launch_panel(page)
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
