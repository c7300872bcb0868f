"""The kernel manager papermill runs the phase notebooks with: shut down without a stray SIGINT.

jupyter_client's ``shutdown_kernel`` interrupts the kernel (SIGINT) before it sends the
``shutdown_request``. A kernel that finished its last cell is idle, so the interrupt stops
nothing; but when it lands while ipykernel is still in a message handler, ipykernel logs
``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.`` on the runner's terminal after a
successful phase. Here the shutdown asks first: a kernel that does not go on its own is still
terminated and then killed by ``finish_shutdown`` (``shutdown_wait_time``), and an interrupt
asked for outside a shutdown (a cell timeout) is sent as before.
"""

from __future__ import annotations

from jupyter_client.manager import AsyncKernelManager


class QuietShutdownKernelManager(AsyncKernelManager):
    async def _async_interrupt_kernel(self) -> None:
        if self.shutting_down:
            return  # the shutdown_request that follows ends an idle kernel; SIGINT would only make it log
        await super()._async_interrupt_kernel()

    interrupt_kernel = _async_interrupt_kernel


KERNEL_MANAGER = f"{QuietShutdownKernelManager.__module__}.{QuietShutdownKernelManager.__qualname__}"
