"""Thin features of the synthetic scenes: rivers, canals, small ponds and tracks.

Why they exist: at 10 m, rivers, canals, roads, field edges and fish ponds are 1-4
pixels wide. A model that predicts at 1/4 of the input resolution cannot map them, and a
per-pixel classifier can; scenes without such features hide that gap (issue 23). So the
synthetic scenes draw, on top of the parcels, roads and lakes of
:mod:`gopt_geo.data.synthetic`:

* **rivers** (water, code 40): meandering, 10-30 m wide (1-3 px at 10 m), crossing the
  scene, about :data:`RIVER_SHARE` of its pixels;
* **canals** (water): straight, 10-20 m wide, on a rotated rectangular grid, broken into
  pieces, only through farmland (and unlabelled land);
* **ponds** (water): fish-pond fields, rectangles 20-50 m a side separated by 10-20 m
  dykes, aligned with the canals, only in farmland;
* **tracks** (road, code 60): gently curving rural roads 10-20 m wide (1-2 px), crossing
  the scene, with branches, over farmland, forest, villages and bare land.

Each kind has its own optical and SAR signature (:data:`THIN_SPECTRA`,
:data:`THIN_BACKSCATTER`), so that a model has something per-pixel to find: the water
kinds are dark in NIR and in both SAR bands and low in the visible (turbid rivers, canals
with vegetated banks, green fish ponds); tracks are bright grey in the optical and
*bright* in SAR. Wide roads (the ``road`` class of the parcels) are smooth asphalt that
fills its pixels and reflects away from the sensor (dark); a 1-2 px track is dominated by
what lines it -- embankments, ditches, tree rows, fences, traffic -- which returns a
double bounce, the bright lines narrow roads draw in C-band images.

Geometry: every feature is a chain of short segments in optical pixel coordinates
(row, column; row 0 is the optical grid's first row, negative rows are the SAR margin). A
pixel belongs to a feature when its centre lies closer than half the feature's width to
one of its segments (round ends, so that consecutive segments join; ponds have flat
ends: they are rectangles). The width is therefore the perpendicular width: a 1-px line
is one pixel across and 8-connected on diagonals, a 3-px river holds no 4 x 4 block of
pixels, a 2-px track no 3 x 3 block. A pixel's membership depends on its coordinates
alone, so row blocks of any size join seamlessly and the same seed gives the same
pixels. Where features cross, the higher kind wins (river > pond > canal > track).
"""

from __future__ import annotations

import math

import numpy as np

#: Kind codes, also their precedence where features cross (higher wins); 0 is none.
TRACK, CANAL, POND, RIVER = 1, 2, 3, 4
THIN_KINDS: dict[int, str] = {TRACK: "track", CANAL: "canal", POND: "pond", RIVER: "river"}
#: Land-cover code each kind is labelled with (water 40, road 60).
THIN_CODES: dict[int, int] = {TRACK: 60, CANAL: 40, POND: 40, RIVER: 40}
#: Land-cover codes each kind may be drawn over (parcels and wide roads); lakes are drawn
#: over everything afterwards.
THIN_ALLOWED_ON: dict[int, tuple[int, ...]] = {
    TRACK: (0, 10, 30, 50, 70),  # not through cities (their own roads) nor wide roads
    CANAL: (0, 10),  # irrigation: farmland only
    POND: (0, 10),  # fish ponds replace fields
    RIVER: (0, 10, 20, 30, 50, 60, 70),  # anywhere
}

#: Mean surface reflectance x 10000 per kind, bands (B, G, R, NIR).
THIN_SPECTRA: dict[int, tuple[float, float, float, float]] = {
    TRACK: (1250.0, 1250.0, 1300.0, 1500.0),  # bright grey: gravel, concrete, dust
    CANAL: (480.0, 560.0, 380.0, 420.0),  # narrow water, vegetated banks raise NIR a little
    POND: (520.0, 640.0, 360.0, 240.0),  # fish ponds: algae, greenish
    RIVER: (560.0, 560.0, 420.0, 260.0),  # sediment-laden: red above the lakes'
}
#: Mean backscatter in dB per kind, bands (VV, VH).
THIN_BACKSCATTER: dict[int, tuple[float, float]] = {
    TRACK: (-4.0, -11.0),  # edges: embankments, tree rows, fences -> double bounce
    CANAL: (-19.0, -25.5),  # water, a little roughness from the banks
    POND: (-23.0, -29.0),  # sheltered calm water: darkest
    RIVER: (-20.0, -26.5),  # current and wind roughen it slightly
}
#: Per-pixel relative texture noise of the optical bands per kind.
THIN_TEXTURE: dict[int, float] = {TRACK: 0.08, CANAL: 0.08, POND: 0.06, RIVER: 0.06}

#: Widths and sizes in metres (converted with the pixel size, never below one pixel).
RIVER_WIDTH_M = (10.0, 30.0)
CANAL_WIDTH_M = (10.0, 20.0)
TRACK_WIDTH_M = (10.0, 20.0)
POND_SIDE_M = (20.0, 50.0)
POND_DYKE_M = (10.0, 20.0)
#: Grid spacing of the canal network, and the fraction of its pieces that are dug.
CANAL_SPACING_M = 900.0
CANAL_PRESENCE = 0.6
#: Target shares of the drawn area (before the land-cover masks, which keep about half
#: of the canal, pond and track pixels; rivers are kept everywhere but under lakes).
RIVER_SHARE = 0.015
TRACK_SHARE = 0.02
POND_SHARE = 0.012
#: Meanders (heading swing in radians, wavelengths in metres) of rivers and tracks.
RIVER_MEANDER = (1.0, (250.0, 600.0, 1500.0))
TRACK_MEANDER = (0.12, (1500.0, 4000.0))
#: Length of the segments lines are cut into (pixels): short, so stamps stay small.
_STEP = 2.0


class ThinFeatures:
    """The thin features of one scene: segments, and their rasterisation per block.

    Features are laid out over rows and columns ``[-margin, size + margin)`` of the
    optical grid (the margin is the SAR's), at shares that scale with that area.
    """

    def __init__(
        self, rng: np.random.Generator, height: int, width: int, margin: int, pixel_size: float
    ) -> None:
        self.px = float(pixel_size)
        self.box = (-float(margin), -float(margin), height + float(margin), width + float(margin))
        empty = np.zeros(0)
        self._parts: list[tuple[np.ndarray, ...]] = [(empty,) * 7]
        area = (height + 2.0 * margin) * (width + 2.0 * margin)
        self.canal_angle = float(rng.uniform(0.0, math.pi / 2))
        self._rivers(rng, area)
        self._tracks(rng, area)
        self._canals(rng)
        self._ponds(rng, area)
        ay, ax, by, bx, half = (
            np.concatenate([p[i] for p in self._parts]).astype(np.float64) for i in range(5)
        )
        self.ay, self.ax, self.by, self.bx, self.half = ay, ax, by, bx, half
        self.kind = np.concatenate([p[5] for p in self._parts]).astype(np.uint8)
        self.flat = np.concatenate([p[6] for p in self._parts]).astype(bool)
        del self._parts
        # Pixels a segment can reach from the pixel holding its midpoint, per axis.
        length = np.hypot(by - ay, bx - ax)
        self.reach = (np.ceil(length / 2.0 + half) + 1).astype(np.int64)
        self.ymin, self.ymax = np.minimum(ay, by) - half, np.maximum(ay, by) + half
        self.xmin, self.xmax = np.minimum(ax, bx) - half, np.maximum(ax, bx) + half

    # ------------------------------------------------------------------ layout

    def _add(self, ys: np.ndarray, xs: np.ndarray, half: np.ndarray | float, kind: int) -> None:
        """A polyline through (ys, xs) as segments of half-width ``half`` (per segment)."""
        n = len(ys) - 1
        if n < 1:
            return
        half = np.broadcast_to(np.asarray(half, dtype=np.float64), (n,))
        self._parts.append(
            (
                ys[:-1],
                xs[:-1],
                ys[1:],
                xs[1:],
                half,
                np.full(n, kind, dtype=np.uint8),
                np.zeros(n, dtype=bool),
            )
        )

    def _inside(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        y0, x0, y1, x1 = self.box
        return (ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1)

    def _walk(
        self,
        rng: np.random.Generator,
        start: tuple[float, float],
        heading: float,
        meander: tuple[float, tuple[float, ...]],
        max_len: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vertices of a path from ``start``, every ``_STEP`` px, until it leaves the box.

        The heading swings around ``heading`` as a sum of sines (meanders), so the path
        keeps its general direction and crosses the scene.
        """
        amp, wavelengths_m = meander
        n = int(max_len / _STEP) + 1
        s = np.arange(n) * _STEP
        theta = np.full(n, heading)
        weights = rng.uniform(0.5, 1.0, len(wavelengths_m))
        weights *= amp / weights.sum()
        for w, lam_m in zip(weights, wavelengths_m, strict=True):
            lam = max(lam_m / self.px, 8.0) * rng.uniform(0.7, 1.3)
            theta += w * np.sin(2.0 * math.pi * s / lam + rng.uniform(0.0, 2.0 * math.pi))
        ys = start[0] + np.concatenate(([0.0], np.cumsum(_STEP * np.sin(theta[:-1]))))
        xs = start[1] + np.concatenate(([0.0], np.cumsum(_STEP * np.cos(theta[:-1]))))
        outside = np.flatnonzero(~self._inside(ys, xs))
        stop = int(outside[0]) + 1 if outside.size else n
        return ys[:stop], xs[:stop]

    def _crossing(
        self, rng: np.random.Generator, meander: tuple[float, tuple[float, ...]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """A path from a point of the box's edge towards its middle, and on to an edge."""
        y0, x0, y1, x1 = self.box
        h, w = y1 - y0, x1 - x0
        t = rng.uniform(0.0, 2.0 * (h + w))
        if t < w:
            start = (y0, x0 + t)
        elif t < w + h:
            start = (y0 + t - w, x1)
        elif t < 2 * w + h:
            start = (y1, x1 - (t - w - h))
        else:
            start = (y1 - (t - 2 * w - h), x0)
        target = (y0 + h * rng.uniform(0.2, 0.8), x0 + w * rng.uniform(0.2, 0.8))
        heading = math.atan2(target[0] - start[0], target[1] - start[1])
        return self._walk(rng, start, heading, meander, 3.0 * (h + w))

    def _rivers(self, rng: np.random.Generator, area: float) -> None:
        """Meandering rivers across the scene until they cover RIVER_SHARE (at least one)."""
        lo, hi = (max(w / self.px, 1.0) for w in RIVER_WIDTH_M)
        target = RIVER_SHARE * area / ((lo + hi) / 2.0)
        drawn = 0.0
        for _ in range(256):
            ys, xs = self._crossing(rng, RIVER_MEANDER)
            width = rng.uniform(lo, hi)
            # the width drifts slowly along the course, within the range
            s = np.arange(max(len(ys) - 1, 0)) * _STEP
            drift = 1.0 + 0.15 * np.sin(2.0 * math.pi * s / (200.0 + 400.0 * rng.random()))
            self._add(ys, xs, np.clip(width * drift, lo, hi) / 2.0, RIVER)
            drawn += _STEP * max(len(ys) - 1, 0)
            if drawn >= target:
                break

    def _tracks(self, rng: np.random.Generator, area: float) -> None:
        """Tracks across the scene, then branches off them, until they cover TRACK_SHARE."""
        lo, hi = (max(w / self.px, 1.0) for w in TRACK_WIDTH_M)
        target = TRACK_SHARE * area / ((lo + hi) / 2.0)
        drawn = 0.0
        paths: list[tuple[np.ndarray, np.ndarray]] = []
        for i in range(4096):
            if i == 0 or drawn < 0.5 * target and i < 64:
                ys, xs = self._crossing(rng, TRACK_MEANDER)
            else:
                # a branch: from a point of an earlier track, roughly at right angles
                py, px = paths[int(rng.integers(len(paths)))]
                j = int(rng.integers(len(py)))
                k = min(j + 1, len(py) - 1)
                along = math.atan2(py[k] - py[k - 1], px[k] - px[k - 1]) if k > 0 else 0.0
                heading = along + math.copysign(math.pi / 2, rng.random() - 0.5)
                heading += rng.normal(0.0, 0.2)
                length = rng.uniform(200.0, 1500.0) / self.px
                ys, xs = self._walk(rng, (py[j], px[j]), heading, TRACK_MEANDER, length)
            if len(ys) > 1:
                paths.append((ys, xs))
                self._add(ys, xs, rng.uniform(lo, hi) / 2.0, TRACK)
                drawn += _STEP * (len(ys) - 1)
            if drawn >= target or not paths:
                break

    def _canals(self, rng: np.random.Generator) -> None:
        """A rotated rectangular grid of straight canals, dug in pieces."""
        lo, hi = (max(w / self.px, 1.0) for w in CANAL_WIDTH_M)
        spacing = max(CANAL_SPACING_M / self.px, 8.0)
        y0, x0, y1, x1 = self.box
        corners = np.array([(y0, x0), (y0, x1), (y1, x0), (y1, x1)])
        a = self.canal_angle
        for d, n in (
            ((math.sin(a), math.cos(a)), (math.cos(a), -math.sin(a))),
            ((math.cos(a), -math.sin(a)), (-math.sin(a), -math.cos(a))),
        ):
            along = corners @ np.array(d)
            across = corners @ np.array(n)
            offset = across.min() + rng.uniform(0.0, spacing)
            while offset < across.max():
                t = along.min()
                while t < along.max():
                    length = spacing * rng.uniform(0.5, 1.5)
                    if rng.random() < CANAL_PRESENCE:
                        ts = np.linspace(t, t + length, int(math.ceil(length / _STEP)) + 1)
                        ys = offset * n[0] + ts * d[0]
                        xs = offset * n[1] + ts * d[1]
                        self._add(ys, xs, rng.uniform(lo, hi) / 2.0, CANAL)
                    t += length
                offset += spacing * rng.uniform(0.85, 1.15)

    def _ponds(self, rng: np.random.Generator, area: float) -> None:
        """Fish-pond fields: small grids of rectangles aligned with the canals."""
        side_lo, side_hi = (max(m / self.px, 1.0) for m in POND_SIDE_M)
        dyke_lo, dyke_hi = (max(m / self.px, 1.0) for m in POND_DYKE_M)
        mean_field = 3.0 * 3.5 * ((side_lo + side_hi) / 2.0) ** 2  # ponds x pond area
        n_fields = int(POND_SHARE * area / mean_field + rng.random())
        y0, x0, y1, x1 = self.box
        a = self.canal_angle
        u = np.array([math.sin(a), math.cos(a)])  # along the ponds' long side
        v = np.array([math.cos(a), -math.sin(a)])
        for _ in range(n_fields):
            centre = np.array([rng.uniform(y0, y1), rng.uniform(x0, x1)])
            rows, cols = int(rng.integers(2, 5)), int(rng.integers(2, 6))
            long, short = sorted(rng.uniform(side_lo, side_hi, 2))[::-1]
            gap = rng.uniform(dyke_lo, dyke_hi)
            i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            keep = rng.random(i.shape) > 0.1  # a pond here and there is drained
            cv = (i[keep] - (rows - 1) / 2.0) * (short + gap)
            cu = (j[keep] - (cols - 1) / 2.0) * (long + gap)
            mid = centre + cu[:, None] * u + cv[:, None] * v
            a_end, b_end = mid - 0.5 * long * u, mid + 0.5 * long * u
            k = len(mid)
            self._parts.append(
                (
                    a_end[:, 0],
                    a_end[:, 1],
                    b_end[:, 0],
                    b_end[:, 1],
                    np.full(k, short / 2.0),
                    np.full(k, POND, dtype=np.uint8),
                    np.ones(k, dtype=bool),
                )
            )

    # ------------------------------------------------------------------ raster

    def render(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Kind per pixel (uint8, 0 = none) at pixel centres ys x xs.

        ``ys`` and ``xs`` are consecutive pixel centres (``r + 0.5`` for rows
        ``r0 .. r1 - 1``, likewise for columns), as the scene's row blocks are.
        """
        r0, c0 = math.floor(ys[0]), math.floor(xs[0])
        n, m = len(ys), len(xs)
        out = np.zeros((n, m), dtype=np.uint8)
        sel = np.flatnonzero(
            (self.ymax > r0) & (self.ymin < r0 + n) & (self.xmax > c0) & (self.xmin < c0 + m)
        )
        if not sel.size:
            return out
        rows, cols, kinds = [], [], []
        for reach in np.unique(self.reach[sel]):
            s = sel[self.reach[sel] == reach]
            ay, ax = self.ay[s], self.ax[s]
            dy, dx = self.by[s] - ay, self.bx[s] - ax
            off = np.arange(-reach, reach + 1)
            py = np.floor(ay + dy / 2.0).astype(np.int64)[:, None, None] + off[None, :, None]
            px = np.floor(ax + dx / 2.0).astype(np.int64)[:, None, None] + off[None, None, :]
            cy = py + 0.5 - ay[:, None, None]
            cx = px + 0.5 - ax[:, None, None]
            dy, dx = dy[:, None, None], dx[:, None, None]
            length2 = dy * dy + dx * dx
            t = (cy * dy + cx * dx) / np.where(length2 > 0, length2, 1.0)
            tc = np.clip(t, 0.0, 1.0)
            dist2 = (cy - tc * dy) ** 2 + (cx - tc * dx) ** 2
            half2 = (self.half[s] ** 2)[:, None, None]
            flat = self.flat[s][:, None, None]
            hit = (dist2 < half2) & (~flat | (t == tc))
            hit &= (py >= r0) & (py < r0 + n) & (px >= c0) & (px < c0 + m)
            idx = np.nonzero(hit)
            rows.append(py[idx[0], idx[1], 0] - r0)
            cols.append(px[idx[0], 0, idx[2]] - c0)
            kinds.append(self.kind[s][idx[0]])
        r, c, k = np.concatenate(rows), np.concatenate(cols), np.concatenate(kinds)
        for kind in sorted(THIN_KINDS):  # higher kinds written last: they win crossings
            pick = k == kind
            out[r[pick], c[pick]] = kind
        return out
