"""What every config model shares: strict keys, and secrets given by the NAME of an env var."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _env_var_name(value: str) -> str:
    if "://" in value or "=" in value or not ENV_VAR_NAME.match(value):
        raise ValueError(
            "must be the NAME of an environment variable (like PRODUCTION_DATABASE_URL), "
            "never a connection string or a secret value"
        )
    return value
