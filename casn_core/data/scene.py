"""The scene of a procedural pedestrian image: cameras, backgrounds, occluders, the rendered crop.

The person is drawn by :mod:`casn_core.data.pedestrian`; this module puts them in a camera's scene
(docs/design.md, sec. 6): per-camera colour casts, brightness, contrast, blur and noise, cluttered
backgrounds, occluders in front of the person, and the bounding-box jitter in scale and position that
CASN's alignment step is for (paper sec. 3.2).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from casn_core.data.pedestrian import (
    PLAIN_BACKGROUND, Identity, Painter, Pose, draw_person, sample_pose, shade,
)


@dataclass(frozen=True)
class Camera:
    """One camera: colour cast, brightness, contrast, blur, noise and its scene's colours (BGR)."""

    camid: int
    gains: tuple  # per BGR channel
    brightness: float
    contrast: float
    blur: float
    noise: int
    wall: tuple
    ground: tuple
    accents: tuple


def make_camera(seed: int, camid: int) -> Camera:
    """Camera ``camid`` (deterministic in ``(seed, camid)``)."""
    rng = np.random.default_rng([int(seed), 1, int(camid)])
    base = rng.uniform(60, 200, 3)
    return Camera(
        camid=int(camid),
        gains=tuple(float(g) for g in rng.uniform(0.82, 1.18, 3)),
        brightness=float(rng.uniform(-30, 25)),
        contrast=float(rng.uniform(0.8, 1.15)),
        blur=float(rng.choice([0.0, 0.0, 0.7, 1.1])),
        noise=int(rng.choice([2, 4, 6])),
        wall=tuple(int(v) for v in base),
        ground=tuple(int(v) for v in rng.uniform(50, 170, 3)),
        accents=tuple(tuple(int(v) for v in rng.uniform(20, 235, 3)) for _ in range(5)),
    )


def draw_background(image: np.ndarray, camera: Camera, rng: np.random.Generator) -> None:
    """A cluttered street scene in the camera's colours: wall, ground, windows, poles, lines, blobs."""
    h, w = image.shape[:2]
    horizon = int(h * rng.uniform(0.5, 0.8))
    wall = np.clip(np.array(camera.wall) + rng.normal(0, 12, 3), 0, 255)
    ground = np.clip(np.array(camera.ground) + rng.normal(0, 12, 3), 0, 255)
    image[:horizon] = wall.astype(np.uint8)
    image[horizon:] = ground.astype(np.uint8)
    accents = camera.accents
    for _ in range(int(rng.integers(4, 10))):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 8, horizon))
        bw, bh = int(rng.integers(w // 10, w // 2 + 1)), int(rng.integers(h // 16, h // 3 + 1))
        colour = tuple(int(c) for c in np.clip(np.array(accents[int(rng.integers(5))]) + rng.normal(0, 15, 3), 0, 255))
        if rng.random() < 0.3:
            cv2.rectangle(image, (x0, y0), (x0 + bw, y0 + bh), colour, max(1, w // 64))
        else:
            cv2.rectangle(image, (x0, y0), (x0 + bw, y0 + bh), colour, -1)
    for _ in range(int(rng.integers(2, 6))):  # pavement lines and railings
        colour = tuple(int(c * 0.7) for c in ground) if rng.random() < 0.5 else tuple(int(c * 0.6) for c in wall)
        if rng.random() < 0.5:
            y = int(rng.integers(horizon, h))
            cv2.line(image, (0, y), (w, y + int(rng.integers(-h // 8, h // 8 + 1))), colour, 1, cv2.LINE_AA)
        else:
            x = int(rng.integers(0, w))
            cv2.line(image, (x, int(rng.integers(0, horizon))), (x + int(rng.integers(-w // 6, w // 6 + 1)), h),
                     colour, max(1, w // 48), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):  # bushes, lamps, litter
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(2, w // 6 + 3)), int(rng.integers(2, h // 12 + 3)))
        colour = tuple(int(c) for c in accents[int(rng.integers(5))])
        cv2.ellipse(image, centre, axes, 0, 0, 360, colour, -1, cv2.LINE_AA)


def draw_occluder(painter: Painter, kind: str, rng: np.random.Generator) -> None:
    """Something in front of the person: a pole, a low object (car, bench, bush) or a passer-by's edge."""
    colour = tuple(int(c) for c in rng.integers(30, 220, 3))
    if kind == "pole":
        x = float(rng.uniform(-0.12, 0.12))
        width = float(rng.uniform(0.03, 0.06))
        painter.poly([(x - width, -0.3), (x + width, -0.3), (x + width, 1.3), (x - width, 1.3)], colour, person=False)
        painter.line((x - width * 0.5, -0.3), (x - width * 0.5, 1.3), 0.006, shade(colour, 1.3), person=False)
    elif kind == "low":
        top = float(rng.uniform(0.62, 0.85))
        x0 = float(rng.uniform(-0.45, 0.0))
        x1 = max(x0 + float(rng.uniform(0.2, 0.5)), float(rng.uniform(0.03, 0.2)))  # reaches the legs
        painter.poly([(x0, top), (x1, top), (x1, 1.3), (x0, 1.3)], colour, person=False)
        painter.line((x0, top + 0.03), (x1, top + 0.03), 0.01, shade(colour, 0.7), person=False)
    else:
        s = 1 if rng.random() < 0.5 else -1
        x = s * float(rng.uniform(0.14, 0.22))
        top = float(rng.uniform(0.1, 0.5))
        painter.ellipse((x + s * 0.08, top + 0.35), (0.13, 0.45), colour, person=False)


def apply_camera(image: np.ndarray, camera: Camera, pose: Pose, rng: np.random.Generator, noise: bool = True) -> np.ndarray:
    """Colour cast, contrast, brightness, blur and sensor noise of ``camera``."""
    c = camera.contrast
    offset = (1 - c) * 128 + camera.brightness + pose.brightness
    matrix = np.zeros((3, 4), dtype=np.float32)
    for k in range(3):
        matrix[k, k] = c * camera.gains[k]
        matrix[k, 3] = offset
    out = cv2.transform(image, matrix)
    if camera.blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), camera.blur)
    if noise and camera.noise:
        n = camera.noise
        jitter = rng.integers(-n, n + 1, size=out.shape, dtype=np.int16)
        out = np.clip(out.astype(np.int16) + jitter, 0, 255).astype(np.uint8)
    return out


@dataclass
class Rendered:
    """One generated image: BGR ``image``, visible-person ``mask`` (0/255), the figure before occlusion."""

    image: np.ndarray
    mask: np.ndarray
    figure_mask: np.ndarray
    pose: Pose
    camid: int

    @property
    def bbox(self) -> tuple[int, int, int, int] | None:
        """``(x0, y0, x1, y1)`` (inclusive) of the visible person, or None when nothing is visible."""
        return mask_bbox(self.mask)


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive bounding box of the non-zero pixels of ``mask``."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def render_image(who: Identity, camera: Camera, rng: np.random.Generator, height: int = 256, width: int = 128,
                 background: str = "clutter", occluders: bool = True, noise: bool = True) -> Rendered:
    """Render one image of ``who`` seen by ``camera``; all per-image randomness comes from ``rng``.

    ``background="plain"`` fills the scene with :data:`PLAIN_BACKGROUND` instead of clutter (for
    tests of mask alignment); ``occluders=False`` never draws an occluder; ``noise=False`` skips
    sensor noise. The camera's colour cast and blur apply to the whole image either way.
    """
    pose = sample_pose(rng, 0.3 if occluders else 0.0)
    image = np.empty((height, width, 3), dtype=np.uint8)
    if background == "plain":
        image[:] = PLAIN_BACKGROUND
    elif background == "clutter":
        draw_background(image, camera, rng)
    else:
        raise ValueError(f"background must be 'clutter' or 'plain', got {background!r}")
    mask = np.zeros((height, width), dtype=np.uint8)
    cx, top, ph = draw_person(image, mask, who, pose)
    figure = mask.copy()
    if pose.occluder is not None:
        draw_occluder(Painter(image, mask, cx, top, ph, 1), pose.occluder, rng)
    image = apply_camera(image, camera, pose, rng, noise)
    return Rendered(image=image, mask=mask, figure_mask=figure, pose=pose, camid=camera.camid)
