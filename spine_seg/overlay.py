"""Overlay PNGs: vertebra masks drawn in colour over the radiograph."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from spine_seg.atomic import atomic_path

# One colour per structure (RGB), cycling when there are more structures.
PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
     (70, 240, 240), (240, 50, 230)],
    dtype=np.float32,
)
BANNER = (200, 0, 0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale an ``R x C`` image to uint8 between its 0.5 and 99.5 percentiles."""
    lo, hi = np.percentile(image, (0.5, 99.5))
    scaled = (image.astype(np.float32) - lo) / max(float(hi - lo), 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def overlay_rgb(image: np.ndarray, class_map: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """``R x C x 3`` uint8: the radiograph in gray, each structure tinted with its palette colour."""
    if image.shape != class_map.shape:
        raise ValueError(f"image {image.shape} and class map {class_map.shape} differ in size")
    gray = np.repeat(to_uint8(image)[..., None], 3, axis=-1).astype(np.float32)
    mask = class_map > 0
    colours = PALETTE[(class_map[mask].astype(np.int64) - 1) % len(PALETTE)]
    gray[mask] = (1 - alpha) * gray[mask] + alpha * colours
    return gray.astype(np.uint8)


def save_overlay(
    path: str | Path, image: np.ndarray, class_map: np.ndarray, max_size: int = 1024, warnings: Sequence[str] = ()
) -> None:
    """Write an overlay PNG atomically, downscaled so its longer side is at most ``max_size`` pixels.

    ``warnings`` (e.g. the prediction's plausibility problems) are written across its top in a red banner, so
    that a flagged case stands out when the PNGs are browsed."""
    picture = Image.fromarray(overlay_rgb(image, class_map))
    picture.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    if warnings:
        _draw_banner(picture, ["CHECK"] + list(warnings))
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


def _draw_banner(picture: Image.Image, lines: list[str]) -> None:
    """Red banner with white ``lines`` across the top of ``picture``, sized to its width."""
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, picture.width // 30))
    height = sum(draw.textbbox((0, 0), line, font=font)[3] + 2 for line in lines) + 4
    draw.rectangle((0, 0, picture.width, min(height, picture.height)), fill=BANNER)
    y = 2
    for line in lines:
        draw.text((4, y), line, fill=(255, 255, 255), font=font)
        y += draw.textbbox((0, 0), line, font=font)[3] + 2
