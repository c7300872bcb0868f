"""A check: one named comparison of what was expected with what was found."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Check:
    name: str
    passed: bool
    expected: object = None
    found: object = None
    detail: str = ""
    skipped: bool = field(default=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def verdict(self) -> str:
        return "skipped" if self.skipped else ("pass" if self.passed else "FAIL")


def compare(name: str, expected: object, found: object, detail: str = "") -> Check:
    return Check(name, expected == found, expected, found, detail)


def skipped(name: str, why: str) -> Check:
    return Check(name, True, None, None, why, skipped=True)


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]


def describe_failures(checks: list[Check]) -> str:
    return "\n".join(f"  - {c.name}: expected {c.expected!r}, found {c.found!r}. {c.detail}".rstrip() for c in failed(checks))


def as_frame(checks: list[Check]):
    """The checks as a pandas DataFrame, for a notebook cell to show."""
    import pandas as pd

    return pd.DataFrame(
        [
            {"check": c.name, "verdict": c.verdict, "expected": _short(c.expected), "found": _short(c.found), "detail": c.detail}
            for c in checks
        ]
    )


def _short(value: object, width: int = 80) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"
