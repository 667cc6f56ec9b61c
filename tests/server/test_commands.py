"""``jupyter launch token create|list|revoke``: tokens printed once, listed without secrets, revoked by id."""

from __future__ import annotations

from jupyter_launch.cli import main


def run(*argv: str) -> None:
    assert main(list(argv)) == 0


def test_token_lifecycle(launch_home, capsys):
    run("token", "create", "--name", "gpu-box", "--queue", "gpu", "--queue", "cpu")
    token = capsys.readouterr().out.strip()
    assert token.startswith("jla_")
    run("token", "list")
    listed = capsys.readouterr().out
    token_id = token.split("_")[1]
    assert f"{token_id}  gpu-box  gpu,cpu  active" in listed and token.split("_", 2)[2] not in listed
    run("token", "revoke", token_id)
    assert "revoked agent token" in capsys.readouterr().out
    run("token", "list")
    assert token_id not in capsys.readouterr().out
    run("token", "list", "--all")
    assert "revoked" in capsys.readouterr().out
