"""Files shipped inside the package: the phase notebooks, the default config, the drill's scenarios.

Read through ``importlib.resources``, so a wheel installed anywhere works the same as a checkout.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path


def packaged(*parts: str) -> Path:
    """The path on disk of a file or folder shipped in the package (notebooks, runbook.toml, scenarios)."""
    resource = files("rollbacklib").joinpath(*parts)
    with as_file(resource) as path:  # installed packages are folders on disk: this is the path itself
        return Path(path)


def notebooks_dir() -> Path:
    return packaged("notebooks")


def default_config() -> Path:
    return packaged("runbook.toml")


def scenarios_dir() -> Path:
    return packaged("scenarios")
