"""The ``surgical`` settings of an environment (``[defaults.surgical]`` or ``[environments.NAME.surgical]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rollbacklib.config_base import _Strict


class SurgicalSettings(_Strict):
    services: Literal["up", "drain"] = "up"  # up: serve through it; drain: stop the services around the changes
    batch_rows: int = Field(5000, gt=0)  # rows per backfill UPDATE (one transaction each)
    lock_timeout_seconds: float = Field(2, gt=0)  # how long the reverse DDL waits for its locks per attempt
    attempts: int = Field(5, gt=0)  # tries of the reverse DDL before it gives up (nothing changed)
    retry_pause_seconds: float = Field(1, ge=0)  # pause after the n-th lock timeout: n times this
