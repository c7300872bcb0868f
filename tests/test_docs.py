"""The docs: every command has help text and a place in the README (as sqlite-utils tests its own)."""

from __future__ import annotations

from typer.testing import CliRunner

from rollbacklib.cli import app

from conftest import REPO


def test_every_command_has_help_and_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    names = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    assert {"run", "resume", "drill", "backup", "verify-backup"} <= set(names)
    for command in app.registered_commands:
        name = command.name or command.callback.__name__.replace("_", "-")
        assert (command.callback.__doc__ or "").strip(), f"rollback {name} has no help text"
        assert f"rollback {name}" in readme, f"rollback {name} is not in README.md"
        result = CliRunner().invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, name
