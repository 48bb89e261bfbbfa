"""Procedural pedestrians drawn with OpenCV: one image and its person mask at a time.

The project's embedded demo data (docs/design.md, sec. 6): people built from head, torso, arms and legs
with clothing colours and patterns (stripes, an open jacket, logos seen only from the front,
backpacks seen only from behind, straps from the front), hats and bags, a walking pose, and
front/back/side views; per-camera colour casts, brightness, blur and noise; cluttered camera
scenes; occluders in front of the person; bounding-box jitter in scale and position (the
misalignment CASN's alignment step is for, paper sec. 3.2).

What stays fixed per identity (:class:`Identity`, drawn from ``(seed, pid)``): body shape, skin,
hair, clothing colours, pattern, logo, hat and bags. What changes per image (drawn from the image's
own generator): view, walking phase, camera, background, occluder and box jitter.

The scene around the person (cameras, backgrounds, occluders, the whole image) is
:mod:`casn_core.data.scene`. Images are BGR ``uint8`` (OpenCV order). The mask is ``uint8`` 0/255: the visible person,
including hair, hat and carried bags, minus what an occluder hides.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

SHIFT = 4
"""Sub-pixel bits of OpenCV drawing coordinates."""
_ONE = 1 << SHIFT
VIEWS = ("front", "back", "left", "right")
PLAIN_BACKGROUND = (255, 0, 255)
"""BGR colour of ``background="plain"`` (magenta: no clothing colour is near it)."""

# RGB palettes; dark clothes are listed more than once so they are drawn more often.
_UPPER = [(25, 25, 28), (25, 25, 28), (60, 60, 65), (128, 128, 128), (190, 190, 190), (235, 235, 230),
          (235, 235, 230), (30, 40, 90), (40, 80, 170), (120, 170, 220), (180, 30, 35), (110, 20, 30),
          (230, 140, 170), (40, 120, 60), (100, 110, 50), (230, 200, 50), (230, 120, 30), (100, 50, 130),
          (110, 70, 40), (190, 170, 120), (30, 130, 130), (215, 200, 170)]
_LOWER = [(25, 25, 28), (25, 25, 28), (55, 55, 60), (30, 40, 80), (60, 80, 120), (60, 80, 120),
          (120, 120, 125), (190, 170, 120), (100, 70, 45), (230, 230, 225), (215, 200, 170), (90, 100, 50),
          (150, 30, 40)]
_SHOES = [(20, 20, 20), (40, 35, 30), (230, 230, 230), (90, 60, 40), (120, 120, 130), (30, 40, 90)]
_SKIN = [(240, 205, 180), (225, 180, 150), (200, 150, 110), (160, 110, 75), (110, 75, 50), (85, 60, 40)]
_HAIR = [(20, 15, 12), (20, 15, 12), (60, 40, 25), (110, 75, 40), (200, 170, 110), (140, 140, 140), (120, 50, 25)]
_ACCENT = [(200, 30, 30), (240, 240, 240), (20, 20, 20), (240, 200, 30), (30, 90, 200), (40, 160, 70), (240, 120, 20)]


def _bgr(rgb) -> tuple[int, int, int]:
    return int(rgb[2]), int(rgb[1]), int(rgb[0])


def _jitter(rng: np.random.Generator, rgb, spread: float = 12.0) -> tuple[int, int, int]:
    values = np.clip(np.asarray(rgb, dtype=np.float64) + rng.normal(0.0, spread, 3), 0, 255)
    return _bgr(np.round(values).astype(int))


def _pick(rng: np.random.Generator, palette) -> tuple:
    return palette[int(rng.integers(len(palette)))]


def shade(colour, factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(c * factor)))) for c in colour)


@dataclass(frozen=True)
class Identity:
    """Appearance that stays the same in every image of one person (colours BGR)."""

    pid: int
    skin: tuple
    hair: tuple
    hair_style: str  # short, long, bald
    head_scale: float
    shoulder: float  # shoulder half-width, in body heights
    hip_ratio: float
    limb_width: float
    leg_scale: float
    upper: tuple
    upper2: tuple
    sleeves: str  # long, short
    pattern: str  # plain, hstripes, vstripes, jacket, twotone
    stripe_period: float
    logo: tuple | None  # (shape, BGR colour); drawn on the chest, front view only
    coat: bool
    lower: tuple
    lower_style: str  # trousers, shorts, skirt
    shoes: tuple
    hat: tuple | None  # (style, BGR colour)
    backpack: tuple | None  # BGR colour
    bag: tuple | None  # (style, side +1/-1, BGR colour)

    def describe(self) -> dict:
        """Attributes as plain JSON values (for the manifest)."""
        rgb = lambda c: [int(c[2]), int(c[1]), int(c[0])]  # noqa: E731
        return {
            "upper_rgb": rgb(self.upper), "pattern": self.pattern, "sleeves": self.sleeves, "coat": self.coat,
            "logo": None if self.logo is None else self.logo[0], "lower_rgb": rgb(self.lower),
            "lower_style": self.lower_style, "hair_style": self.hair_style,
            "hat": None if self.hat is None else self.hat[0], "backpack": self.backpack is not None,
            "bag": None if self.bag is None else self.bag[0],
        }


def make_identity(seed: int, pid: int) -> Identity:
    """The appearance of person ``pid`` (deterministic in ``(seed, pid)``)."""
    rng = np.random.default_rng([int(seed), 0, int(pid)])
    upper = _pick(rng, _UPPER)
    upper2 = _pick(rng, [c for c in _UPPER if sum(abs(a - b) for a, b in zip(c, upper)) > 150])
    pattern = str(rng.choice(["plain", "hstripes", "vstripes", "jacket", "twotone"], p=[0.4, 0.2, 0.1, 0.15, 0.15]))
    logo = None
    if pattern in ("plain", "twotone") and rng.random() < 0.45:
        logo = (str(rng.choice(["circle", "square", "triangle", "star"])), _bgr(_pick(rng, _ACCENT)))
    hat = None
    if rng.random() < 0.25:
        hat = (str(rng.choice(["cap", "beanie"])), _jitter(rng, _pick(rng, _UPPER + _ACCENT)))
    backpack = _jitter(rng, _pick(rng, _UPPER + _ACCENT)) if rng.random() < 0.35 else None
    bag = None
    if rng.random() < 0.3:
        bag = (str(rng.choice(["shoulder", "hand"])), 1 if rng.random() < 0.5 else -1,
               _jitter(rng, _pick(rng, _LOWER + _ACCENT)))
    lower_style = str(rng.choice(["trousers", "shorts", "skirt"], p=[0.7, 0.18, 0.12]))
    return Identity(
        pid=int(pid),
        skin=_jitter(rng, _pick(rng, _SKIN), 6),
        hair=_jitter(rng, _pick(rng, _HAIR), 6),
        hair_style=str(rng.choice(["short", "long", "bald"], p=[0.6, 0.32, 0.08])),
        head_scale=float(rng.uniform(0.9, 1.1)),
        shoulder=float(rng.uniform(0.10, 0.14)),
        hip_ratio=float(rng.uniform(0.72, 0.92)),
        limb_width=float(rng.uniform(0.85, 1.2)),
        leg_scale=float(rng.uniform(0.95, 1.04)),
        upper=_jitter(rng, upper),
        upper2=_jitter(rng, upper2),
        sleeves=str(rng.choice(["long", "short"], p=[0.6, 0.4])),
        pattern=pattern,
        stripe_period=float(rng.uniform(0.035, 0.07)),
        logo=logo,
        coat=bool(rng.random() < 0.12),
        lower=_jitter(rng, _pick(rng, _LOWER)),
        lower_style=lower_style,
        shoes=_jitter(rng, _pick(rng, _SHOES), 6),
        hat=hat,
        backpack=backpack,
        bag=bag,
    )


@dataclass(frozen=True)
class Pose:
    """What changes per image: view, walking phase and stride, box jitter, occluder."""

    view: str
    phase: float
    stride: float
    scale: float  # person height / image height
    dx: float  # horizontal offset, in image widths
    dy: float  # vertical offset, in image heights
    occluder: str | None  # pole, low, side, or None
    brightness: float


def sample_pose(rng: np.random.Generator, occluder_probability: float = 0.3) -> Pose:
    """Per-image factors."""
    view = VIEWS[int(rng.choice(4, p=[0.3, 0.3, 0.2, 0.2]))]
    occluder = None
    if rng.random() < occluder_probability:
        occluder = ("pole", "low", "side")[int(rng.integers(3))]
    return Pose(view=view, phase=float(rng.uniform(0, 2 * math.pi)), stride=float(rng.uniform(0.05, 0.45)),
                scale=float(rng.uniform(0.8, 0.98)), dx=float(rng.uniform(-0.07, 0.07)),
                dy=float(rng.uniform(-0.07, 0.07)), occluder=occluder, brightness=float(rng.normal(0, 8)))


class Painter:
    """Draws on the image (anti-aliased) and the mask (255 for the person, 0 for an occluder) at once.

    Body coordinates are in body heights: ``y`` 0 at the top of the head, 1 at the soles; ``x``
    across the body (front/back) or forward (side views), mirrored by ``sx``.
    """

    def __init__(self, image: np.ndarray, mask: np.ndarray, cx: float, top: float, ph: float, sx: int) -> None:
        self.image, self.mask = image, mask
        self.cx, self.top, self.ph, self.sx = cx, top, ph, sx

    def pt(self, x: float, y: float) -> tuple[int, int]:
        return (int(round((self.cx + self.sx * x * self.ph) * _ONE)), int(round((self.top + y * self.ph) * _ONE)))

    def _px(self, length: float) -> int:
        return max(1, int(round(length * self.ph)))

    def poly(self, points, colour, person: bool = True) -> None:
        if len(points) < 3:
            return
        pts = np.array([self.pt(x, y) for x, y in points], dtype=np.int32)
        cv2.fillPoly(self.image, [pts], colour, cv2.LINE_AA, SHIFT)
        cv2.fillPoly(self.mask, [pts], 255 if person else 0, cv2.LINE_8, SHIFT)

    def line(self, p1, p2, width: float, colour, person: bool = True) -> None:
        a, b, t = self.pt(*p1), self.pt(*p2), self._px(width)
        cv2.line(self.image, a, b, colour, t, cv2.LINE_AA, SHIFT)
        cv2.line(self.mask, a, b, 255 if person else 0, t, cv2.LINE_8, SHIFT)

    def ellipse(self, centre, axes, colour, person: bool = True) -> None:
        c = self.pt(*centre)
        ax = (max(1, int(round(axes[0] * self.ph * _ONE))), max(1, int(round(axes[1] * self.ph * _ONE))))
        cv2.ellipse(self.image, c, ax, 0, 0, 360, colour, -1, cv2.LINE_AA, SHIFT)
        cv2.ellipse(self.mask, c, ax, 0, 0, 360, 255 if person else 0, -1, cv2.LINE_8, SHIFT)


def _clip(points, axis: int, lo: float, hi: float) -> list:
    """Sutherland-Hodgman clip of a polygon to ``lo <= coordinate[axis] <= hi``."""
    for bound, keep in ((lo, lambda v: v >= lo), (hi, lambda v: v <= hi)):
        out = []
        n = len(points)
        for i in range(n):
            p, q = points[i], points[(i + 1) % n]
            pin, qin = keep(p[axis]), keep(q[axis])
            if pin:
                out.append(p)
            if pin != qin:
                t = (bound - p[axis]) / (q[axis] - p[axis])
                out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
        points = out
        if not points:
            break
    return points


def _draw_logo(p: Painter, shape: str, colour, x: float, y: float, r: float) -> None:
    if shape == "circle":
        p.ellipse((x, y), (r, r), colour)
    elif shape == "square":
        p.poly([(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)], colour)
    elif shape == "triangle":
        p.poly([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], colour)
    else:  # star as two triangles
        p.poly([(x, y - r), (x + r * 0.9, y + r * 0.6), (x - r * 0.9, y + r * 0.6)], colour)
        p.poly([(x, y + r), (x + r * 0.9, y - r * 0.55), (x - r * 0.9, y - r * 0.55)], colour)


def draw_person(image: np.ndarray, mask: np.ndarray, who: Identity, pose: Pose) -> tuple[float, float, float]:
    """Draw ``who`` in ``pose`` onto ``image`` and ``mask``; returns ``(centre x, top y, height)`` in pixels."""
    h, w = image.shape[:2]
    ph = pose.scale * h
    cx = w / 2 + pose.dx * w
    top = (h - ph) / 2 + pose.dy * h
    side = pose.view in ("left", "right")
    sx = {"front": 1, "back": -1, "left": -1, "right": 1}[pose.view]
    p = Painter(image, mask, cx, top, ph, sx)

    ys, yh = 0.165, 0.50
    sw = who.shoulder
    hw = sw * who.hip_ratio
    lw = who.limb_width
    l1, l2 = 0.235 * who.leg_scale, 0.225 * who.leg_scale
    trouser_shin = who.lower if who.lower_style == "trousers" else who.skin
    thigh_colour = who.skin if who.lower_style == "skirt" else who.lower

    def leg(i: int, dark: float) -> None:
        swing = pose.stride * math.sin(pose.phase + i * math.pi)
        if side:
            knee = (l1 * math.sin(swing), yh + l1 * math.cos(swing))
            shin_angle = 1.6 * swing if swing < 0 else 0.5 * swing
            ankle = (knee[0] + l2 * math.sin(shin_angle), knee[1] + l2 * math.cos(shin_angle))
            hip = (0.0, yh - 0.01)
            foot = ((ankle[0] + 0.03, ankle[1] + 0.012), (0.042, 0.018))
        else:
            s = -1 if i == 0 else 1
            hip = (s * hw * 0.5, yh - 0.01)
            knee = (s * (hw * 0.5 + 0.006), yh + l1 * math.cos(swing))
            ankle = (s * (hw * 0.5 + 0.012), knee[1] + l2 * math.cos(0.5 * swing))
            foot = ((ankle[0], ankle[1] + 0.012), (0.03, 0.017))
        p.line(hip, knee, 0.078 * lw, shade(thigh_colour, dark))
        p.line(knee, ankle, 0.06 * lw, shade(trouser_shin, dark))
        if who.lower_style == "shorts":
            mid = ((hip[0] + knee[0] * 3) / 4, (hip[1] + knee[1] * 3) / 4)
            p.line(hip, mid, 0.082 * lw, shade(who.lower, dark))
        p.ellipse(*foot, shade(who.shoes, dark))

    def arm(i: int, dark: float) -> tuple[float, float]:
        swing = -0.8 * pose.stride * math.sin(pose.phase + i * math.pi)
        ua, fa = 0.165, 0.155
        if side:
            shoulder = (0.0, ys + 0.025)
            elbow = (ua * math.sin(swing), shoulder[1] + ua * math.cos(swing))
            bend = swing + 0.25 + 0.3 * abs(swing)
            hand = (elbow[0] + fa * math.sin(bend), elbow[1] + fa * math.cos(bend))
        else:
            s = -1 if i == 0 else 1
            shoulder = (s * (sw - 0.018), ys + 0.025)
            elbow = (s * (sw + 0.005), shoulder[1] + ua * math.cos(swing))
            hand = (s * (sw + 0.012), elbow[1] + fa * math.cos(0.7 * swing))
        sleeve = shade(who.upper, dark)
        skin = shade(who.skin, dark)
        if who.sleeves == "long" or who.coat:
            p.line(shoulder, elbow, 0.052 * lw, sleeve)
            p.line(elbow, hand, 0.044 * lw, sleeve)
        else:
            p.line(shoulder, elbow, 0.046 * lw, skin)
            p.line(elbow, hand, 0.04 * lw, skin)
            mid = ((shoulder[0] + elbow[0]) / 2, (shoulder[1] + elbow[1]) / 2)
            p.line(shoulder, mid, 0.056 * lw, sleeve)
        p.ellipse(hand, (0.021, 0.021), skin)
        return hand

    def bag(hand: tuple[float, float] | None) -> None:
        style, bag_side, colour = who.bag
        s = bag_side if not side else 0
        if style == "hand" and hand is not None:
            x, y = hand
            p.line((x, y), (x, y + 0.03), 0.008, shade(colour, 0.7))
            p.poly([(x - 0.04, y + 0.025), (x + 0.04, y + 0.025), (x + 0.045, y + 0.11), (x - 0.045, y + 0.11)], colour)
        elif style == "shoulder":
            bx = s * (hw + 0.035) if not side else -0.01
            if not side:
                p.line((-s * (sw - 0.03), ys), (bx, yh - 0.02), 0.012, shade(colour, 0.7))
            p.poly([(bx - 0.045, yh - 0.03), (bx + 0.045, yh - 0.03), (bx + 0.045, yh + 0.07),
                    (bx - 0.045, yh + 0.07)], colour)

    def torso() -> None:
        if side:
            outline = [(-0.6 * sw, ys - 0.01), (0.45 * sw, ys - 0.01), (0.55 * sw, ys + 0.05),
                       (0.5 * sw, yh + 0.02), (-0.55 * hw - 0.01, yh + 0.02), (-0.62 * sw, ys + 0.05)]
        else:
            outline = [(-0.8 * sw, ys - 0.012), (0.8 * sw, ys - 0.012), (sw, ys + 0.025), (hw, yh + 0.02),
                       (-hw, yh + 0.02), (-sw, ys + 0.025)]
        if who.coat:
            bottom = yh + 0.22
            outline[3] = (outline[3][0] * 1.2, bottom)
            outline[4] = (outline[4][0] * 1.2, bottom)
        p.poly(outline, who.upper)
        x_lo = min(x for x, _ in outline)
        x_hi = max(x for x, _ in outline)
        bottom = max(y for _, y in outline)
        # light from one side of the scene: the other third of the torso is darker
        p.poly(_clip(outline, 0, x_lo + 0.66 * (x_hi - x_lo), x_hi + 1), shade(who.upper, 0.84))
        if who.pattern == "hstripes":
            y = ys + who.stripe_period * 0.5
            while y < bottom:
                p.poly(_clip(outline, 1, y, y + who.stripe_period * 0.45), who.upper2)
                y += who.stripe_period
        elif who.pattern == "vstripes" and not side:
            x = x_lo + who.stripe_period * 0.3
            while x < x_hi:
                p.poly(_clip(outline, 0, x, x + who.stripe_period * 0.35), who.upper2)
                x += who.stripe_period * 0.8
        elif who.pattern == "twotone":
            p.poly(_clip(outline, 1, ys + 0.17, bottom + 1), who.upper2)
        elif who.pattern == "jacket" and pose.view == "front":
            p.poly(_clip(outline, 0, -0.3 * sw, 0.3 * sw), who.upper2)
        if who.logo is not None and pose.view == "front":
            _draw_logo(p, who.logo[0], who.logo[1], 0.0, ys + 0.1, 0.033)
        if who.backpack is not None:
            pack = who.backpack
            if pose.view == "back":
                p.poly([(-0.72 * sw, ys + 0.03), (0.72 * sw, ys + 0.03), (0.76 * sw, yh - 0.04),
                        (-0.76 * sw, yh - 0.04)], pack)
                p.poly([(-0.5 * sw, yh - 0.14), (0.5 * sw, yh - 0.14), (0.5 * sw, yh - 0.06),
                        (-0.5 * sw, yh - 0.06)], shade(pack, 0.75))
            elif side:
                back = -0.6 * sw
                p.poly([(back + 0.01, ys + 0.03), (back - 0.075, ys + 0.04), (back - 0.08, yh - 0.05),
                        (back + 0.01, yh - 0.05)], pack)
            else:
                for s in (-1, 1):
                    p.line((s * 0.55 * sw, ys - 0.005), (s * 0.5 * sw, ys + 0.16), 0.014, shade(pack, 0.7))

    def head() -> None:
        hs = who.head_scale
        if who.hair_style == "long" and pose.view == "front":
            p.poly([(-0.055 * hs, 0.07), (0.055 * hs, 0.07), (0.058 * hs, 0.19), (-0.058 * hs, 0.19)], who.hair)
        p.line((0.0, 0.12), (0.0, ys + 0.005), 0.036, who.skin)
        centre, axes = (0.0, 0.075), (0.047 * hs, 0.062 * hs)
        if pose.view == "back":
            p.ellipse(centre, axes, who.skin)
            if who.hair_style != "bald":
                p.ellipse((0.0, 0.07), (0.05 * hs, 0.062 * hs), who.hair)
                if who.hair_style == "long":
                    p.poly([(-0.05 * hs, 0.07), (0.05 * hs, 0.07), (0.055 * hs, 0.2), (-0.055 * hs, 0.2)], who.hair)
        elif side:
            if who.hair_style == "long":
                p.poly([(-0.05 * hs, 0.07), (0.0, 0.07), (-0.01, 0.19), (-0.055 * hs, 0.19)], who.hair)
            p.ellipse(centre, axes, who.skin if who.hair_style == "bald" else who.hair)
            p.ellipse((0.012 * hs, 0.085), (0.038 * hs, 0.05 * hs), who.skin)
        else:
            p.ellipse(centre, axes, who.skin if who.hair_style == "bald" else who.hair)
            p.ellipse((0.0, 0.086), (0.042 * hs, 0.052 * hs), who.skin)
            if ph >= 80:
                for s in (-1, 1):
                    p.ellipse((s * 0.016 * hs, 0.08), (0.005, 0.004), (40, 30, 30))
        if who.hat is not None:
            style, colour = who.hat
            if style == "beanie":
                p.ellipse((0.0, 0.04), (0.053 * hs, 0.036 * hs), colour)
            else:
                p.ellipse((0.0, 0.04), (0.05 * hs, 0.03 * hs), colour)
                if side:
                    p.line((0.0, 0.052), (0.08 * hs, 0.055), 0.012, shade(colour, 0.8))
                elif pose.view == "front":
                    p.ellipse((0.0, 0.056), (0.055 * hs, 0.01 * hs), shade(colour, 0.8))

    if side:
        # the person faces +x; facing right shows the left side (i = 1), facing left the right side
        near = 1 if pose.view == "right" else 0
        far = 1 - near
        bag_near = who.bag is not None and (who.bag[1] > 0) == (near == 1)
        arm(far, 0.75)
        if who.bag is not None and not bag_near:
            bag(None)
        leg(far, 0.8)
        leg(near, 1.0)
        torso()
        head()
        hand = arm(near, 1.0)
        if who.bag is not None and bag_near:
            bag(hand)
    else:
        leg(0, 1.0)
        leg(1, 1.0)
        torso()
        hands = [arm(0, 1.0), arm(1, 1.0)]
        head()
        if who.bag is not None:
            bag(hands[0 if who.bag[1] < 0 else 1])
    return cx, top, ph


