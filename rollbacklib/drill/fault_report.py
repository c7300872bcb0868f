"""What ``rollback drill --fault`` prints: the list of faults, and each drill's verdict."""

from __future__ import annotations

from typing import Callable

from rollbacklib.drill.faults import FaultDrillResult, describe_rows_lost, list_faults, run_fault_drill


def fault_list_lines() -> list[str]:
    faults = list_faults()
    width = max(len(f.name) for f in faults)
    lines = [f"{'fault':<{width}}  exit  what is injected"]
    lines += [f"{f.name:<{width}}  {f.exit_code:>4}  {f.injects}" for f in faults]
    lines.append("Run one with: rollback drill --fault NAME (exit 0 when the runbook ended as expected, 1 otherwise).")
    return lines


def result_lines(result: FaultDrillResult) -> list[str]:
    fault = result.fault
    lines = ["", f"Fault {fault.name}: expected exit {fault.exit_code}, the runbook ended with exit {result.runbook_exit}.",
             f"  What the runbook must do: {fault.responds}"]
    lines += [f"  {'✓' if ok else '✗'} {text}" for ok, text in result.verdict.checks]
    lines += [f"  note: {note}" for note in result.verdict.notes]
    if result.rows_lost is None and fault.outcome in ("unchanged", "original-serves"):
        lines.append("Rows the restore discarded: none (nothing went live from the backup).")
    else:
        lines += describe_rows_lost(result.rows_lost)
    if result.run_dir.exists():
        lines.append(f"Run folder: {result.run_dir}")
    if result.kept:
        lines.append(f"Server left running in {result.workdir}; stop it with: rollback drill --stop {result.workdir}")
    if result.passed:
        lines.append(f"AS EXPECTED: {fault.name} ended with exit {fault.exit_code} and every check held.")
    else:
        lines.append(f"DIFFERED: {fault.name}:")
        lines += [f"  - {difference}" for difference in result.differences()]
        lines.append(f"  The operator's next step for this fault: {fault.operator}")
    return lines


def fault_drill_command(name: str, *, say: Callable[[str], None] = print, **options) -> int:
    """``rollback drill --fault NAME``: print the list, or run the drill and its verdict; the exit code."""
    if name == "list":
        for line in fault_list_lines():
            say(line)
        return 0
    result = run_fault_drill(name, say=say, **options)
    for line in result_lines(result):
        say(line)
    return result.exit_code
