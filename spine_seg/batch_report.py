"""What a batch (``spine-seg predict``, ``spine-seg export``) did with each case, and ``checks.csv``."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from spine_seg.atomic import write_text_atomic

CHECKS_FILE = "checks.csv"
HEADER = ["case", "status", "detail"]


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

    def checks_csv(self, earlier: dict[str, list[str]] | None = None) -> str:
        """One ``case,status,detail`` row per case: status ``ok``, ``check`` (detail: the problems, to review by
        eye) or ``bad`` (detail: why nothing, or not everything, was written). ``earlier`` (case -> row, from an
        earlier ``checks.csv``) keeps the rows of cases that this batch did not see, in their order, first."""
        rows = dict(earlier or {})
        for case in self.cases:
            rows[case] = [case, self.status(case), self.bad.get(case) or "; ".join(self.implausible.get(case, []))]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows.values())
        return text.getvalue()

    def note_earlier_outputs(self, out_dir: str | Path, suffixes: tuple[str, ...]) -> None:
        """Add to each bad case's cause the files ``out_dir/<case><suffix>`` that this batch did not write: an
        earlier run's, left in place, which no longer match their input."""
        written = set(self.written)
        for case in self.bad:
            paths = [Path(out_dir) / f"{case}{suffix}" for suffix in suffixes]
            earlier = [p.name for p in paths if p.is_file() and p not in written]
            if earlier:
                self.bad[case] += f"; {', '.join(earlier)} in {out_dir} are from an earlier run, left as they were"

    def write_checks(self, out_dir: str | Path) -> Path:
        """Write :meth:`checks_csv` to ``out_dir/checks.csv`` atomically, keeping the rows of an earlier
        ``checks.csv`` there for the cases this batch did not see; returns its path."""
        path = Path(out_dir) / CHECKS_FILE
        write_text_atomic(path, self.checks_csv(_earlier_rows(path)))
        return path


def _earlier_rows(path: Path) -> dict[str, list[str]]:
    """Case -> row of an existing ``checks.csv``; none if there is none or it is not one of ours."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != HEADER or any(len(row) != len(HEADER) for row in rows[1:]):
        return {}
    return {row[0]: row for row in rows[1:]}
