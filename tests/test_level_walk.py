"""benchmarks/level_walk.py: the walk on a synthetic chain of bodies, the counted position, the naming rules, and a
run on phantoms with the shipped stage-3 weights."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def level_walk(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("level_walk")


SHAPE = (900, 160)


def chain(skip: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Bodies above a start at row 800 (L1 beneath at 900), each step 0.96 of the last, as masks; their centre rows.
    ``skip``: the index of a body left out of the masks (the walk must still count it)."""
    rows, step = [800.0], 100.0
    while rows[-1] - step * 0.96 > 20:
        step *= 0.96
        rows.append(rows[-1] - step)
    masks = []
    for i, row in enumerate(rows):
        mask = np.zeros(SHAPE, bool)
        half = 0.3 * (100 * 0.96 ** i)
        if i != skip:
            mask[int(round(row - half)):int(round(row + half)) + 1, 60:100] = True
        masks.append(mask)
    return masks, np.array(rows[1:])


def fake_segmenter(masks: list[np.ndarray]) -> Callable[[tuple[float, float], float], tuple[np.ndarray, tuple]]:
    """A stand-in for stage 3: inside the window, probability 1 on the drawn body nearest the window's centre."""
    centres = [np.nonzero(m)[0].mean() if m.any() else np.inf for m in masks]

    def segment(centre: tuple[float, float], side: float) -> tuple[np.ndarray, tuple[int, int]]:
        nearest = int(np.argmin([abs(c - centre[0]) for c in centres]))
        r0, c0 = (max(int(round(c - side / 2)), 0) for c in centre)
        r1, c1 = (max(int(round(c - side / 2)) + int(side), 0) for c in centre)
        return masks[nearest][r0:r1, c0:c1].astype(np.float32), (r0, c0)

    return segment


def test_walk_finds_every_body_of_a_chain(level_walk: ModuleType) -> None:
    masks, rows = chain()
    bodies = level_walk.walk(fake_segmenter(masks), np.array([800.0, 80.0]), np.array([900.0, 80.0]), 1.6 * 60)
    assert len(bodies) == len(rows) >= 8
    assert all(b.found for b in bodies)
    assert np.abs(np.array([b.row for b in bodies]) - rows).max() < 1.0


def test_walk_counts_a_missing_body_as_virtual(level_walk: ModuleType) -> None:
    masks, rows = chain(skip=4)  # the fourth body above the start is not drawn
    bodies = level_walk.walk(fake_segmenter(masks), np.array([800.0, 80.0]), np.array([900.0, 80.0]), 1.6 * 60)
    assert len(bodies) == len(rows)
    assert [b.found for b in bodies].count(False) == 1 and not bodies[3].found
    assert abs(bodies[3].row - rows[3]) < 10  # put where the pitch model expects it
    assert np.abs(np.array([b.row for b in bodies[4:]]) - rows[4:]).max() < 1.0  # and the walk goes on


def test_walk_counts_a_window_off_the_image_as_virtual(level_walk: ModuleType) -> None:
    masks, rows = chain()
    inside = fake_segmenter(masks)

    def segment(centre: tuple[float, float], side: float) -> tuple[np.ndarray, tuple[int, int]]:
        if abs(centre[0] - rows[2]) < 10:  # the third probe's window lies wholly outside the image
            return np.zeros((0, 0), np.float32), (0, SHAPE[1])
        return inside(centre, side)

    bodies = level_walk.walk(segment, np.array([800.0, 80.0]), np.array([900.0, 80.0]), 1.6 * 60)
    assert [b.found for b in bodies].count(False) == 1 and not bodies[2].found
    assert np.abs(np.array([b.row for b in bodies[3:]]) - rows[3:]).max() < 1.0


def test_counted_position(level_walk: ModuleType) -> None:
    bodies = [level_walk.Body(row, 0.0, 10, 10, True) for row in (400.0, 310.0, 230.0)]
    assert level_walk.counted_position(500.0, bodies) == pytest.approx(3 + 230 / 80)
    assert level_walk.counted_position(500.0, bodies, reference_row=405.0) == pytest.approx(2 + 230 / 80)
    assert np.isnan(level_walk.counted_position(500.0, []))


def test_naming_rules_read_the_shift_off_each_position(level_walk: ModuleType) -> None:
    rng = np.random.default_rng(0)
    n = 400
    counted = 11.3 + rng.normal(0, 0.1, n)  # expert T12s that always lie the same count below the top edge
    height = rng.normal(0, 0.8, n)  # and at a height that varies
    train = np.arange(n) % 5 != 0
    rules = level_walk.naming_rules(counted, height, train)
    assert (rules["count alone"] == 0).all()
    assert (rules["both"] == 0).mean() > 0.95
    assert (rules["height fraction alone"] == 0).mean() < 0.6
    counted[:20] += 1  # one body more above T12 than usual: T12 would be named one level too low
    height[:20] = 0.0
    assert (level_walk.naming_rules(counted, height, train)["count alone"][:20] == 1).all()


def test_runs_on_phantoms_with_the_shipped_weights(
    level_walk: ModuleType, expert_cascade: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset_json, eval_dir, val = expert_cascade
    figure = Path(eval_dir) / "walks.png"
    level_walk.main(["--dataset-json", str(Path(dataset_json)), "--figure", str(figure), "--figure-cases", "001,002"])
    out = capsys.readouterr().out
    assert f"walks of cases 001, 002: {figure}" in out
    with Image.open(figure) as picture:
        assert picture.height == 640 and picture.width > 640 * 64 / 160  # two 160 x 64 panels scaled to 640 rows
    assert re.search(r"^10 cases; bodies found above T12: ", out, re.M)
    assert re.search(r"^correlation of the counted position", out, re.M)
    for rule in ("height fraction alone", "count alone", "both"):
        assert re.search(rf"^{rule}: names T12 as the experts did in \d+ of 8 training cases, \d+ of {len(val)} "
                         r"fold-0 validation cases$", out, re.M)
