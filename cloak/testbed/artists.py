"""Procedural artists: deterministic painting styles that differ in brushwork and texture.

Each style renders the same kind of *content* (a landscape: a sky, a horizon of hills or sea, a sun or moon,
sometimes trees) with a per-seed palette, through its own mark-making: dots, hatching, washes, flat blocks,
Voronoi glass with dark leading, strokes along a flow field, pixels, rings, ... A style is therefore
recognisable by texture, not by colour, which is what style mimicry copies and what a cloak must protect.

Everything is vectorised numpy on ``(H, W)`` grids and deterministic by ``(style, seed)`` through an explicit
``numpy.random.Generator``; thousands of 64 px images take seconds. Images are float32 ``(H, W, 3)`` in [0, 1].

``HELD_OUT`` styles play the artists to protect: the base model never sees them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from cloak.errors import ConfigError

Array = np.ndarray


@dataclass(frozen=True)
class Painting:
    """One procedural artwork.

    Attributes:
        image: float32 ``(H, W, 3)`` in [0, 1].
        caption: "a painting in the style of <style>, <content words>".
        style: the style's name (a key of ``STYLES``).
        seed: the seed that drew content and palette.
    """

    image: Array
    caption: str
    style: str
    seed: int


@dataclass(frozen=True)
class _Content:
    """Per-seed scene shared by every style: a tone field, a region map and words for the caption."""

    tone: Array  # (H, W) in [0, 1]: 0 = darkest palette colour, 1 = lightest
    region: Array  # (H, W) int: 0 sky, 1 ground, 2 sun/moon, 3 trees
    words: str


# ---------------------------------------------------------------------------------------------- helpers


def _grid(size: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates ``(y, x)`` in [0, 1), each ``(size, size)``."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c, indexing="ij")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> Array:
    """Bilinear value noise in [0, 1] with ``cells`` random knots per side, ``(size, size)``."""
    knots = rng.random((cells + 1, cells + 1), dtype=np.float32)
    pos = np.linspace(0, cells, size, dtype=np.float32)
    i0 = np.minimum(pos.astype(int), cells - 1)
    f = pos - i0
    f = f * f * (3 - 2 * f)  # smoothstep, so the knots do not show as creases
    rows = knots[i0] * (1 - f)[:, None] + knots[i0 + 1] * f[:, None]  # (size, cells+1)
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _hsv_to_rgb(h: Array, s: Array, v: Array) -> Array:
    """Vectorised HSV -> RGB, all in [0, 1]; returns ``(..., 3)``."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros((*np.shape(h), 3), dtype=np.float32)
    for k, (r, g, b) in enumerate(choices):
        m = i == k
        out[..., 0] = np.where(m, r, out[..., 0])
        out[..., 1] = np.where(m, g, out[..., 1])
        out[..., 2] = np.where(m, b, out[..., 2])
    return out


def _palette(rng: np.random.Generator, n: int = 5) -> Array:
    """``n`` colours ordered dark -> light around a random hue (analogous or complementary), ``(n, 3)``."""
    base = rng.random()
    spread = rng.choice([0.08, 0.5]) * rng.uniform(0.6, 1.0)
    hues = (base + spread * np.linspace(-1, 1, n) + rng.normal(0, 0.03, n)) % 1.0
    sat = rng.uniform(0.35, 0.9, n)
    val = np.linspace(rng.uniform(0.12, 0.3), rng.uniform(0.85, 1.0), n)
    return _hsv_to_rgb(hues.astype(np.float32), sat.astype(np.float32), val.astype(np.float32))


def _apply_palette(tone: Array, pal: Array) -> Array:
    """Map a tone field in [0, 1] through a dark->light palette by linear interpolation, ``(H, W, 3)``."""
    n = len(pal)
    t = np.clip(tone, 0, 1) * (n - 1)
    i0 = np.minimum(t.astype(int), n - 2)
    f = (t - i0)[..., None]
    return pal[i0] * (1 - f) + pal[i0 + 1] * f


def _content(seed: int, size: int) -> _Content:
    """The scene for ``seed`` (independent of the style, so one seed paints the same scene in every style)."""
    rng = np.random.default_rng((0x5CE7E, seed))
    y, x = _grid(size)
    sea = rng.random() < 0.35
    horizon = rng.uniform(0.45, 0.75)
    if sea:
        line = horizon + 0.015 * np.sin(2 * np.pi * (x * rng.uniform(3, 6) + rng.random()))
    else:
        line = horizon + np.sum(
            [
                rng.uniform(0.03, 0.12) / k * np.sin(2 * np.pi * (k * x * rng.uniform(0.7, 1.4) + rng.random()))
                for k in (1, 2, 3)
            ],
            axis=0,
        )
    ground = y > line
    tone = np.where(ground, 0.2 + 0.35 * (1 - (y - line) / (1 - line + 1e-3)), 0.55 + 0.35 * (1 - y / horizon))
    region = ground.astype(np.int64)
    words = ["the sea" if sea else "hills"]

    moon = rng.random() < 0.4
    cy, cx, r = rng.uniform(0.12, horizon - 0.12), rng.uniform(0.15, 0.85), rng.uniform(0.07, 0.16)
    disc = ((y - cy) ** 2 + (x - cx) ** 2 < r * r) & ~ground
    tone = np.where(disc, 0.97 if not moon else 0.85, tone)
    region = np.where(disc, 2, region)
    words.insert(0, "a moon over" if moon else "a sun over")

    n_trees = 0 if sea else int(rng.integers(0, 4))
    for _ in range(n_trees):
        tx = rng.uniform(0.1, 0.9)
        base = float(np.interp(tx, x[0], line[0] if line.ndim == 2 else line))
        th = rng.uniform(0.12, 0.25)
        trunk = (np.abs(x - tx) < 0.015) & (y < base + 0.02) & (y > base - th)
        crown = (y - (base - th)) ** 2 + ((x - tx) * 1.3) ** 2 < (th * 0.45) ** 2
        tree = trunk | crown
        tone = np.where(tree, 0.05, tone)
        region = np.where(tree, 3, region)
    if n_trees:
        words.append("with trees" if n_trees > 1 else "with a tree")
    return _Content(tone=tone.astype(np.float32), region=region, words=" ".join(words))


def _shade(img: Array, amount: Array) -> Array:
    """Multiply colours by ``amount`` (broadcast over channels)."""
    return img * amount[..., None]


# ------------------------------------------------------------------------------------------------ styles
# Each style: (content, palette, rng, size) -> (H, W, 3). The rng is the style's own stream for this seed.


def _pointillism(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Round dots of pure colour on a jittered 4 px grid over pale paper."""
    y, x = _grid(size)
    step = 5.0 / size
    paper = np.array([0.96, 0.94, 0.88], np.float32)
    out = np.broadcast_to(paper, (size, size, 3)).copy()
    for oy, ox in ((0.0, 0.0), (0.5, 0.5)):  # two interleaved dot lattices, the second on top
        jy = _smooth_noise(rng, size, 12) - 0.5
        jx = _smooth_noise(rng, size, 12) - 0.5
        gy = (y / step + oy + 0.5 * jy) % 1.0 - 0.5
        gx = (x / step + ox + 0.5 * jx) % 1.0 - 0.5
        dot = gy**2 + gx**2 < 0.36**2
        tone = c.tone + 0.3 * (_smooth_noise(rng, size, 13) - 0.5)
        out = np.where(dot[..., None], _apply_palette(tone, pal), out)
    return out


def _ink_hatching(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Two-colour ink: parallel hatching whose density follows darkness, cross-hatched in the shadows."""
    y, x = _grid(size)
    ink, paper = pal[0] * 0.5, np.array([0.97, 0.95, 0.9], np.float32) * 0.5 + pal[-1] * 0.5
    dark = 1 - c.tone
    theta = rng.uniform(0, np.pi)
    period = 4.0 / size
    wobble = 0.25 * (_smooth_noise(rng, size, 6) - 0.5)
    u = ((x * np.cos(theta) + y * np.sin(theta)) / period + wobble) % 1.0
    v = ((x * np.cos(theta + np.pi / 2) + y * np.sin(theta + np.pi / 2)) / period + wobble) % 1.0
    lines = (u < 0.55 * dark) | ((v < 0.55 * (dark - 0.45) * 2) & (dark > 0.45))
    out = np.where(lines[..., None], ink, paper)
    return out.astype(np.float32)


def _watercolour(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Soft translucent washes: blotchy pigment density, darker pooled edges and paper grain."""
    tone = c.tone + 0.25 * (_smooth_noise(rng, size, 5) - 0.5)
    colour = _apply_palette(tone, pal)
    density = 0.55 + 0.45 * _smooth_noise(rng, size, 9)
    # edge darkening: pigment pools where the tone changes
    gy, gx = np.gradient(c.tone)
    edge = np.clip(np.hypot(gy, gx) * size * 0.08, 0, 1)
    paper = np.array([0.98, 0.97, 0.93], np.float32)
    wash = paper * (1 - density[..., None]) + colour * density[..., None]
    wash = _shade(wash, 1 - 0.35 * edge)
    grain = 1 + 0.04 * (_smooth_noise(rng, size, 24) - 0.5)
    return _shade(wash, grain)


def _flat_blocks(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Hard-edged flat colour: the tone quantised to 4 levels and cut by straight random half-planes."""
    y, x = _grid(size)
    level = np.floor(np.clip(c.tone, 0, 0.999) * 4) / 3
    for _ in range(3):
        a = rng.uniform(0, 2 * np.pi)
        d = rng.uniform(0.3, 0.7)
        side = (x - 0.5) * np.cos(a) + (y - 0.5) * np.sin(a) > d - 0.5
        level = np.where(side, 1 - level * 0.8, level)
    return _apply_palette(level, pal)


def _stained_glass(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Voronoi cells of saturated flat glass, each coloured by the scene at its centre, with dark leading."""
    y, x = _grid(size)
    k = int(rng.integers(28, 44))
    py, px = rng.random(k, dtype=np.float32), rng.random(k, dtype=np.float32)
    d = (y[None] - py[:, None, None]) ** 2 + (x[None] - px[:, None, None]) ** 2  # (k, H, W)
    order = np.argsort(d, axis=0)
    nearest, second = order[0], order[1]
    d1 = np.sqrt(np.take_along_axis(d, nearest[None], 0)[0])
    d2 = np.sqrt(np.take_along_axis(d, second[None], 0)[0])
    iy = np.clip((py * size).astype(int), 0, size - 1)
    ix = np.clip((px * size).astype(int), 0, size - 1)
    cell_tone = c.tone[iy, ix] + rng.normal(0, 0.12, k).astype(np.float32)
    glass = _apply_palette(cell_tone[nearest], pal)
    glass = _shade(glass, 0.85 + 0.3 * (1 - np.clip(d1 * 6, 0, 1)))  # light through the middle of a pane
    lead = (d2 - d1) < 1.5 / size
    return np.where(lead[..., None], np.float32(0.08), np.clip(glass, 0, 1))


def _impasto(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Thick strokes along a swirling flow field: ridged paint that catches light on one side."""
    y, x = _grid(size)
    angle = 2 * np.pi * _smooth_noise(rng, size, 4) * 1.5
    # across-stroke coordinate in the local frame; strokes are narrow across, long along the flow
    across = -x * np.sin(angle) + y * np.cos(angle)
    along = x * np.cos(angle) + y * np.sin(angle)
    jitter = _smooth_noise(rng, size, 16)
    stripe = np.sin(2 * np.pi * (across * size / 5 + 2 * jitter))
    breaks = np.sin(2 * np.pi * (along * size / 14 + 3 * jitter))
    ridge = 0.75 + 0.3 * stripe * (0.6 + 0.4 * breaks)
    tone = c.tone + 0.12 * (np.floor(across * size / 5 + 2 * jitter) % 3 - 1)
    return np.clip(_shade(_apply_palette(tone, pal), ridge), 0, 1)


def _pixel_art(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Big square pixels (4 or 8 px each), a 4-colour palette, no anti-aliasing."""
    block = int(rng.choice([4, 8]))
    small = c.tone[block // 2 :: block, block // 2 :: block]
    levels = np.round(np.clip(small, 0, 1) * 3) / 3
    big = np.repeat(np.repeat(levels, block, 0), block, 1)[:size, :size]
    return _apply_palette(big, pal[[0, 1, 3, 4]])


def _rings(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Concentric bands around a few centres, the band colour shifted by the scene's tone."""
    y, x = _grid(size)
    cy, cx = rng.uniform(0.2, 0.8, 2)
    r = np.hypot(y - cy, x - cx)
    band = (r * size / 5.0 + 0.8 * c.tone * 3) % 1.0
    tone = np.where(band < 0.5, c.tone * 0.7, c.tone * 0.7 + 0.3)
    return _apply_palette(tone, pal)


def _mosaic(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Square tesserae with light grout lines; each tile one colour with a small random shift."""
    tile = 6
    n = -(-size // tile)
    ty = np.minimum(np.arange(size) // tile, n - 1)
    centre = np.minimum(ty * tile + tile // 2, size - 1)
    tone = c.tone[centre[:, None], centre[None, :]] + rng.normal(0, 0.07, (n, n)).astype(np.float32)[ty][:, ty]
    out = _apply_palette(tone, pal)
    grout = ((np.arange(size) % tile) == 0)[:, None] | ((np.arange(size) % tile) == 0)[None, :]
    return np.where(grout[..., None], np.float32(0.82), out)


def _halftone(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Pop-art print: dots on a rotated grid whose radius grows with darkness, on a flat light ground."""
    y, x = _grid(size)
    a = rng.uniform(0, np.pi / 2)
    u = (x * np.cos(a) + y * np.sin(a)) * size / 5.0
    v = (-x * np.sin(a) + y * np.cos(a)) * size / 5.0
    du, dv = u % 1.0 - 0.5, v % 1.0 - 0.5
    radius = 0.62 * np.sqrt(np.clip(1 - c.tone, 0, 1))
    dot = du**2 + dv**2 < radius**2
    ink, ground = pal[1], pal[-1] * 0.6 + 0.4
    return np.where(dot[..., None], ink, ground).astype(np.float32)


def _scribble(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Crayon: colour laid in one slanted direction with waxy gaps where the paper shows through."""
    y, x = _grid(size)
    a = rng.uniform(-0.4, 0.4) + np.pi / 4
    streak = np.sin(2 * np.pi * ((x * np.cos(a) + y * np.sin(a)) * size / 2.5)) * 0.5 + 0.5
    wax = _smooth_noise(rng, size, 16) * 0.6 + streak * 0.4
    colour = _apply_palette(c.tone, pal)
    paper = np.array([0.95, 0.93, 0.88], np.float32)
    gap = wax > 0.75
    return np.where(gap[..., None], paper, colour)


def _woodcut(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Black-and-white relief print: bold contours following the tone's level lines, gouged parallel cuts."""
    y, x = _grid(size)
    tone = c.tone + 0.06 * (_smooth_noise(rng, size, 8) - 0.5)
    contour = np.abs(((tone * 7) % 1.0) - 0.5) > 0.38
    cuts = (np.sin(2 * np.pi * (y * size / 4 + 3 * tone)) > 0.2) & (tone > 0.5)
    black = (tone < 0.35) | contour
    white = cuts & ~black
    paper = pal[-1] * 0.25 + 0.72
    ink = pal[0] * 0.3
    return np.where((black & ~white)[..., None], ink, paper).astype(np.float32)


def _marbling(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Marbled paper: veined bands bent by turbulence, coloured by the scene underneath."""
    y, x = _grid(size)
    turb = sum(_smooth_noise(rng, size, k) / k for k in (2, 4, 8)) * 2.5
    vein = np.sin(2 * np.pi * (x * 3 + y * 1.5 + turb))
    tone = c.tone * 0.6 + 0.4 * (vein * 0.5 + 0.5) ** 3
    out = _apply_palette(tone, pal)
    return np.where((np.abs(vein) < 0.08)[..., None], pal[0] * 0.6, out)


def _tartan(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Woven plaid: warp and weft bands of the palette crossing, a diagonal twill texture on top."""
    idx = np.arange(size)
    p = int(rng.integers(10, 16))
    warp = np.floor((idx % p) / p * 3).astype(int)
    band_y, band_x = warp[:, None], warp[None, :]
    base = (band_y + band_x) / 4.0
    tone = 0.5 * base + 0.5 * c.tone
    twill = ((idx[:, None] + idx[None, :]) % 4 < 2).astype(np.float32)
    return _shade(_apply_palette(tone, pal), 0.85 + 0.15 * twill)


def _cubist(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Faceted planes: overlapping translucent triangles, each shading the scene darker or lighter."""
    y, x = _grid(size)
    tone = c.tone.copy()
    for _ in range(9):
        pts = rng.random((3, 2), dtype=np.float32) * 1.2 - 0.1
        inside = np.ones((size, size), bool)
        e1, e2 = pts[1] - pts[0], pts[2] - pts[0]
        sign = np.sign(e1[0] * e2[1] - e1[1] * e2[0]) or 1.0  # orientation of the triangle
        for i in range(3):
            a, b = pts[i], pts[(i + 1) % 3]
            inside &= sign * ((b[1] - a[1]) * (y - a[0]) - (b[0] - a[0]) * (x - a[1])) <= 0
        tone = np.where(inside, tone * 0.6 + rng.uniform(0.0, 0.45), tone)
    edges = np.hypot(*np.gradient(tone)) * size > 0.8
    return np.where(edges[..., None], pal[0] * 0.5, _apply_palette(tone, pal))


def _stripes(c: _Content, pal: Array, rng: np.random.Generator, size: int) -> Array:
    """Op-art: thin horizontal stripes that bulge with the scene's tone, alternating two colours."""
    y, x = _grid(size)
    phase = y * size / 3.0 + 2.5 * c.tone + 0.5 * np.sin(2 * np.pi * x * rng.uniform(1, 3))
    on = (phase % 1.0) < 0.5
    return np.where(on[..., None], _apply_palette(c.tone * 0.5, pal), _apply_palette(0.5 + c.tone * 0.5, pal))


_PAINTERS: dict[str, Callable[[_Content, Array, np.random.Generator, int], Array]] = {
    "pointillism": _pointillism,
    "ink hatching": _ink_hatching,
    "watercolour": _watercolour,
    "flat blocks": _flat_blocks,
    "pixel art": _pixel_art,
    "concentric rings": _rings,
    "mosaic": _mosaic,
    "halftone": _halftone,
    "crayon scribble": _scribble,
    "tartan": _tartan,
    "cubism": _cubist,
    "op art stripes": _stripes,
    # held out: the artists to protect, never shown to the base model
    "stained glass": _stained_glass,
    "impasto": _impasto,
    "woodcut": _woodcut,
    "marbling": _marbling,
}

STYLES: tuple[str, ...] = tuple(_PAINTERS)
"""All style names; a style's index in this tuple is its class index for the judge."""
HELD_OUT: tuple[str, ...] = ("stained glass", "impasto", "woodcut", "marbling")
"""Styles never shown to the base model: the artists a cloak protects."""
SEEN: tuple[str, ...] = tuple(s for s in STYLES if s not in HELD_OUT)
"""Styles the base model is pretrained on."""
EVAL_SEED_OFFSET = 1_000_000
"""Seeds at or above this are reserved for evaluation; builds draw training seeds below it."""

OPTICAL_BLUR_PX = 1.0
"""Gaussian sigma (px) of the optical blur every painting is rendered through, as a photograph or scan of a
painting is: the painters draw hard-edged, aliased marks. It also sets how much pixel-level detail the testbed's
4x VAE (16x16x4 latents) must keep: without it, 1-px edges at full contrast kept the worst style's reconstruction
near 11 dB (about what 4x4 average pooling gives), far from SD's VAE on real art."""


def style_index(style: str) -> int:
    """Class index of ``style`` in ``STYLES``; raises ``ConfigError`` naming the known styles."""
    if style not in _PAINTERS:
        raise ConfigError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}.")
    return STYLES.index(style)


def paint(style: str, seed: int, size: int = 64) -> Painting:
    """Render one artwork of ``style`` for ``seed``.

    Args:
        style: a name from ``STYLES``.
        seed: any non-negative integer; content and palette are drawn from it (the same seed paints the same
            scene in every style), the style's texture from ``(style, seed)``.
        size: side in pixels, >= 32 (textures are designed for 64).

    Returns:
        A ``Painting`` with a float32 ``(size, size, 3)`` image in [0, 1] and its caption.
    """
    idx = style_index(style)
    if size < 32:
        raise ConfigError(f"`size` must be >= 32 px, got {size}.")
    if seed < 0:
        raise ConfigError(f"`seed` must be >= 0, got {seed}.")
    content = _content(seed, size)
    rng = np.random.default_rng((0xA27, idx, seed))
    pal = _palette(rng)
    image = np.clip(_PAINTERS[style](content, pal, rng, size), 0.0, 1.0)
    image = gaussian_filter(image, (OPTICAL_BLUR_PX, OPTICAL_BLUR_PX, 0), mode="reflect").astype(np.float32)
    return Painting(image=image, caption=caption(style, content.words), style=style, seed=seed)


def caption(style: str, words: str = "") -> str:
    """The training caption: "a painting in the style of <style>" plus ", <content words>" when given."""
    return f"a painting in the style of {style}" + (f", {words}" if words else "")


def paint_batch(style: str, seeds: range | list[int], size: int = 64) -> tuple[Array, list[str]]:
    """Render many artworks of one style: images ``(N, 3, size, size)`` float32 in [0, 1] and captions."""
    paintings = [paint(style, s, size) for s in seeds]
    images = np.stack([p.image.transpose(2, 0, 1) for p in paintings]) if paintings else np.zeros((0, 3, size, size))
    return images.astype(np.float32), [p.caption for p in paintings]
