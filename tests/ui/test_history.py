"""The panel's History view in a real JupyterLab and Chromium: filters, search and sort answered by the server, row
actions (cancel, archive, delete), the log download, a server that stops answering, and the file browser's menu
submitting the notebook right-clicked."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from playwright.sync_api import expect

from .conftest import PARAMS_NOTEBOOK, command_job, open_launch_panel, screenshot_dir, wait_for_job


def open_history(page: Any) -> Any:
    panel = open_launch_panel(page)
    panel.locator(".jp-LaunchPanel-tab[data-view='history']").click()
    history = panel.locator(".jp-LaunchHistory")
    expect(history).to_be_visible()
    return history


def row_names(history: Any) -> list[str]:
    return history.locator(".jp-LaunchHistory-row .jp-LaunchJobRow-title").all_text_contents()


def test_history_filters_searches_sorts_and_acts_on_rows(page, lab, request):
    queue = f"hist-{secrets.token_hex(3)}"
    status, _ = lab.api("POST", "queues", {"queue_name": queue})  # no agent: its jobs wait
    assert status == 201
    request.addfinalizer(lambda: lab.api("DELETE", f"queues/{queue}?force=true"))  # the lab is the session's
    ids = {}
    for name in ("train resnet", "eval resnet", "train vit"):
        status, job = lab.api("POST", "jobs", {"queue": queue, "spec": command_job("print(1)", name=name,
                                                                                   resources={"cpu": 2})})
        assert status == 201, job
        ids[name] = job["id"]
    lab.api("POST", f"jobs/{ids['eval resnet']}/cancel")

    history = open_history(page)
    history.locator(".jp-LaunchHistory-queue").select_option(queue)
    expect(history.locator(".jp-LaunchHistory-row")).to_have_count(3)
    # The owner by name (the server's user: its token acts as that user, not as a new 32-hex anonymous one); the
    # resources asked for.
    meta = history.locator(f".jp-LaunchHistory-row[data-job-id='{ids['train vit']}'] .jp-LaunchJobRow-meta")
    assert len(job["owner_name"]) < 32, job
    expect(meta).to_contain_text(job["owner_name"])
    expect(meta).to_contain_text("2 CPUs")
    assert row_names(history) == ["train vit", "eval resnet", "train resnet"]  # newest first

    history.locator(".jp-LaunchHistory-search").fill("TRAIN")
    expect(history.locator(".jp-LaunchHistory-row")).to_have_count(2)
    history.locator(".jp-LaunchHistory-sortButton[data-sort='name']").click()
    expect(history.locator(".jp-LaunchHistory-row").first).to_contain_text("train resnet")
    history.locator(".jp-LaunchHistory-sortButton[data-sort='name']").click()  # again: descending
    expect(history.locator(".jp-LaunchHistory-sortButton[data-sort='name']")).to_have_text("Name ↓")
    expect(history.locator(".jp-LaunchHistory-row").first).to_contain_text("train vit")

    # Cancel from the row.
    vit = history.locator(f".jp-LaunchHistory-row[data-job-id='{ids['train vit']}']")
    vit.locator(".jp-mod-cancel").click()
    expect(vit.locator(".jp-LaunchState")).to_have_text("cancelled")
    assert wait_for_job(lab, ids["train vit"], ("cancelled",))["state"] == "cancelled"

    history.locator(".jp-LaunchHistory-search").fill("")
    history.locator(".jp-LaunchHistory-state").select_option("cancelled")
    expect(history.locator(".jp-LaunchHistory-row[data-state='cancelled']")).to_have_count(2)
    expect(history.locator(".jp-LaunchHistory-row")).to_have_count(2)
    page.locator("#jupyter-launch-panel").screenshot(path=str(screenshot_dir() / "panel-history.png"))
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
    page.wait_for_timeout(500)
    page.locator("#jupyter-launch-panel").screenshot(path=str(screenshot_dir() / "panel-history-dark.png"))
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'")

    # Archive hides a row (kept, listed under "Archived only"); Delete asks, then removes the job for good.
    evaluation = history.locator(f".jp-LaunchHistory-row[data-job-id='{ids['eval resnet']}']")
    evaluation.locator(".jp-mod-archive").click()
    expect(history.locator(".jp-LaunchHistory-row")).to_have_count(1)
    history.locator(".jp-LaunchHistory-archived").check()
    expect(history.locator(".jp-LaunchHistory-row")).to_have_count(1)
    expect(evaluation.locator(".jp-LaunchJobRow-meta")).to_contain_text("archived")
    evaluation.locator(".jp-mod-delete").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("cannot be undone")
    dialog.locator(".jp-Dialog-button.jp-mod-warn").click()
    expect(history.locator(".jp-LaunchHistory-row")).to_have_count(0)
    status, body = lab.api("GET", f"jobs/{ids['eval resnet']}")
    assert status == 404, body


def test_the_panel_waits_quietly_for_a_server_that_stops_answering(page, lab):
    panel = open_launch_panel(page)
    expect(panel.locator(".jp-LaunchQueue[data-queue='default']")).to_be_visible()
    page.route("**/launch/api/**", lambda route: route.abort())  # as a stopped server looks to the browser
    banner = panel.locator(".jp-LaunchPanel-connection")
    expect(banner).to_have_text("Disconnected from the Jupyter server; retrying…", timeout=10_000)
    expect(panel.locator(".jp-LaunchQueue[data-queue='default']")).to_be_visible()  # the last rows stay
    expect(panel.locator(".jp-LaunchPanel-status.jp-mod-error")).to_have_count(0)
    page.unroute("**/launch/api/**")
    expect(banner).to_be_hidden(timeout=15_000)


def test_the_log_downloads_whole_as_text(page, lab):
    code = "for i in range(3000):\n    print(f'line {i}')"
    status, job = lab.api("POST", "jobs", {"queue": "default", "spec": command_job(code, name="many-lines")})
    assert status == 201, job
    wait_for_job(lab, job["id"], ("succeeded",))
    page.evaluate("id => window.jupyterapp.commands.execute('jupyter-launch:open-job', {id})", job["id"])
    view = page.locator(f"#jp-launch-job-{job['id']}")
    with page.expect_download() as download:
        view.locator(".jp-LaunchJob-downloadLog").click()
    assert download.value.suggested_filename == f"{job['id']}.log"
    with open(download.value.path(), encoding="utf-8") as saved:
        text = saved.read()
    assert text == "".join(f"line {i}\n" for i in range(3000))


def test_the_file_browser_menu_submits_the_notebook_right_clicked(page, lab):
    (lab.root / "other.ipynb").write_text(json.dumps(PARAMS_NOTEBOOK))
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:open', {path: 'params.ipynb'})")
    expect(page.locator(".jp-NotebookPanel").filter(visible=True).locator(".jp-Cell")).to_have_count(
        len(PARAMS_NOTEBOOK["cells"]))
    page.evaluate("() => window.jupyterapp.commands.execute('filebrowser:activate')")
    item = page.locator(".jp-DirListing-item[title*='other.ipynb']")
    item.click(button="right")
    page.locator(".lm-Menu-item", has_text=re.compile(r"^Launch Notebook on a Queue")).click()
    dialog = page.locator(".jp-LaunchSubmitDialog")
    expect(dialog.locator("input[name='notebook']")).to_have_value("other.ipynb")
    # Each resource field shows its whole placeholder ("e.g. 2 or 500m" was cut off, three to a row).
    cut = page.evaluate("""() => [...document.querySelectorAll('.jp-LaunchSubmit-resources input')].map(i => {
        const style = getComputedStyle(i);
        const ctx = document.createElement('canvas').getContext('2d');
        ctx.font = `${style.fontSize} ${style.fontFamily}`;
        const room = i.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        return [i.name, i.placeholder, Math.ceil(ctx.measureText(i.placeholder).width), Math.floor(room)];
    }).filter(([, , need, room]) => need > room)""")
    assert cut == [], cut
    dialog.locator(".jp-Dialog-button.jp-mod-reject").click()


def test_a_rerun_takes_over_its_jobs_tab_and_an_ended_job_is_announced(page, lab):
    status, job = lab.api("POST", "jobs", {"queue": "default", "spec": command_job("print('once')", name="announced")})
    assert status == 201, job
    wait_for_job(lab, job["id"], ("succeeded",))
    page.evaluate("id => window.jupyterapp.commands.execute('jupyter-launch:open-job', {id})", job["id"])
    view = page.locator(f"#jp-launch-job-{job['id']}")
    expect(view.locator(".jp-LaunchJob-titleRow .jp-LaunchState")).to_have_text("succeeded")
    tabs = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab")
    count = tabs.count()

    view.locator(".jp-LaunchJob-rerun").click()
    expect(page.locator(f"#jp-launch-job-{job['id']}")).to_have_count(0)  # its tab was taken over
    rerun = page.locator(".jp-LaunchJob").filter(visible=True)
    expect(rerun).to_have_count(1)
    rerun_id = rerun.get_attribute("id").removeprefix("jp-launch-job-")
    assert rerun_id != job["id"]
    expect(tabs).to_have_count(count)

    # The rerun ends: Lab's notification center says so, with a button that opens it.
    toast = page.locator(".Toastify__toast", has_text="announced succeeded")
    expect(toast).to_be_visible(timeout=20_000)
    expect(toast.get_by_role("button", name="Open")).to_be_visible()
    assert wait_for_job(lab, rerun_id, ("succeeded",))["rerun_of"] == job["id"]


def test_the_metrics_of_picked_jobs_are_compared_on_one_chart(page, lab):
    ids = []
    for name, scale in (("lr 0.1", 1.0), ("lr 0.01", 3.0)):
        code = ("import jupyter_launch\n"
                f"for i in range(20):\n    jupyter_launch.log({{'loss': {scale} / (i + 1)}}, step=i)")
        status, job = lab.api("POST", "jobs", {"queue": "default", "spec": command_job(code, name=name)})
        assert status == 201, job
        ids.append(job["id"])
    for job_id in ids:
        wait_for_job(lab, job_id, ("succeeded",))
    history = open_history(page)
    history.locator(".jp-LaunchHistory-search").fill("lr 0.")
    expect(history.locator(".jp-LaunchHistory-row")).to_have_count(2)
    for job_id in ids:
        history.locator(f".jp-LaunchHistory-row[data-job-id='{job_id}'] .jp-LaunchHistory-pick").check()
    history.locator(".jp-LaunchHistory-compare").click()
    view = page.locator("#jp-launch-compare")
    chart = view.locator(".jp-LaunchCompare-chart[data-key='loss']")
    expect(chart.locator("polyline")).to_have_count(2)
    assert sorted(chart.locator("polyline").evaluate_all("ps => ps.map(p => p.dataset.jobId)")) == sorted(ids)
    expect(view.locator(".jp-LaunchCompare-legend li")).to_have_text(
        [re.compile(r"^lr 0\.1 · "), re.compile(r"^lr 0\.01 · ")], ignore_case=False)
    expect(chart.locator("svg")).to_have_attribute("aria-label", re.compile(r"^loss of 2 runs: "))
    view.screenshot(path=str(screenshot_dir() / "panel-compare.png"))
