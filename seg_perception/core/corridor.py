"""The driving corridor: a polygon in normalised image coordinates, and its pixel mask.

The node's decision and the evaluation's ground truth both count pixels through this one
rasterisation, so predictions and ground truth can never disagree because of two slightly
different corridor masks.

Corridor membership of a pixel is decided exactly: pixel (col x, row y) of an HxW image is in
the corridor iff its centre ((x + 0.5) / W, (y + 0.5) / H) is inside the polygon by the
even-odd rule. Vertices are treated as the exact rationals their floats represent, and all
arithmetic is done on Python integers, so the result never depends on floating-point rounding
or on resolution-dependent rasterisation heuristics (unlike cv2.fillPoly). A centre that lies
exactly on an edge follows the usual half-open crossing rule: a point on a left or upper
boundary is inside, on a right or lower boundary outside (an axis-aligned rectangle covers
[x0, x1) x [y0, y1)), so polygons sharing an edge never both claim a pixel.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from seg_perception.checks import strict_integer
from seg_perception.errors import SegPerceptionError

if TYPE_CHECKING:  # torch is loaded only for device masks: the geometry checks need none
    import torch

__all__ = ["DEFAULT_CORRIDOR", "Corridor", "CorridorError", "corridor_mask_info"]


class CorridorError(SegPerceptionError, ValueError):
    """Invalid corridor polygon; the message says why (shown to users by the param callback)."""


DEFAULT_CORRIDOR: tuple[tuple[float, float], ...] = (
    (0.25, 1.0),
    (0.75, 1.0),
    (0.55, 0.55),
    (0.45, 0.55),
)
# Masks are cached per (vertices, H, W, device); a node sees one or two resolutions, the eval
# tool a handful, so a small cache bounds memory while avoiding any per-frame geometry work.
_MASK_CACHE_SIZE = 16
# Polygons smaller than this (fraction of the image, i.e. under one pixel of a 1e6 x 1e6 image)
# can only come from float noise on collinear vertices, so they are rejected as zero-area.
_MIN_AREA = 1e-12


def _ceil_div(num: int, den: int) -> int:
    """Exact ceil(num / den) for den > 0."""
    return -((-num) // den)


def _to_integer_grid(
    vertices: tuple[tuple[float, float], ...],
) -> tuple[list[tuple[int, int]], int]:
    """Express all vertices exactly as integers over one common denominator D.

    Floats are dyadic rationals, so D is a power of two and every later test (orientation,
    crossing position) is exact integer arithmetic.
    """
    fracs = [(Fraction(x), Fraction(y)) for x, y in vertices]
    den = 1
    for fx, fy in fracs:
        den = math.lcm(den, fx.denominator, fy.denominator)
    points = [(int(fx * den), int(fy * den)) for fx, fy in fracs]
    return points, den


def _cross(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
    """Twice the signed area of triangle (o, a, b); its sign is the orientation."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _on_segment(p: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> bool:
    """For p collinear with a-b: is p within the closed segment?"""
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(
        a[1], b[1]
    )


def _segments_intersect(
    a: tuple[int, int], b: tuple[int, int], c: tuple[int, int], d: tuple[int, int]
) -> bool:
    """Closed segments a-b and c-d share any point (crossing, touching or collinear overlap)."""
    d1 = _cross(c, d, a)
    d2 = _cross(c, d, b)
    d3 = _cross(a, b, c)
    d4 = _cross(a, b, d)
    if ((d1 > 0 and d2 < 0) or (d1 < 0 and d2 > 0)) and (
        (d3 > 0 and d4 < 0) or (d3 < 0 and d4 > 0)
    ):
        return True
    return (
        (d1 == 0 and _on_segment(a, c, d))
        or (d2 == 0 and _on_segment(b, c, d))
        or (d3 == 0 and _on_segment(c, a, b))
        or (d4 == 0 and _on_segment(d, a, b))
    )


def _fmt_point(p: tuple[float, float]) -> str:
    return f"({p[0]:g}, {p[1]:g})"


def _normalise_vertices(vertices: Any) -> tuple[tuple[float, float], ...]:
    """Coerce any sequence of (x, y) pairs to a tuple of float pairs, or raise CorridorError."""
    if isinstance(vertices, (str, bytes)):
        raise CorridorError(f"corridor vertices must be (x, y) pairs, got {vertices!r}")
    try:
        items = list(vertices)
    except TypeError:
        raise CorridorError(f"corridor vertices must be a list of (x, y) pairs, "
                            f"got {vertices!r}") from None
    result = []
    for index, item in enumerate(items):
        try:
            pair = tuple(item)
        except TypeError:
            raise CorridorError(f"corridor vertex {index} must be an (x, y) pair, "
                                f"got {item!r}") from None
        if len(pair) != 2:
            raise CorridorError(f"corridor vertex {index} must have 2 coordinates, "
                                f"got {len(pair)}: {item!r}")
        try:
            result.append((float(pair[0]), float(pair[1])))
        except (TypeError, ValueError):
            raise CorridorError(f"corridor vertex {index} must be numeric, got {item!r}") from None
    return tuple(result)


@dataclass(frozen=True)
class Corridor:
    """Polygon in normalised image coordinates (x right, y down, both in [0, 1]).

    Validated on construction, so any Corridor that exists is a simple (non-self-intersecting)
    polygon of non-zero area; invalid input raises CorridorError with the reason.
    """

    vertices: tuple[tuple[float, float], ...] = DEFAULT_CORRIDOR

    def __post_init__(self) -> None:
        object.__setattr__(self, "vertices", _normalise_vertices(self.vertices))
        self.validate()

    @classmethod
    def from_flat(cls, values: Sequence[float]) -> Corridor:
        """Build from a ROS-style flat double array [x0, y0, x1, y1, ...]."""
        if isinstance(values, (str, bytes)):
            raise CorridorError(f"corridor must be a flat list of numbers, got {values!r}")
        try:
            flat = list(values)
        except TypeError:
            raise CorridorError(
                f"corridor must be a flat list of numbers, got {values!r}") from None
        if len(flat) % 2:
            raise CorridorError(f"corridor must be a flat list [x0, y0, x1, y1, ...] of even "
                                f"length, got {len(flat)} values")
        return cls(tuple(zip(flat[0::2], flat[1::2], strict=True)))

    def to_flat(self) -> list[float]:
        """Inverse of from_flat (e.g. for a ROS parameter default)."""
        return [c for vertex in self.vertices for c in vertex]

    def validate(self) -> None:
        """Raise CorridorError unless the polygon is simple, in range and has non-zero area."""
        verts = self.vertices
        n = len(verts)
        if n < 3:
            raise CorridorError(f"corridor needs at least 3 vertices, got {n}")
        for i, (x, y) in enumerate(verts):
            if not (math.isfinite(x) and math.isfinite(y)):
                raise CorridorError(f"corridor vertex {i} {_fmt_point((x, y))} is not finite")
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise CorridorError(f"corridor vertex {i} {_fmt_point((x, y))} is outside "
                                    f"[0, 1] (coordinates are normalised to the image size)")
        for i in range(n):
            j = (i + 1) % n
            if verts[i] == verts[j]:
                extra = " (the polygon closes implicitly; do not repeat the first vertex)" \
                    if j == 0 else ""
                raise CorridorError(f"corridor vertices {i} and {j} are identical "
                                    f"{_fmt_point(verts[i])}{extra}")
        pts, _ = _to_integer_grid(verts)
        if all(_cross(pts[0], pts[1], p) == 0 for p in pts[2:]):
            raise CorridorError("corridor has zero area: all vertices are collinear")
        for i in range(n):
            a, b, c = pts[i], pts[(i + 1) % n], pts[(i + 2) % n]
            ab = (b[0] - a[0], b[1] - a[1])
            bc = (c[0] - b[0], c[1] - b[1])
            if _cross(a, b, c) == 0 and ab[0] * bc[0] + ab[1] * bc[1] < 0:
                raise CorridorError(
                    f"corridor is self-intersecting: at vertex {(i + 1) % n} "
                    f"{_fmt_point(verts[(i + 1) % n])} the outline doubles back on itself")
        for i in range(n):
            for j in range(i + 2, n):
                if i == 0 and j == n - 1:
                    continue  # adjacent through the closing edge
                if _segments_intersect(pts[i], pts[(i + 1) % n], pts[j], pts[(j + 1) % n]):
                    raise CorridorError(
                        f"corridor is self-intersecting: edge {i} "
                        f"{_fmt_point(verts[i])}-{_fmt_point(verts[(i + 1) % n])} meets edge {j} "
                        f"{_fmt_point(verts[j])}-{_fmt_point(verts[(j + 1) % n])}")
        area = self.area
        if area < _MIN_AREA:
            # Exactly collinear input is caught above; this catches vertices meant to be
            # collinear whose float values (e.g. 0.2 + 0.8 != 1 exactly) leave a sliver.
            raise CorridorError(f"corridor has (nearly) zero area ({area:.3g} of the image): "
                                f"its vertices are (almost) collinear")

    @property
    def area(self) -> float:
        """Polygon area in normalised units (fraction of the image)."""
        pts, den = _to_integer_grid(self.vertices)
        twice = sum(
            pts[i][0] * pts[(i + 1) % len(pts)][1] - pts[(i + 1) % len(pts)][0] * pts[i][1]
            for i in range(len(pts))
        )
        return float(Fraction(abs(twice), 2 * den * den))

    def mask_numpy(self, height: int, width: int) -> np.ndarray:
        """Read-only bool HxW array: True where the pixel centre is inside. Cached."""
        return _mask_numpy(self.vertices, _check_size("height", height),
                           _check_size("width", width))

    def mask(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Bool HxW tensor on `device`. Cached and shared between callers: do not modify it."""
        return corridor_mask_info(self.vertices, _check_size("height", height),
                                  _check_size("width", width), str(device)).mask

    def pixel_count(self, height: int, width: int) -> int:
        """Number of corridor pixels at this resolution (0 for a corridor thinner than a pixel)."""
        return corridor_mask_info(self.vertices, _check_size("height", height),
                          _check_size("width", width), "cpu").count


def _check_size(name: str, value: Any) -> int:
    result = strict_integer(value, name)
    if result < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {result}")
    return result


@functools.lru_cache(maxsize=_MASK_CACHE_SIZE)
def _mask_numpy(vertices: tuple[tuple[float, float], ...], height: int, width: int) -> np.ndarray:
    """Exact even-odd rasterisation of pixel centres, by scanline crossing counting.

    For every row the crossings of the horizontal line through the pixel centres with each edge
    are found exactly (integer arithmetic), and each crossing toggles all pixels whose centre is
    left of it (ray cast to the right). The per-pixel toggling is done vectorised with numpy:
    a histogram of "number of columns left of crossing" per row, then a suffix sum and parity.
    Cost: O(edge-row crossings) integer ops + O(H*W) numpy, and it runs once per resolution.
    """
    pts, den = _to_integer_grid(vertices)
    two_h, two_w = 2 * height, 2 * width
    rows: list[int] = []
    cols: list[int] = []
    n = len(pts)
    for i in range(n):
        (xa, ya), (xb, yb) = pts[i], pts[(i + 1) % n]
        if ya == yb:
            continue  # horizontal edges never cross a horizontal ray (half-open rule)
        lo, hi = min(ya, yb), max(ya, yb)
        # Rows whose centre py = (2y+1)/(2H) satisfies lo/D <= py < hi/D.
        y0 = max(0, _ceil_div(two_h * lo - den, 2 * den))
        y1 = min(height, _ceil_div(two_h * hi - den, 2 * den))
        if y0 >= y1:
            continue
        # Crossing x at row y: x_int = num(y) / q with
        #   num(y) = xa*dy*2H + dx*((2y+1)*D - 2H*ya),  q = D*dy*2H  (made positive below).
        dx, dy = xb - xa, yb - ya
        base = xa * dy * two_h - dx * two_h * ya
        step = dx * den
        q = den * dy * two_h
        if q < 0:
            base, step, q = -base, -step, -q
        # Pixels whose centre (2x+1)/(2W) < x_int: x < (2W*x_int - 1)/2, i.e. the first
        # k = ceil((2W*num - q) / (2q)) columns (clamped to [0, W]).
        for y in range(y0, y1):
            num = base + step * (2 * y + 1)
            k = _ceil_div(two_w * num - q, 2 * q)
            rows.append(y)
            cols.append(min(width, max(0, k)))
    # Only the parity of the crossing count matters, so uint8 (wrapping mod 256) suffices.
    hist = np.zeros((height, width + 1), dtype=np.uint8)
    if rows:
        np.add.at(hist, (np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)), 1)
    # crossings[y, x] = number of crossings with k > x = sum(hist[y, x+1:]).
    suffix = np.cumsum(hist[:, ::-1], axis=1, dtype=np.uint8)[:, ::-1]
    mask = (suffix[:, 1:] & 1).astype(bool)
    mask.setflags(write=False)
    return mask


@dataclass(frozen=True)
class _MaskInfo:
    """Cached per-device corridor data, including the bounding box so coverage can crop."""

    mask: torch.Tensor  # full HxW bool mask
    cropped: torch.Tensor  # mask[r0:r1, c0:c1]
    rows: slice
    cols: slice
    count: int


@functools.lru_cache(maxsize=_MASK_CACHE_SIZE)
def corridor_mask_info(
    vertices: tuple[tuple[float, float], ...], height: int, width: int, device: str
) -> _MaskInfo:
    mask_np = _mask_numpy(vertices, height, width)
    count = int(np.count_nonzero(mask_np))
    import torch

    mask = torch.from_numpy(mask_np.copy()).to(device)
    if count:
        row_idx = np.flatnonzero(mask_np.any(axis=1))
        col_idx = np.flatnonzero(mask_np.any(axis=0))
        rows = slice(int(row_idx[0]), int(row_idx[-1]) + 1)
        cols = slice(int(col_idx[0]), int(col_idx[-1]) + 1)
    else:
        rows = cols = slice(0, 0)
    return _MaskInfo(mask=mask, cropped=mask[rows, cols], rows=rows, cols=cols, count=count)

