"""Controls: one perturbation shared by all of an artist's images, the pattern itself or one optimised for the set.

The encoder cloak and cloak 0.2's `default` make a fine-tune learn their target pattern (docs/RESULTS.md). Is the
adversarial optimisation through the VAE what does it, or would any faint pattern repeated in every training image
do the same? This writes copies of a testbed artist's training images (the ones ``cloak eval`` paints: seeds
``EVAL_SEED_OFFSET + i``, files ``train-000.png``, ...) with the ``stripes`` pattern added at +-EPS/255 (plus where
the pattern is above mid-grey, minus where below, per channel), for a ``precomputed`` defence
(``eval/configs/pattern8.toml``). It prints their PSNR and how much of the clean-to-pattern latent distance they close
(the "pull" of ``benchmarks/bench_impress.py``), beside the `default` cloak's on the same images.

``--mode universal`` instead optimises one perturbation for all the training images at once (a universal
adversarial perturbation, Moosavi-Dezfooli et al., CVPR'17): signed PGD within +-EPS/255 on the encoder objective
averaged over the images, the optimiser's cosine step schedule (``cloak.optim.PGDConfig``), one shared random start.
Each image is as different from its original as a per-image cloak's, but the change is the same in every image.

    python benchmarks/pattern_copies.py --out runs/pattern8                 # marbling, 16 images, 8/255
    python benchmarks/pattern_copies.py --out runs/universal8 --mode universal --steps 16
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="writes OUT/<style>/train-XXX.png")
    parser.add_argument("--styles", nargs="+", default=["marbling"], help="held-out testbed styles")
    parser.add_argument("--n", type=int, default=16, help="training images per style (the largest n_train used)")
    parser.add_argument("--eps", type=int, default=8, help="amplitude, 0-255 units")
    parser.add_argument("--period", type=int, default=16, help="stripe period, px")
    parser.add_argument("--mode", choices=("added", "universal"), default="added", help="how the change is made")
    parser.add_argument("--steps", type=int, default=16, help="PGD steps of --mode universal")
    parser.add_argument("--seed", type=int, default=0, help="random start of --mode universal")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    from cloak.imageio import to_tensor
    from cloak.metrics import psnr
    from cloak.models import load_components
    from cloak.optim import PGDConfig
    from cloak.protect import CloakConfig, Cloaker
    from cloak.targets import target_image
    from cloak.testbed.artists import HELD_OUT
    from cloak.units import vae_latents
    from eval.config import ArtistSpec
    from eval.data import load_artist, save_set

    for style in args.styles:
        if style not in HELD_OUT:
            parser.error(f"--styles takes held-out testbed styles ({', '.join(HELD_OUT)}), got {style!r}")
    comp = load_components("testbed", device="cpu")
    res = comp.resolution
    pattern = target_image("stripes", res, res, period=args.period)
    sign = torch.sign(pattern - 0.5)[0].permute(1, 2, 0).numpy()  # (R, R, 3) in {-1, 0, 1}
    with torch.no_grad():
        z_pattern = vae_latents(comp.vae, pattern)
    cloaker = Cloaker(comp, CloakConfig.from_preset("default"))

    def distance(rgb: np.ndarray) -> float:
        """Latent MSE of an image to the pattern's latent."""
        with torch.no_grad():
            return float(F.mse_loss(vae_latents(comp.vae, to_tensor(rgb)), z_pattern))

    def universal(train: list[np.ndarray]) -> list[np.ndarray]:
        """One delta for every image: signed PGD on the mean encoder objective, within +-eps/255."""
        x = torch.cat([to_tensor(a) for a in train])
        schedule = PGDConfig(eps=args.eps, steps=args.steps)
        eps = args.eps / 255
        generator = torch.Generator().manual_seed(args.seed)
        delta = (torch.rand((1, *x.shape[1:]), generator=generator) * 2 - 1) * eps
        for i in range(args.steps):
            delta.requires_grad_(True)
            loss = F.mse_loss(vae_latents(comp.vae, (x + delta).clamp(0, 1)), z_pattern.expand(len(x), -1, -1, -1))
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() - schedule.step_at(i) * grad.sign()).clamp(-eps, eps)
        out = ((x + delta).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return list(out)

    what = (
        f"stripes (period {args.period} px) added at +-{args.eps}/255"
        if args.mode == "added"
        else f"one perturbation for all images, {args.steps} PGD steps toward the stripes' latent at {args.eps}/255"
    )
    print(f"testbed, {what}, {args.n} training images a style")
    print("| artist | PSNR (dB) | pull | `default` cloak's pull (seed 0) |")
    print("|---|---|---|---|")
    for style in args.styles:
        images = load_artist(ArtistSpec(name=style, style=style, n_train=args.n, n_heldout=0), res)
        if args.mode == "added":
            copies = [
                np.clip(clean.astype(np.int16) + args.eps * sign.astype(np.int16), 0, 255).astype(np.uint8)
                for clean in images.train
            ]
        else:
            copies = universal(list(images.train))
        save_set(args.out / style, images.names, copies)
        psnrs, pulls, cloak_pulls = [], [], []
        for clean, changed in zip(images.train, copies, strict=True):
            psnrs.append(psnr(clean, changed))
            before = distance(clean)
            pulls.append(1 - distance(changed) / before)
            cloak_pulls.append(1 - distance(cloaker.protect(clean, seed=0).image) / before)
        print(f"| {style} | {np.mean(psnrs):.1f} | {np.mean(pulls):.3f} | {np.mean(cloak_pulls):.3f} |")
    print(f"wrote {args.out}/<style>/train-XXX.png")


if __name__ == "__main__":
    main()
