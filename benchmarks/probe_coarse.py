"""Probe: how much coarse change (colours, layout) can an 8/255 cloak put into what the fine-tune learns from?

A mimic trained on cloaked paintings still paints the artist's layout and palette under a fine texture, and cleaning
its output of that texture gives much of the style back (docs/RESULTS.md, "What the protected mimic paints").
Coarser target patterns and a low-passed cloak did not help. This measures why, without fine-tunes: for held-out
testbed paintings cloaked with the encoder attack toward several targets, it splits the change a cloak makes into a
coarse part (the change averaged over 8x8 px blocks, two latent cells of the testbed's VAE) and the fine rest, RMS in
0-255 units, for the saved file itself and for its VAE round trip ``D(E(x))`` (what a fine-tune that reproduced its
training latents exactly would paint). The last target, the painting itself with its colour channels rotated
(R, G, B -> B, R, G), asks the cloak for the largest coarse change there is.

    python benchmarks/probe_coarse.py                      # 8 marbling paintings, eps 8, 12 steps (the default's)
    python benchmarks/probe_coarse.py --style impasto --eps 16
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

BLOCK = 8  # px: two latent cells of the testbed's 4x VAE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="marbling", help="a held-out testbed style")
    parser.add_argument("--eps", type=float, default=8.0, help="L-inf budget, 0-255 units")
    parser.add_argument("--steps", type=int, default=12, help="encoder cloak steps")
    parser.add_argument("--n-images", type=int, default=8, help="held-out testbed paintings")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    torch.set_num_threads(args.threads)
    from cloak.imageio import to_tensor
    from cloak.models import load_components
    from cloak.protect import CloakConfig, Cloaker
    from cloak.testbed.artists import EVAL_SEED_OFFSET, HELD_OUT, paint
    from cloak.units import vae_roundtrip

    if args.style not in HELD_OUT:
        parser.error(f"--style must be a held-out testbed style ({', '.join(HELD_OUT)}), got {args.style!r}")
    comp = load_components("testbed", parts=("vae",), device="cpu")
    images = [
        (paint(args.style, EVAL_SEED_OFFSET + i).image * 255).round().astype("uint8") for i in range(args.n_images)
    ]

    def split(change: torch.Tensor) -> tuple[float, float]:
        """RMS (0-255) of the 8x8-block mean of a change and of what is left."""
        coarse = F.interpolate(F.avg_pool2d(change, BLOCK), scale_factor=BLOCK, mode="nearest")
        return (coarse.pow(2).mean().sqrt().item() * 255, (change - coarse).pow(2).mean().sqrt().item() * 255)

    def roundtrip(rgb: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return vae_roundtrip(comp.vae, to_tensor(rgb)).float()

    targets = [("stripes, period 16 (the default)", {"target": "stripes"}),
               ("stripes, period 32", {"target": "stripes", "period": 32}),
               ("checker, period 32", {"target": "checker", "period": 32}),
               ("grey", {"target": "grey"}),
               ("the painting, channels rotated", None)]
    print(
        f"testbed, {args.n_images} held-out {args.style} paintings 64 px, encoder cloak eps {args.eps:g}/255, "
        f"{args.steps} steps; change RMS in 0-255 units, coarse = mean over {BLOCK}x{BLOCK} px blocks"
    )
    clean_roundtrips = [roundtrip(rgb) for rgb in images]
    rotated = [np.ascontiguousarray(rgb[..., [2, 0, 1]]) for rgb in images]  # R, G, B -> B, R, G
    print("| target | file: coarse | file: fine | round trip: coarse | round trip: fine |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, options in targets:
            rows = []
            for i, rgb in enumerate(images):
                if options is None:  # a target image per painting, through the encoder's `target` file option
                    path = Path(tmp) / f"rotated-{i}.png"
                    Image.fromarray(rotated[i]).save(path)
                    opts = {"target": str(path)}
                else:
                    opts = options
                cloaker = Cloaker(comp, CloakConfig(method="encoder", eps=args.eps, steps=args.steps, options=opts))
                cloaked = cloaker.protect(rgb, seed=i).image
                file_change = split(to_tensor(cloaked) - to_tensor(rgb))
                rows.append(file_change + split(roundtrip(cloaked) - clean_roundtrips[i]))
            means = np.mean(rows, axis=0)
            print(f"| {label} | " + " | ".join(f"{v:.1f}" for v in means) + " |")
    asked = np.mean([split(to_tensor(r) - to_tensor(a)) for r, a in zip(rotated, images, strict=True)], axis=0)
    print(f"(the rotated painting differs from the painting by coarse {asked[0]:.1f}, fine {asked[1]:.1f})")


if __name__ == "__main__":
    main()
