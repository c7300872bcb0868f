"""Progress of a long step: journaled as it goes, and a bar in the notebook, updated in place.

A progress event is an ``info`` event of the step whose evidence is ``{"progress": {"done",
"total", "unit"}}``; ``unit`` is ``tables`` or ``bytes``. Journaled at most once a second (and
always at the end, done = total), so a restore of a thousand tables does not write a
thousand lines. The notebook's bar is one display, replaced as the step goes: plain text, so
it reads the same in JupyterLab, in papermill's saved notebook and in the report.
"""

from __future__ import annotations

import time

BAR_WIDTH = 24


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def amount(progress: dict) -> str:
    """``3/7 tables``, ``12.3/76.0 MB read`` (of the file)."""
    done, total, unit = progress["done"], progress["total"], progress.get("unit", "")
    if unit == "bytes":
        scale, name = (1e6, "MB") if total >= 1e6 else (1e3, "kB")
        return f"{done / scale:.1f}/{total / scale:.1f} {name} read"
    return f"{done}/{total} {unit}".rstrip()


def line(label: str, progress: dict) -> str:
    return f"{label} {bar(progress['done'], progress['total'])} {amount(progress)}"


class StepProgress:
    """Called with each ``Progress`` (``done``, ``total``, ``unit``) of step ``step``: journal and notebook bar."""

    def __init__(self, ctx, step: str, label: str, min_interval: float = 1.0):
        self.ctx, self.step, self.label, self.min_interval = ctx, step, label, min_interval
        self._journaled: tuple | None = None
        self._at = 0.0
        self._handle = None

    def __call__(self, progress) -> None:
        data = progress.to_dict()
        self._show(line(self.label, data))
        key = (data["done"], data["total"])
        final = data["done"] >= data["total"]
        if key == self._journaled or (not final and time.monotonic() - self._at < self.min_interval):
            return
        self._journaled, self._at = key, time.monotonic()
        self.ctx.record(self.step, "info", f"{self.label}: {amount(data)}", progress=data)

    def _show(self, text: str) -> None:
        """The bar in the notebook running this step; nothing outside a kernel."""
        if self._handle is None:
            self._handle = _notebook_display(text) or False
        elif self._handle:
            self._handle.update({"text/plain": text}, raw=True)


def _notebook_display(text: str):
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        return None
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    return display({"text/plain": text}, raw=True, display_id=True)
