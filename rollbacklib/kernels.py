"""The kernels the phase notebooks run in: started ahead of their phase, and shut down without a stray SIGINT.

jupyter_client's ``shutdown_kernel`` interrupts the kernel (SIGINT) before it sends the
``shutdown_request``. A kernel that finished its last cell is idle, so the interrupt stops
nothing; but when it lands while ipykernel is still in a message handler, ipykernel logs
``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.`` on the runner's terminal after a
successful phase. Here the shutdown asks first: a kernel that does not go on its own is still
terminated and then killed by ``finish_shutdown`` (``shutdown_wait_time``), and an interrupt
asked for outside a shutdown (a cell timeout) is sent as before.

``KernelPool`` starts the kernel of the next phase while the current one runs, and warms it
(the modules its notebook imports, in a namespace of their own: nothing reaches the notebook),
so no kernel start lies between two phases; ``rollbacklib.engine`` hands it to papermill.
"""

from __future__ import annotations

import ast
import time
from queue import Empty
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async, run_sync
from traitlets import Type

KERNEL_NAME = "python3"
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]
# What nbclient adds to the kernels it starts itself: a started-ahead kernel is started the same way.
HISTORY_ARGUMENT = "--HistoryManager.hist_file=:memory:"
# Phases that draw (the plots of 05_close) import matplotlib in a cell; warming it there takes it off the run's path.
DRAWS = {"05_close": ("rollbacklib.report.plots",)}
WARM_TIMEOUT = 60.0  # as papermill's start_timeout: a kernel not warm by then is not used


class QuickReadyKernelClient(AsyncKernelClient):
    """``wait_for_ready`` without jupyter_client's closing 0.2 s of IOPub silence (a cost paid at every phase).

    Once the kernel has answered ``kernel_info`` and IOPub is seen to be connected, whatever IOPub still
    holds from that exchange is drained for as long as it keeps coming, then the wait ends as soon as the
    channel is quiet for a moment: nbclient matches every message to its request by ``msg_id``, so a
    leftover status message can never be taken for a cell's output.
    """

    quiet_seconds = 0.02

    async def _async_wait_for_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        while True:
            self.kernel_info()
            try:
                reply = await ensure_async(self.shell_channel.get_msg(timeout=1))
            except Empty:
                reply = None
            if reply is not None and reply["msg_type"] == "kernel_info_reply":
                try:
                    await ensure_async(self.iopub_channel.get_msg(timeout=0.2))  # IOPub connected
                except Empty:
                    pass
                else:
                    self._handle_kernel_info_reply(reply)
                    break
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:.0f} seconds")
        while True:
            try:
                await ensure_async(self.iopub_channel.get_msg(timeout=self.quiet_seconds))
            except Empty:
                return

    wait_for_ready = _async_wait_for_ready


class QuietShutdownKernelManager(AsyncKernelManager):
    client_factory = Type(default_value=QuickReadyKernelClient, klass=AsyncKernelClient)

    async def _async_interrupt_kernel(self) -> None:
        if self.shutting_down:
            return  # the shutdown_request that follows ends an idle kernel; SIGINT would only make it log
        await super()._async_interrupt_kernel()

    interrupt_kernel = _async_interrupt_kernel

    def client(self, **kwargs):
        kc = super().client(**kwargs)
        self._clients = [*getattr(self, "_clients", []), kc]
        return kc

    def stop_clients(self) -> None:
        """Close the channels of every client made for this kernel (nbclient leaves them open on a kernel it was given)."""
        for kc in getattr(self, "_clients", []):
            kc.stop_channels()
        self._clients = []


KERNEL_MANAGER = f"{QuietShutdownKernelManager.__module__}.{QuietShutdownKernelManager.__qualname__}"


def warm_modules(notebook: Path, phase: str) -> list[str]:
    """The modules ``notebook`` imports at the top level of its code cells (``from a import b``: ``a`` and ``a.b``)."""
    import nbformat

    modules: list[str] = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # a magic or a shell line: nothing to warm from that cell
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                modules += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return list(dict.fromkeys([*modules, *DRAWS.get(phase, ())]))


def _warm_code(modules: list[str]) -> str:
    body = ("import importlib\nfor name in %r:\n    try:\n        importlib.import_module(name)\n"
            "    except ImportError:\n        pass\n") % (modules,)
    return f"exec({body!r}, {{}})"  # a namespace of its own: the notebook's starts empty, as with a fresh kernel


@dataclass
class StartedKernel:
    """A kernel started ahead of ``phase``: its manager, process, and when it was started."""

    phase: str
    km: QuietShutdownKernelManager
    pid: int | None
    started_at: float  # time.time()
    modules: list[str]
    warm_client: object | None = None
    warm_id: str = ""
    warmed_at: float | None = None
    waited_seconds: float = 0.0  # how long the runner waited for it at its phase (0: it was ready)
    failure: str = ""  # why it cannot be used (it died while waiting, it never answered)

    def evidence(self) -> dict:
        from datetime import datetime, timezone

        def iso(t: float | None) -> str | None:
            return datetime.fromtimestamp(t, timezone.utc).isoformat() if t else None

        return {"pid": self.pid, "started_at": iso(self.started_at), "warmed_at": iso(self.warmed_at),
                "waited_seconds": round(self.waited_seconds, 3), "warm_modules": self.modules}


@dataclass
class KernelPool:
    """Kernels started ahead of their phases, in ``cwd`` with ``env``; every one of them ends with the pool."""

    cwd: Path
    env: dict[str, str]
    waiting: dict[str, StartedKernel] = field(default_factory=dict)
    retired: list[QuietShutdownKernelManager] = field(default_factory=list)
    started: set[str] = field(default_factory=set)  # phases a kernel was started for: never a second one

    def __enter__(self) -> "KernelPool":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def start(self, phase: str, modules: list[str]) -> None:
        """Start the kernel of ``phase`` now and send it its warm-up; return at once (it boots on its own)."""
        if phase in self.started:
            return
        self.started.add(phase)
        km = QuietShutdownKernelManager(kernel_name=KERNEL_NAME)
        started_at = time.time()
        run_sync(km.start_kernel)(extra_arguments=[*KERNEL_ARGUMENTS, HISTORY_ARGUMENT], cwd=str(self.cwd),
                                  env=dict(self.env))
        process = getattr(km.provisioner, "process", None)
        kernel = StartedKernel(phase, km, getattr(process, "pid", None), started_at, modules)
        self.waiting[phase] = kernel
        kc = km.client()
        kc.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        # zmq queues the request until the kernel has bound its ports; it runs before any request of papermill's
        kernel.warm_client, kernel.warm_id = kc, kc.execute(_warm_code(modules), silent=True, store_history=False)

    def take(self, phase: str) -> StartedKernel | None:
        """The kernel started for ``phase``, warm and alive; None if none was. One that is not usable is shut down
        (``failure`` says why) and returned: its phase starts a fresh kernel."""
        kernel = self.waiting.pop(phase, None)
        if kernel is None:
            return None
        began = time.monotonic()
        kernel.failure = self._wait_warm(kernel)
        kernel.waited_seconds = time.monotonic() - began
        kernel.km.stop_clients()
        kernel.warm_client = None
        if kernel.failure:
            self.retire(kernel)
        return kernel

    def _wait_warm(self, kernel: StartedKernel) -> str:
        deadline = time.monotonic() + WARM_TIMEOUT
        while time.monotonic() < deadline:
            if not run_sync(kernel.km.is_alive)():
                code = getattr(getattr(kernel.km.provisioner, "process", None), "returncode", None)
                return f"the kernel started ahead for {kernel.phase} (pid {kernel.pid}) had exited (code {code})"
            try:
                reply = run_sync(kernel.warm_client.get_shell_msg)(timeout=0.5)
            except Empty:  # not warm yet
                continue
            if reply.get("parent_header", {}).get("msg_id") == kernel.warm_id:
                kernel.warmed_at = time.time()
                return ""
        return f"the kernel started ahead for {kernel.phase} (pid {kernel.pid}) did not answer in {WARM_TIMEOUT:.0f} s"

    def retire(self, kernel: StartedKernel | None) -> None:
        """Ask a kernel whose phase is done to exit, without waiting for it: it goes while the next phase runs."""
        if kernel is None or kernel.km in self.retired:
            return
        kernel.km.stop_clients()
        self.retired.append(kernel.km)
        try:
            if run_sync(kernel.km.is_alive)():
                run_sync(kernel.km.request_shutdown)()
        except Exception:  # noqa: BLE001 - close() still shuts it down, and kills it if it must
            pass

    def close(self) -> None:
        """Shut down every kernel of the pool, waiting for each (killed after ``shutdown_wait_time``)."""
        unused = [kernel.km for kernel in self.waiting.values()]
        self.waiting.clear()
        for km in unused:
            km.stop_clients()
            try:
                run_sync(km.request_shutdown)()
            except Exception:  # noqa: BLE001 - it is killed below if it does not go
                pass
        for km in [*self.retired, *unused]:
            try:
                # Asked once already: a second shutdown_request reaching a kernel on its way out makes it print
                # "Event loop is closed" on the runner's terminal. Wait for it; kill it if it does not go.
                run_sync(km.finish_shutdown)()
                run_sync(km.cleanup_resources)()
            except Exception:  # noqa: BLE001 - one kernel's trouble must not leave the others running
                _kill(km)
        self.retired.clear()


def _kill(km: QuietShutdownKernelManager) -> None:
    process = getattr(km.provisioner, "process", None)
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()
