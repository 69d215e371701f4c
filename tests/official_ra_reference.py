"""A plain numpy statement of the official RandAugment's ops (the ffcv fork's semantics, OpenCV's rounding),
written independently of the numba kernels so tests can compare the two on fixed images and draws."""

import numpy as np

F32 = np.float32


def warp_nearest(src, m):
    """OpenCV warpAffine, INTER_NEAREST, black border: the forward matrix ``m`` inverted in float64, source
    coordinates in 10-bit fixed point (rounded half to even), floored."""
    m = np.asarray(m, np.float64)
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    inv = np.array([[m[1, 1], -m[0, 1]], [-m[1, 0], m[0, 0]]]) / det
    b = -inv @ m[:, 2]
    h, w = src.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    fx = (
        np.rint((inv[0, 1] * ys + b[0]) * 1024).astype(np.int64) + 512 + np.rint(inv[0, 0] * xs * 1024).astype(np.int64)
    )
    fy = (
        np.rint((inv[1, 1] * ys + b[1]) * 1024).astype(np.int64) + 512 + np.rint(inv[1, 0] * xs * 1024).astype(np.int64)
    )
    sx, sy = fx >> 10, fy >> 10
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    out = np.zeros_like(src)
    out[inside] = src[sy[inside], sx[inside]]
    return out


def shear(src, sx, sy):
    rows, cols = src.shape[:2]
    m = np.array([[1, sx, 0], [sy, 1, 0]], F32)
    cx, cy = F32((rows - 1) / 2), F32((cols - 1) / 2)
    m[0, 2] += m[0, 0] * -cx + m[0, 1] * -cy
    m[1, 2] += m[1, 0] * -cx + m[1, 1] * -cy
    m[0, 2] += cx
    m[1, 2] += cy
    return warp_nearest(src, m)


def rotate(src, degrees):
    h, w = src.shape[:2]
    cx, cy = float(F32((w - 1) / 2)), float(F32((h - 1) / 2))
    a = np.deg2rad(float(F32(degrees)))
    al, be = np.cos(a), np.sin(a)
    return warp_nearest(src, [[al, be, (1 - al) * cx - be * cy], [-be, al, be * cx + (1 - al) * cy]])


def translate(src, tx, ty):
    out = np.zeros_like(src)
    h, w = src.shape[:2]
    ys, xs = slice(max(ty, 0), h + min(ty, 0)), slice(max(tx, 0), w + min(tx, 0))
    yd, xd = slice(max(-ty, 0), h + min(-ty, 0)), slice(max(-tx, 0), w + min(-tx, 0))
    out[ys, xs] = src[yd, xd]
    return out


def blend(a, b, ratio):
    v = np.rint(a.astype(F32) * F32(ratio) + b.astype(F32) * F32(1 - ratio))
    return np.clip(v, 0, 255).astype(np.uint8)


def luma(src):
    return 0.299 * src[..., 0].astype(np.float64) + 0.587 * src[..., 1] + 0.114 * src[..., 2]


def color(src, factor):
    g = luma(src).astype(np.uint8)
    return blend(src, np.repeat(g[..., None], 3, -1), factor)


def contrast(src, factor):
    return blend(src, np.full_like(src, np.uint8(luma(src).mean())), factor)


def sharpness(src, factor):
    k = np.full((3, 3), F32(0.0769), F32)
    k[1, 1] = F32(0.3846)
    x = src.astype(F32)
    acc = np.zeros_like(x[1:-1, 1:-1])
    for dy in range(3):
        for dx in range(3):
            acc += k[dy, dx] * x[dy : dy + x.shape[0] - 2, dx : dx + x.shape[1] - 2]
    blurred = src.copy()
    blurred[1:-1, 1:-1] = np.clip(np.rint(acc), 0, 255).astype(np.uint8)
    return blend(src, blurred, factor)


def posterize(src, bits):
    return src & np.uint8(~(2 ** (8 - bits) - 1) & 0xFF)


def solarize(src, threshold):
    return np.where(src >= threshold, 255 - src, src).astype(np.uint8)


def autocontrast(src):
    out = np.empty_like(src)
    for c in range(3):
        ch = src[..., c]
        lo, hi = int(ch.min()), int(ch.max())
        scale, lo = (255.0 / (hi - lo), lo) if hi != lo else (1.0, 0)
        v = ((ch.astype(np.int64) - lo).astype(F32).astype(np.float64) * scale).astype(F32)
        out[..., c] = np.clip(v, 0, 255).astype(np.uint8)
    return out


def equalize(src, wrap16):
    """torchvision's equalize; ``wrap16``: counts kept in int16 as the official scratch buffer keeps them."""
    out = src.copy()
    for c in range(3):
        hist = np.bincount(src[..., c].ravel(), minlength=256).astype(np.int64)
        if wrap16:
            hist = hist.astype(np.int16).astype(np.int64)
        nz = hist[hist != 0]
        step = int(nz[:-1].sum()) // 255
        if step == 0:
            continue
        lut = np.concatenate([[0], np.cumsum(hist)[:-1]])
        if wrap16:
            lut = lut.astype(np.int16).astype(np.int64)
        lut = (lut + step // 2) // step
        if wrap16:
            lut = lut.astype(np.int16).astype(np.int64)
        lut[0] = 0
        out[..., c] = np.clip(lut, 0, 255)[src[..., c]]
    return out


def apply(src, idx, mag, fixed=False):
    """Op ``idx`` (OP_NAMES order) at signed magnitude ``mag``."""
    h, w = src.shape[:2]
    ops = {
        0: lambda: src.copy(),
        1: lambda: shear(src, mag, 0.0),
        2: lambda: shear(src, 0.0, mag),
        3: lambda: translate(src, int(w * mag), 0),
        4: lambda: translate(src, 0, int((h if fixed else 3) * mag)),
        5: lambda: rotate(src, mag),
        6: lambda: blend(src, np.zeros_like(src), 1 + mag),
        7: lambda: color(src, 1 + mag),
        8: lambda: contrast(src, 1 + mag),
        9: lambda: sharpness(src, 1 + mag),
        10: lambda: posterize(src, int(mag)),
        11: lambda: solarize(src, mag),
        12: lambda: autocontrast(src),
        13: lambda: equalize(src, wrap16=not fixed),
        14: lambda: (255 - src).astype(np.uint8),
    }
    return ops[idx]()
