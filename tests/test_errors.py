"""One exception root: every error class the package defines derives from ``LaunchError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import jupyter_launch
from jupyter_launch.errors import LaunchError, LocatedError

# Not imported to look at: __main__ modules run the CLI; the migrations' env.py runs alembic.
SKIPPED = ("__main__", "jupyter_launch.store.migrations")


def package_modules() -> list[str]:
    names = ["jupyter_launch"]
    for info in pkgutil.walk_packages(jupyter_launch.__path__, "jupyter_launch."):
        if not any(part in info.name for part in SKIPPED):
            names.append(info.name)
    return names


def test_every_exception_class_of_the_package_is_a_launch_error():
    found = {}
    for name in package_modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException):
                found[f"{name}.{cls.__qualname__}"] = cls
    # A user's interrupt is not an error: it stays a KeyboardInterrupt, so that ``except LaunchError`` (or
    # ``except Exception``) never swallows it. Those are named here, one by one.
    interrupts = {name for name, cls in found.items() if issubclass(cls, KeyboardInterrupt)}
    assert interrupts == {"jupyter_launch.magics.JobInterrupted"}, interrupts
    assert not any(issubclass(found[name], Exception) for name in interrupts)
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, LaunchError) and name not in interrupts)
    assert not outside, f"exception classes outside LaunchError: {outside}"
    # The walk saw the classes it is meant to check (a broken walk would pass on nothing).
    expected = {"jupyter_launch.spec.SpecError", "jupyter_launch.artifact.ArtifactError",
                "jupyter_launch.store.base.StoreError", "jupyter_launch.store.base.NotFound",
                "jupyter_launch.remote.http.RemoteError", "jupyter_launch.remote.http.RemoteAuthError",
                "jupyter_launch.backends.base.BackendError", "jupyter_launch.images.ImageBuildError",
                "jupyter_launch.runner.JobError", "jupyter_launch.cli.main.UsageError",
                "jupyter_launch.magics.JobFailed", "jupyter_launch.agent._JobSetupError"}
    assert expected <= set(found), expected - set(found)


def test_an_artifact_error_is_not_a_spec_error_and_both_name_where():
    from jupyter_launch.artifact import ArtifactError
    from jupyter_launch.spec import SpecError

    assert not issubclass(ArtifactError, SpecError) and issubclass(ArtifactError, LocatedError)
    assert issubclass(SpecError, LocatedError) and issubclass(SpecError, ValueError)
    assert str(ArtifactError("no such file", source="p", field="include")) == "p: include: no such file"
    assert str(SpecError("must be positive", source="job.yaml", line=3, field="timeout")) == \
        "job.yaml:3: timeout: must be positive"


def test_the_runner_imports_no_more_than_before_for_its_errors():
    import subprocess
    import sys

    code = "import sys, jupyter_launch.errors; print(sorted(m for m in sys.modules if m.startswith('jupyter_launch')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['jupyter_launch', 'jupyter_launch.control', 'jupyter_launch.errors']", out
