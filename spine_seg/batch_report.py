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
    """Files written, cases that failed (case id -> cause) and anatomically implausible predictions (case id ->
    problems, from :func:`spine_seg.anatomy.plausibility_problems`)."""

    written: list[Path] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)
    implausible: dict[str, list[str]] = field(default_factory=dict)

    def problem_lines(self) -> list[str]:
        """``BAD <cause>`` for each failed case, then ``CHECK <case>: <problems>`` for each implausible one."""
        return [f"  BAD {cause}" for cause in self.bad.values()] + [
            f"  CHECK {case}: {'; '.join(problems)}" for case, problems in self.implausible.items()
        ]

    def checks_csv(self, cases: list[str]) -> str:
        """One ``case,status,detail`` row per case: status ``ok``, ``check`` (detail: the problems, to review by
        eye) or ``bad`` (detail: why nothing, or not everything, was written)."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["case", "status", "detail"])
        for case in cases:
            if case in self.bad:
                writer.writerow([case, "bad", self.bad[case]])
            elif case in self.implausible:
                writer.writerow([case, "check", "; ".join(self.implausible[case])])
            else:
                writer.writerow([case, "ok", ""])
        return text.getvalue()

    def write_checks(self, out_dir: str | Path, cases: list[str]) -> Path:
        """Write :meth:`checks_csv` to ``out_dir/checks.csv`` atomically; returns its path."""
        path = Path(out_dir) / CHECKS_FILE
        write_text_atomic(path, self.checks_csv(cases))
        return path
