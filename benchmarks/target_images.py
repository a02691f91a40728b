"""Write candidate target images for the encoder cloak's `target` option (a target search, eval/configs/search8.toml).

The built-in target, diagonal stripes in complementary colours at period 16 px, protects far better than other
patterns of the same strength on the testbed (docs/RESULTS.md, "Which target pattern"), and no statistic of the
cloaked latents predicts which target will (``benchmarks/latent_stats.py``). This writes variants of it, one change
at a time (orientation, colours, a second orientation or period, other periodic patterns, noise), as PNG files the
`target` option reads; the period is in pixels of the image written, which the cloak resizes to each view.

    python benchmarks/target_images.py --out runs/targets            # 64 px, the testbed's resolution
    python benchmarks/target_images.py --out targets512 --size 512 --period 128   # SD-1.5's, same latent period
"""

from __future__ import annotations

import argparse
from pathlib import Path


def patterns(size: int, period: int, seed: int) -> dict:
    """Name -> (size, size, 3) float numpy image in [0, 1]."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size]
    half = period // 2

    def complementary(phase):  # the built-in stripes' colours: (p, 1 - p, 0.5 + 0.4 (2p - 1))
        return np.stack([phase, 1 - phase, 0.5 + 0.4 * (2 * phase - 1)], -1)

    diag = ((xx + yy) % period < half).astype(float)
    anti = ((xx - yy) % period < half).astype(float)
    rng = np.random.default_rng(seed)
    cells = rng.random((size // 8 + 1, size // 8 + 1, 3))
    radius = np.hypot(xx - size / 2 + 0.5, yy - size / 2 + 0.5)
    dots = (np.hypot((xx % period) - period / 2 + 0.5, (yy % period) - period / 2 + 0.5) < period / 4).astype(float)
    other = ((xx + yy) % round(period * 1.25) < round(period * 1.25) // 2).astype(float)
    return {
        "stripes-bw": np.repeat(diag[..., None], 3, -1),  # luminance only
        "stripes-redblue": np.stack([diag, np.zeros_like(diag), 1 - diag], -1),
        "stripes-anti": complementary(anti),  # the other diagonal
        "stripes-horizontal": complementary((yy % period < half).astype(float)),
        "stripes-vertical": complementary((xx % period < half).astype(float)),
        "crosshatch": complementary(np.logical_xor(diag, anti).astype(float)),
        "stripes-two-periods": (complementary(diag) + complementary(other)) / 2,  # period and 1.25 x period
        "rings": complementary((radius % period < half).astype(float)),
        "dots": complementary(dots),
        "noise-pixels": rng.random((size, size, 3)),
        "noise-cells": cells[yy // 8, xx // 8],  # one colour per 8 px latent cell
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for <name>.png (created)")
    parser.add_argument("--size", type=int, default=64, help="side, px")
    parser.add_argument("--period", type=int, default=16, help="pattern period, px of the image written")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise targets")
    args = parser.parse_args()

    import io

    import numpy as np
    from PIL import Image

    from cloak.imageio import atomic_write_bytes

    args.out.mkdir(parents=True, exist_ok=True)
    for name, img in patterns(args.size, args.period, args.seed).items():
        path = args.out / f"{name}.png"
        buffer = io.BytesIO()
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        atomic_write_bytes(path, buffer.getvalue())
        print(path)


if __name__ == "__main__":
    main()
