"""A papermill engine that runs a notebook in a kernel started ahead of it (``rollbacklib.kernels.KernelPool``).

Registered as ``rollbacklib`` under papermill's ``papermill.engine`` entry point. It is papermill's
own nbclient engine given the kernel: papermill still parameterizes, saves after every cell,
times out, marks the failed cell and raises ``PapermillExecutionError``. Without a kernel
(``papermill --engine rollbacklib``, or a started-ahead kernel that died), papermill starts
one itself as it always does.
"""

from __future__ import annotations

from papermill.engines import NBClientEngine, papermill_engines
from papermill.exceptions import PapermillException

ENGINE = "rollbacklib"


def save_at_code_cells_only(nb_man) -> None:
    """Papermill saves the notebook as each cell starts and ends, markdown cells included; here only code cells
    save (the next save writes a markdown cell's state too): half the writes, none of them lost for the audit
    trail, since a markdown cell changes nothing that could be lost in between."""
    original_save, skip = nb_man.save, [False]

    def save(**kwargs):
        if not skip[0]:
            original_save(**kwargs)

    def code_cells_save(method):
        def run(cell, cell_index=None, **kwargs):
            skip[0] = cell.cell_type != "code"
            try:
                return method(cell, cell_index, **kwargs)
            finally:
                skip[0] = False
        return run

    nb_man.save = save
    nb_man.cell_start = code_cells_save(nb_man.cell_start)
    nb_man.cell_complete = code_cells_save(nb_man.cell_complete)


class PrestartedKernelEngine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, kernel=None, **kwargs):
        """``kernel``: a ``StartedKernel`` taken from the pool, or None for a kernel papermill starts."""
        save_at_code_cells_only(nb_man)
        if kernel is None or kernel.failure:
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
        try:
            # nbclient finds a kernel running on this manager: it connects a client, waits for it to answer, runs
            return super().execute_managed_notebook(nb_man, kernel_name, km=kernel.km, **kwargs)
        finally:
            kernel.km.stop_clients()  # nbclient leaves a given kernel, and its client, to whoever gave it


def engine_name() -> str:
    """The engine's name, registered here too when the installed metadata predates the entry point."""
    try:
        papermill_engines.get_engine(ENGINE)
    except PapermillException:
        papermill_engines.register(ENGINE, PrestartedKernelEngine)
    return ENGINE
