"""The submit dialog in a real JupyterLab and Chromium: launching a notebook from its toolbar with parameters read
from its `parameters` cell, the server's refusals shown in the dialog, and opening a job's executed notebook."""

from __future__ import annotations

import json
import re
from typing import Any

from playwright.sync_api import expect

from .conftest import PARAMS_NOTEBOOK, Lab, screenshot_dir, wait_for_job


def open_notebook(page: Any, path: str) -> Any:
    """Open ``path`` in the notebook editor; returns its panel once the cells are drawn."""
    page.evaluate("path => window.jupyterapp.commands.execute('docmanager:open', {path})", path)
    panel = page.locator(".jp-NotebookPanel").filter(visible=True)
    expect(panel.locator(".jp-Cell")).to_have_count(len(PARAMS_NOTEBOOK["cells"]))
    return panel


def launch_dialog(page: Any, notebook: Any) -> Any:
    """Click the notebook's "Launch" toolbar button; returns the submit dialog."""
    notebook.locator(".jp-LaunchToolbarButton").click()
    dialog = page.locator(".jp-LaunchSubmitDialog")
    expect(dialog.locator(".jp-LaunchSubmit")).to_be_visible()
    return dialog


def submit(dialog: Any) -> None:
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()


def parameter_rows(dialog: Any) -> list[tuple[str, str]]:
    rows = dialog.locator(".jp-LaunchSubmit-param")
    return [(r.locator("input").nth(0).input_value(), r.locator("input").nth(1).input_value()) for r in rows.all()]


def job_count(lab: Lab) -> int:
    status, page = lab.api("GET", "jobs?limit=500")
    assert status == 200, page
    return len(page["jobs"])


def opened_job_id(page: Any) -> str:
    view = page.locator(".jp-LaunchJob").filter(visible=True)
    expect(view).to_have_count(1)
    return view.get_attribute("id").removeprefix("jp-launch-job-")


def test_toolbar_launch_prefills_parameters_saves_and_runs_the_notebook(page, lab):
    notebook = open_notebook(page, "params.ipynb")
    # An unsaved edit to the parameters cell: the dialog reads the editor, and Launch saves it before sending.
    page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.model.sharedModel.cells[1]
                              .setSource('greeting = "hello"\\ncount = 2')""")
    tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="params.ipynb")
    expect(tab).to_have_class(re.compile(r"\bjp-mod-dirty\b"))
    (lab.root / "beside.csv").write_text("a,b\n1,2\n")  # a file beside the notebook travels with the job
    dialog = launch_dialog(page, notebook)

    expect(dialog.locator("[data-field=notebook] input")).to_have_value("params.ipynb")
    assert parameter_rows(dialog) == [("greeting", '"hello"'), ("count", "2")]
    dialog.get_by_label("Value of greeting").fill('"bonjour"')
    dialog.locator("[data-field=queue] select").select_option("default")
    dialog.screenshot(path=str(screenshot_dir() / "panel-dialog.png"))
    submit(dialog)
    expect(dialog).to_have_count(0)
    expect(tab).not_to_have_class(re.compile(r"\bjp-mod-dirty\b"))

    job_id = opened_job_id(page)
    view = page.locator(f"#jp-launch-job-{job_id}")
    rows = view.locator(".jp-LaunchLog-row")
    expect(rows.filter(has_text=re.compile(r"^bonjour 1$"))).to_have_count(1, timeout=60_000)
    expect(view.locator(".jp-LaunchJob-titleRow .jp-LaunchState")).to_have_text("succeeded", timeout=30_000)
    expect(rows.filter(has_text=re.compile(r"^bonjour \d$"))).to_have_count(2)

    job = wait_for_job(lab, job_id, ("succeeded",))
    assert job["queue"] == "default"
    assert job["spec"]["kind"] == "notebook"
    assert job["spec"]["parameters"] == {"greeting": "bonjour", "count": 2}
    # The server packaged the notebook's folder as the CLI would: its neighbours and its kernel travel with it.
    status, manifest = lab.api("GET", f"artifacts/blobs/{job['artifact']}")
    assert status == 200 and {"params.ipynb", "beside.csv"} <= set(manifest["files"]), manifest
    assert manifest["environment"]["kernel"] == PARAMS_NOTEBOOK["metadata"]["kernelspec"]["name"]
    saved = json.loads((lab.root / "params.ipynb").read_text())
    assert "".join(saved["cells"][1]["source"]) == 'greeting = "hello"\ncount = 2'


def test_dialog_shows_refusals_and_creates_no_job(page, lab, request):
    for name, extra in (("typed", "job_types: [train]\n"), ("doomed", "")):
        status, body = lab.api("POST", "queues", {"yaml": f"queue_name: {name}\n{extra}provider:\n  type: local\n"})
        assert status in (201, 409), body
    request.addfinalizer(lambda: lab.api("DELETE", "queues/typed?force=true"))
    before = job_count(lab)
    dialog = launch_dialog(page, open_notebook(page, "params.ipynb"))
    error = dialog.locator(".jp-LaunchSubmit-error")
    memory = dialog.locator("[data-field=memory] input")

    # Checked in the form: no request goes.
    memory.fill("lots")
    submit(dialog)
    expect(error).to_have_text('Memory must be a size like 8Gi or 512Mi, not "lots".')
    expect(memory).to_have_attribute("aria-invalid", "true")

    # Invalid resources the server refuses.
    memory.fill("0")
    submit(dialog)
    expect(error).to_have_text("params.ipynb: resources.memory: memory must be positive, got '0'")
    expect(error).to_be_in_viewport()

    # A job type the queue does not accept.
    memory.fill("")
    dialog.locator("[data-field=queue] select").select_option("typed")
    dialog.locator("[data-field=job_type] input").fill("inference")
    submit(dialog)
    expect(error).to_have_text("queue 'typed' accepts job types ['train'], not 'inference'")

    # A queue deleted while the dialog was open.
    dialog.locator("[data-field=job_type] input").fill("")
    dialog.locator("[data-field=queue] select").select_option("doomed")
    status, body = lab.api("DELETE", "queues/doomed")
    assert status == 204, body
    submit(dialog)
    expect(error).to_have_text(re.compile(r"^unknown queue 'doomed' \(queues: default, typed\)"))

    # Signed out meanwhile (the login cookie gone, no token): the dialog says so instead of failing silently.
    page.evaluate("() => { window.jupyterapp.serviceManager.serverSettings.token = ''; }")
    page.context.clear_cookies()
    dialog.locator("[data-field=queue] select").select_option("default")
    submit(dialog)
    expect(error).to_have_text(re.compile(r"^Not authenticated: "))

    expect(dialog).to_be_visible()
    assert job_count(lab) == before


def test_open_executed_notebook_from_the_job_view(page, lab):
    (lab.root / "report.ipynb").write_text(json.dumps(PARAMS_NOTEBOOK, indent=1))
    dialog = launch_dialog(page, open_notebook(page, "report.ipynb"))
    submit(dialog)
    job_id = opened_job_id(page)
    view = page.locator(f"#jp-launch-job-{job_id}")
    expect(view.locator(".jp-LaunchJob-titleRow .jp-LaunchState")).to_have_text("succeeded", timeout=60_000)

    view.locator(".jp-LaunchJob-tab[data-tab=outputs]").click()
    output = view.locator(".jp-LaunchJob-output").filter(has=page.locator(".jp-LaunchJob-openNotebook"))
    expect(output).to_have_count(1)
    path = output.locator(".jp-LaunchJob-outputPath").text_content()
    output.locator(".jp-LaunchJob-openNotebook").click()

    executed = page.locator(".jp-NotebookPanel").filter(visible=True)
    current_tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel")
    expect(current_tab).to_have_text(path.rsplit("/", 1)[-1])
    expect(executed.locator(".jp-OutputArea-output").filter(has_text="hello 2")).to_have_count(1)
    saved = lab.root / "launch-outputs" / job_id / path
    assert saved.exists()
    assert "hello 2" in saved.read_text()
