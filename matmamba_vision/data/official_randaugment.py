"""The RandAugment of the official MatMamba ImageNet run (``--aa official``), written from its semantics.

The official run used the ``RandAugment(num_ops=2, magnitude=9)`` of a fork of ffcv (branch ``randaug``),
which is another algorithm than timm's ``rand-m9-n2``. Per image it applies exactly ``num_ops`` ops in turn,
each drawn uniformly from 15 (:data:`OP_NAMES`); the magnitude is bin ``magnitude`` of 31 (``9/30 = 0.3`` of
each op's maximum, :func:`op_magnitudes`) and for the geometric and enhance ops its sign flips with
probability 0.5. Geometric ops sample the nearest pixel (OpenCV's ``warpAffine`` with ``INTER_NEAREST``, its
fixed-point rounding) and fill with black. Two quirks of that code shaped the paper's numbers and are kept by
default (``--aa official``); ``--aa official-fixed`` corrects both:

- TranslateY moves nothing: its shift is computed from the channel axis (``int(3 * 0.136) = 0``).
- Equalize counts its histogram in int16: where more than 32,767 pixels lie below a level (the brightest
  ~35 % of a 224 x 224 image) the count wraps negative and those pixels become black.

A channel whose histogram gives Equalize a zero step is copied unchanged (the official code leaves it
unwritten). The kernels run on (H, W, 3) uint8 arrays and are compiled with numba: the same functions serve
the image-folder path (:class:`OfficialRandAugment`, a PIL transform) and the FFCV path
(:mod:`matmamba_vision.data.ffcv_ops`).
"""

from __future__ import annotations

import random
from typing import Tuple

import numpy as np
from numba import njit

# fastmath=False explicitly: numba lets a caller compiled with fastmath (ffcv's Compiler compiles every
# pipeline stage so) pass it on to kernels that set none, and the official rounding needs exact float32 sums.
__all__ = ["OP_NAMES", "SIGNED", "op_magnitudes", "apply_op", "draw_op", "OfficialRandAugment"]

OP_NAMES = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
# ops whose magnitude is negated with probability 0.5 (the others keep their sign)
SIGNED = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=np.bool_)
NUM_BINS = 31


def op_magnitudes(magnitude: int = 9, num_bins: int = NUM_BINS) -> np.ndarray:
    """Each op's magnitude at bin ``magnitude`` of ``num_bins`` (float64, indexed as :data:`OP_NAMES`): shear
    factor, translation as a fraction of the side, rotation in degrees, enhance offset (factor ``1 + m``),
    posterize bits, solarize threshold; 0 for the ops without one."""
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"magnitude must be in [0, {num_bins - 1}], got {magnitude}")
    k = magnitude
    lin = lambda top: np.linspace(0.0, top, num_bins)[k]  # noqa: E731
    enhance = lin(0.9)
    bits = 8 - np.round(k / ((num_bins - 1) / 4))
    return np.array(
        [
            0.0,
            lin(0.3),
            lin(0.3),
            lin(150.0 / 331.0),
            lin(150.0 / 331.0),
            lin(30.0),
            enhance,
            enhance,
            enhance,
            enhance,
            bits,
            np.linspace(255.0, 0.0, num_bins)[k],
            0.0,
            0.0,
            0.0,
        ]
    )


@njit(fastmath=False)
def warp_nearest(src, dst, m0, m1, m2, m3, m4, m5):
    # dst(x, y) = src(M^-1 (x, y)) as OpenCV's warpAffine (INTER_NEAREST, black border): the inverse in
    # float64, then 10-bit fixed point, rounded half to even
    d = m0 * m4 - m1 * m3
    d = 1.0 / d if d != 0.0 else 0.0
    a11, a12, a21, a22 = m4 * d, -m1 * d, -m3 * d, m0 * d
    b1, b2 = -a11 * m2 - a12 * m5, -a21 * m2 - a22 * m5
    h, w = src.shape[0], src.shape[1]
    for y in range(h):
        x0 = np.int64(np.rint((a12 * y + b1) * 1024.0)) + 512
        y0 = np.int64(np.rint((a22 * y + b2) * 1024.0)) + 512
        for x in range(w):
            sx = (x0 + np.int64(np.rint(a11 * x * 1024.0))) >> 10
            sy = (y0 + np.int64(np.rint(a21 * x * 1024.0))) >> 10
            if 0 <= sx < w and 0 <= sy < h:
                for c in range(src.shape[2]):
                    dst[y, x, c] = src[sy, sx, c]
            else:
                for c in range(src.shape[2]):
                    dst[y, x, c] = 0


@njit(fastmath=False)
def shear(src, dst, sx, sy):
    # the official 2x3 matrix is float32, built around ((rows - 1) / 2, (cols - 1) / 2)
    f = np.float32
    shx, shy = f(sx), f(sy)
    cx, cy = f((src.shape[0] - 1) / 2.0), f((src.shape[1] - 1) / 2.0)
    t0 = f(f(f(0.0) + f(f(1.0) * -cx + shx * -cy)) + cx)
    t1 = f(f(f(0.0) + f(shy * -cx + f(1.0) * -cy)) + cy)
    warp_nearest(src, dst, 1.0, float(shx), float(t0), float(shy), 1.0, float(t1))


@njit(fastmath=False)
def rotate(src, dst, degrees):
    # cv::getRotationMatrix2D(((cols - 1) / 2, (rows - 1) / 2), angle, 1): counter-clockwise for angle > 0
    cx, cy = float(np.float32((src.shape[1] - 1) / 2.0)), float(np.float32((src.shape[0] - 1) / 2.0))
    a = float(np.float32(degrees)) * np.pi / 180.0
    alpha, beta = np.cos(a), np.sin(a)
    warp_nearest(src, dst, alpha, beta, (1 - alpha) * cx - beta * cy, -beta, alpha, beta * cx + (1 - alpha) * cy)


@njit(fastmath=False)
def translate(src, dst, tx, ty):
    # shift by whole pixels (tx columns, ty rows; positive = right / down), black fill
    h, w = src.shape[0], src.shape[1]
    for y in range(h):
        for x in range(w):
            yy, xx = y - ty, x - tx
            for c in range(src.shape[2]):
                dst[y, x, c] = src[yy, xx, c] if 0 <= yy < h and 0 <= xx < w else 0


@njit(fastmath=False)
def blend(src1, src2, ratio, dst):
    # cv::addWeighted(src1, ratio, src2, 1 - ratio, 0) on uint8: float32 sums, rounded half to even
    a, b = np.float32(ratio), np.float32(1.0 - ratio)
    s1, s2, out = src1.reshape(-1), src2.reshape(-1), dst.reshape(-1)
    for k in range(s1.size):
        v = np.rint(np.float32(s1[k]) * a + np.float32(s2[k]) * b)
        out[k] = np.uint8(min(max(v, 0.0), 255.0))


@njit(fastmath=False)
def grey(src, dst):
    # 0.299 R + 0.587 G + 0.114 B, truncated to uint8, in all three channels
    for y in range(src.shape[0]):
        for x in range(src.shape[1]):
            v = np.uint8(0.299 * src[y, x, 0] + 0.587 * src[y, x, 1] + 0.114 * src[y, x, 2])
            dst[y, x, 0] = v
            dst[y, x, 1] = v
            dst[y, x, 2] = v


@njit(fastmath=False)
def contrast(src, dst, factor):
    total = 0.0
    for y in range(src.shape[0]):
        for x in range(src.shape[1]):
            total += 0.299 * src[y, x, 0] + 0.587 * src[y, x, 1] + 0.114 * src[y, x, 2]
    scratch = np.empty_like(src)
    scratch[:] = np.uint8(total / (src.shape[0] * src.shape[1]))
    blend(src, scratch, factor, dst)


@njit(fastmath=False)
def sharpness(src, dst, factor):
    # 3x3 smoothing (1/13 around, 5/13 in the centre, as the official float32 weights) inside, border kept
    edge, centre = np.float32(0.0769), np.float32(0.3846)
    blurred = src.copy()
    for y in range(1, src.shape[0] - 1):
        for x in range(1, src.shape[1] - 1):
            for c in range(src.shape[2]):
                s = np.float32(0.0)
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        s += (centre if dy == 0 and dx == 0 else edge) * np.float32(src[y + dy, x + dx, c])
                blurred[y, x, c] = np.uint8(min(max(np.rint(s), 0.0), 255.0))
    blend(src, blurred, factor, dst)


@njit(fastmath=False)
def autocontrast(src, dst):
    for c in range(src.shape[2]):
        lo, hi = src[:, :, c].min(), src[:, :, c].max()
        scale, low = 255.0 / (np.int64(hi) - np.int64(lo)) if hi != lo else 1.0, np.int64(lo) if hi != lo else 0
        for y in range(src.shape[0]):
            for x in range(src.shape[1]):
                v = np.float32(np.float64(np.float32(np.int64(src[y, x, c]) - low)) * scale)
                dst[y, x, c] = np.uint8(min(max(v, np.float32(0.0)), np.float32(255.0)))


@njit(fastmath=False)
def _int16(v):
    return (v + 32768) % 65536 - 32768


@njit(fastmath=False)
def _int16(v):
    return (v + 32768) % 65536 - 32768


@njit(fastmath=False)
def equalize(src, dst, wrap16):
    # torchvision's equalize; wrap16: the histogram and its running sum held in int16 (the official quirk)
    for c in range(src.shape[2]):
        hist = np.zeros(256, np.int64)
        for y in range(src.shape[0]):
            for x in range(src.shape[1]):
                hist[src[y, x, c]] += 1
        if wrap16:
            for v in range(256):
                hist[v] = _int16(hist[v])
        total, last = 0, 0
        for v in range(256):
            if hist[v] != 0:
                total += hist[v]
                last = hist[v]
        step = (total - last) // 255
        if step == 0:
            dst[:, :, c] = src[:, :, c]
            continue
        lut = np.zeros(256, np.int64)
        run = 0
        for v in range(1, 256):
            run += hist[v - 1]
            lut[v] = run
        for v in range(1, 256):
            q = ((_int16(lut[v]) if wrap16 else lut[v]) + step // 2) // step
            lut[v] = _int16(q) if wrap16 else q
        for y in range(src.shape[0]):
            for x in range(src.shape[1]):
                dst[y, x, c] = np.uint8(min(max(lut[src[y, x, c]], 0), 255))


@njit(fastmath=False)
def apply_op(src, dst, idx, mag, fixed):
    """Op ``idx`` of OP_NAMES at signed magnitude ``mag`` from ``src`` into ``dst`` (distinct arrays)."""
    if idx == 0:
        dst[:] = src
    elif idx == 1:
        shear(src, dst, mag, 0.0)
    elif idx == 2:
        shear(src, dst, 0.0, mag)
    elif idx == 3:
        translate(src, dst, int(src.shape[1] * mag), 0)
    elif idx == 4:  # official: the shift from shape[2] (channels), so 0
        translate(src, dst, 0, int(src.shape[0 if fixed else 2] * mag))
    elif idx == 5:
        rotate(src, dst, mag)
    elif idx == 6:
        blend(src, np.zeros_like(src), 1.0 + mag, dst)
    elif idx == 7:
        scratch = np.empty_like(src)
        grey(src, scratch)
        blend(src, scratch, 1.0 + mag, dst)
    elif idx == 8:
        contrast(src, dst, 1.0 + mag)
    elif idx == 9:
        sharpness(src, dst, 1.0 + mag)
    elif idx == 10:
        dst[:] = src & np.uint8(255 - (2 ** (8 - int(mag)) - 1))
    elif idx == 11:
        s, d = src.reshape(-1), dst.reshape(-1)
        for k in range(s.size):
            d[k] = 255 - s[k] if s[k] >= mag else s[k]
    elif idx == 12:
        autocontrast(src, dst)
    elif idx == 13:
        equalize(src, dst, not fixed)
    else:
        dst[:] = 255 - src


def draw_op(rng: random.Random, magnitudes: np.ndarray) -> Tuple[int, float]:
    """One op and its signed magnitude, drawn as the official loop draws them (op uniform over 15; then
    a uniform number below 0.5 negates the magnitude of a signed op)."""
    idx = rng.randrange(len(OP_NAMES))
    mag = float(magnitudes[idx])
    if rng.random() < 0.5 and SIGNED[idx]:
        mag = -mag
    return idx, mag


class OfficialRandAugment:
    """PIL transform: the official RandAugment (``num_ops`` ops at bin ``magnitude`` of 31) on an RGB image
    (other modes are converted to RGB and back). Draws come from Python's ``random`` (seeded per worker)."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, fixed: bool = False):
        if num_ops < 1:
            raise ValueError(f"num_ops must be at least 1, got {num_ops}")
        self.num_ops, self.magnitude, self.fixed = num_ops, magnitude, bool(fixed)
        self.magnitudes = op_magnitudes(magnitude)

    def __call__(self, img):
        from PIL import Image

        mode = img.mode
        src = np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy: the buffers swap below
        dst = np.empty_like(src)
        for _ in range(self.num_ops):
            idx, mag = draw_op(random, self.magnitudes)
            apply_op(src, dst, idx, mag, self.fixed)
            src, dst = dst, src
        out = Image.fromarray(src, "RGB")
        return out if mode == "RGB" else out.convert(mode)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, "
            f"{'official-fixed' if self.fixed else 'official'})"
        )
