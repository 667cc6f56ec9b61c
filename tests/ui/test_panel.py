"""The Launch panel in a real JupyterLab and Chromium: queues and jobs live, job logs streaming, cancel, the submit
dialog (parameters, server errors), opening the executed notebook, and both themes."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from .conftest import command_job, open_launch_panel, screenshot_dir, wait_for_job

SLOW_TICKS = "import time\nfor i in range(600):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.1)"


def test_panel_lists_queues_and_jobs_live(page, lab):
    status, _ = lab.api("POST", "queues", {"yaml": "queue_name: held\nprovider:\n  type: local\n  max_instances: 2\n"})
    assert status in (201, 409)
    panel = open_launch_panel(page)

    default = panel.locator(".jp-LaunchQueue[data-queue='default']")
    expect(default.locator(".jp-LaunchQueue-backend")).to_have_text("local")
    expect(default.locator(".jp-LaunchQueue-agents")).to_have_text(re.compile(r"1 agent"))
    held = panel.locator(".jp-LaunchQueue[data-queue='held']")
    expect(held.locator(".jp-LaunchQueue-counts")).to_have_text(re.compile(r"0/2 running"))
    expect(held.locator(".jp-LaunchQueue-agents")).to_have_text("no agent")

    # Keyboard: focus the queue and expand it with Enter.
    toggle = held.locator(".jp-LaunchQueue-toggle")
    toggle.focus()
    page.keyboard.press("Enter")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(held.locator(".jp-LaunchJobs-empty")).to_be_visible()

    # A job submitted elsewhere appears without a reload, with the reason it waits.
    status, job = lab.api("POST", "jobs", {"queue": "held", "spec": command_job("print(1)", name="waits-for-agent")})
    assert status == 201, job
    row = held.locator(f".jp-LaunchJobRow[data-job-id='{job['id']}']")
    expect(row).to_be_visible(timeout=5000)
    expect(row.locator(".jp-LaunchState")).to_have_text("queued")
    expect(row.locator(".jp-LaunchJobRow-reason")).to_contain_text("no agent is serving this queue")
    expect(held.locator(".jp-LaunchQueue-counts")).to_have_text(re.compile(r"1 queued"))

    page.locator("#jupyter-launch-panel").screenshot(path=str(screenshot_dir() / "panel-sidebar.png"))
    page.screenshot(path=str(screenshot_dir() / "panel.png"))
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
    page.wait_for_timeout(500)
    page.screenshot(path=str(screenshot_dir() / "panel-dark.png"))
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'")
    lab.api("POST", f"jobs/{job['id']}/cancel")


def test_job_log_streams_live_and_cancel_changes_state(page, lab):
    status, job = lab.api("POST", "jobs", {"queue": "default", "spec": command_job(SLOW_TICKS, name="ticker")})
    assert status == 201, job
    panel = open_launch_panel(page)
    queue = panel.locator(".jp-LaunchQueue[data-queue='default']")
    toggle = queue.locator(".jp-LaunchQueue-toggle")
    if toggle.get_attribute("aria-expanded") != "true":
        toggle.click()
    queue.locator(f".jp-LaunchJobRow[data-job-id='{job['id']}'] button").click()

    view = page.locator(f"#jp-launch-job-{job['id']}")
    expect(view).to_be_visible()
    rows = view.locator(".jp-LaunchLog-row")
    # Lines keep arriving while the job runs: tick 3, then a later one, with no reload.
    expect(rows.filter(has_text=re.compile(r"^tick 3$"))).to_have_count(1, timeout=20_000)
    expect(view.locator(".jp-LaunchJob-titleRow .jp-LaunchState")).to_have_text("running")
    expect(rows.filter(has_text=re.compile(r"^tick 12$"))).to_have_count(1, timeout=10_000)

    # Search finds a line, pauses following, and following resumes from the button.
    view.locator(".jp-LaunchLog-search").fill("tick 5")
    expect(view.locator(".jp-LaunchLog-matches")).to_have_text(re.compile(r"1 of \d+"))
    expect(view.locator(".jp-LaunchLog-follow")).to_have_attribute("aria-pressed", "false")
    view.locator(".jp-LaunchLog-search").fill("")
    view.locator(".jp-LaunchLog-follow").click()
    expect(view.locator(".jp-LaunchLog-follow")).to_have_attribute("aria-pressed", "true")
    page.screenshot(path=str(screenshot_dir() / "panel-job.png"))

    view.locator(".jp-LaunchJob-cancel").click()
    expect(view.locator(".jp-LaunchJob-titleRow .jp-LaunchState")).to_have_text("cancelled", timeout=20_000)
    expect(view.locator(".jp-LaunchJob-cancel")).to_be_disabled()
    row = queue.locator(f".jp-LaunchJobRow[data-job-id='{job['id']}'] .jp-LaunchState")
    expect(row).to_have_text("cancelled", timeout=5000)
    assert wait_for_job(lab, job["id"], ("cancelled",))["state"] == "cancelled"
