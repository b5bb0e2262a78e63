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
    path: str | Path,
    image: np.ndarray,
    class_map: np.ndarray,
    max_size: int = 1024,
    warnings: Sequence[str] = (),
    names: Sequence[str] | None = None,
) -> None:
    """Write an overlay PNG atomically, downscaled so its longer side is at most ``max_size`` pixels.

    A legend in the bottom-left corner names the colour of each structure in the map (``names[k - 1]`` for
    label k, else the number k). ``warnings`` (e.g. the prediction's plausibility problems) are written across
    its top in a red banner, so that a flagged case stands out when the PNGs are browsed."""
    picture = Image.fromarray(overlay_rgb(image, class_map))
    picture.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    labels = [int(k) for k in np.unique(class_map) if k > 0]
    if labels:
        _draw_legend(picture, [(names[k - 1] if names else str(k), PALETTE[(k - 1) % len(PALETTE)]) for k in labels])
    if warnings:
        _draw_banner(picture, ["CHECK"] + list(warnings))
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


def _font(picture: Image.Image) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(10, picture.width // 30))


def _draw_legend(picture: Image.Image, entries: list[tuple[str, np.ndarray]]) -> None:
    """A colour swatch and the name of each entry, one per line, on a black box in the bottom-left corner;
    left out where it would cover more than half the picture's height or width."""
    draw = ImageDraw.Draw(picture)
    font = _font(picture)
    line = max(draw.textbbox((0, 0), name, font=font)[3] for name, _ in entries) + 2
    width = max(draw.textlength(name, font=font) for name, _ in entries) + line + 10
    top = picture.height - line * len(entries) - 6
    if 2 * top < picture.height or 2 * width > picture.width:
        return
    draw.rectangle((0, top, width, picture.height), fill=(0, 0, 0))
    for i, (name, colour) in enumerate(entries):
        y = top + 3 + i * line
        draw.rectangle((4, y + 1, 2 + line - 2, y + line - 2), fill=tuple(int(c) for c in colour))
        draw.text((line + 6, y), name, fill=(255, 255, 255), font=font)


def _draw_banner(picture: Image.Image, lines: list[str]) -> None:
    """Red banner with white ``lines`` across the top of ``picture``, sized to its width."""
    draw = ImageDraw.Draw(picture)
    font = _font(picture)
    height = sum(draw.textbbox((0, 0), line, font=font)[3] + 2 for line in lines) + 4
    draw.rectangle((0, 0, picture.width, min(height, picture.height)), fill=BANNER)
    y = 2
    for line in lines:
        draw.text((4, y), line, fill=(255, 255, 255), font=font)
        y += draw.textbbox((0, 0), line, font=font)[3] + 2
