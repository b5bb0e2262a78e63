"""What a batch (``spine-seg predict``, ``spine-seg export``) did with each case, and ``checks.csv``."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from spine_seg.atomic import write_text_atomic

CHECKS_FILE = "checks.csv"


@dataclass
class BatchReport:
    """Every case of the batch in input order, files written, cases that failed (case id -> cause) and
    anatomically implausible predictions (case id -> problems, from :func:`spine_seg.anatomy.plausibility_problems`)."""

    cases: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)
    implausible: dict[str, list[str]] = field(default_factory=dict)

    def problem_lines(self) -> list[str]:
        """``BAD <cause>`` for each failed case, then ``CHECK <case>: <problems>`` for each implausible one."""
        return [f"  BAD {cause}" for cause in self.bad.values()] + [
            f"  CHECK {case}: {'; '.join(problems)}" for case, problems in self.implausible.items()
        ]

    def status(self, case: str) -> str:
        """``bad``, ``check`` or ``ok``."""
        return "bad" if case in self.bad else "check" if case in self.implausible else "ok"

    def summary(self) -> str:
        """``N cases: a ok, b to check, c bad``."""
        counts = [sum(self.status(c) == s for c in self.cases) for s in ("ok", "check", "bad")]
        return f"{len(self.cases)} cases: {counts[0]} ok, {counts[1]} to check, {counts[2]} bad"

    def checks_csv(self) -> str:
        """One ``case,status,detail`` row per case: status ``ok``, ``check`` (detail: the problems, to review by
        eye) or ``bad`` (detail: why nothing, or not everything, was written)."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["case", "status", "detail"])
        for case in self.cases:
            writer.writerow([case, self.status(case), self.bad.get(case) or "; ".join(self.implausible.get(case, []))])
        return text.getvalue()

    def write_checks(self, out_dir: str | Path) -> Path:
        """Write :meth:`checks_csv` to ``out_dir/checks.csv`` atomically; returns its path."""
        path = Path(out_dir) / CHECKS_FILE
        write_text_atomic(path, self.checks_csv())
        return path
