"""Benchmark: how close does the encoder cloak get, in few steps, to a long PGD run?

Issue 7's speed target compares the default preset with a 200-step PGD encoder baseline. This prints, for held-out
testbed paintings and an ``encoder`` cloak at one budget, the objective each step count reaches (latent MSE to the
target pattern's latent; lower is a stronger cloak) and the latent shift ``||E(x_adv) - E(x)||`` it makes, both
as a share of what the longest run reaches, measured on the saved 8-bit images. A step is one VAE forward +
backward (one model evaluation per view).

    python benchmarks/bench_steps.py                      # 8 paintings, eps 8, steps 4 8 16 20 50 200
    python benchmarks/bench_steps.py --steps 16 200 --n-images 4 --threads 1
    python benchmarks/bench_steps.py --steps 16 200 --min-psnr 35   # with a PSNR floor as well
    python benchmarks/bench_steps.py --steps 16 --style woodcut     # one held-out artist's paintings only
    python benchmarks/bench_steps.py --steps 16 --direction away    # the untargeted form (encoder's `direction`)
    python benchmarks/bench_steps.py --steps 16 --style marbling --space pixel  # compare the VAE round trip

The last column, the stripes in the round trip, is how much of the target pattern the decoder shows of the cloak: the
change of ``D(E(x))`` projected on the (mean-free) stripes image, as a share of the stripes' own amplitude.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 8, 16, 20, 50, 200], help="step counts")
    parser.add_argument("--eps", type=float, default=8.0, help="L-inf budget, 0-255 units")
    parser.add_argument("--n-images", type=int, default=8, help="held-out testbed paintings")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--style", default=None, help="one held-out testbed style (default: all four in turn)")
    parser.add_argument("--min-psnr", type=float, default=None, help="PSNR floor in dB on top of eps (default none)")
    parser.add_argument("--direction", choices=("toward", "away"), default="toward", help="the encoder's `direction`")
    parser.add_argument("--space", choices=("latent", "pixel"), default="latent", help="the encoder's `space`")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    from cloak.imageio import to_tensor
    from cloak.methods.encoder import EncoderAttack
    from cloak.models import load_components
    from cloak.protect import CloakConfig, Cloaker
    from cloak.targets import target_image
    from cloak.testbed.artists import EVAL_SEED_OFFSET, HELD_OUT, paint
    from cloak.units import vae_latents, vae_roundtrip

    if args.style is not None and args.style not in HELD_OUT:
        parser.error(f"--style must be a held-out testbed style ({', '.join(HELD_OUT)}), got {args.style!r}")
    styles = [args.style] if args.style else list(HELD_OUT)
    comp = load_components("testbed", parts=("vae",), device="cpu")
    images = [
        (paint(styles[i % len(styles)], EVAL_SEED_OFFSET + i).image * 255).round().astype("uint8")
        for i in range(args.n_images)
    ]

    def latents(rgb_list):
        with torch.no_grad():
            return vae_latents(comp.vae, torch.cat([to_tensor(a) for a in rgb_list])).float()

    def roundtrips(rgb_list):
        with torch.no_grad():
            return vae_roundtrip(comp.vae, torch.cat([to_tensor(a) for a in rgb_list])).float()

    clean = latents(images)
    clean_rt = roundtrips(images)
    stripes = target_image("stripes", *images[0].shape[:2])
    stripes = stripes - stripes.mean(dim=(2, 3), keepdim=True)
    with torch.no_grad():  # the encoder method's own target: the pattern's latent at the image's size
        target = EncoderAttack(comp).target(to_tensor(images[0]), torch.Generator()).float()
    rows = []
    for steps in sorted(args.steps):
        config = CloakConfig(
            method="encoder",
            eps=args.eps,
            steps=steps,
            min_psnr=args.min_psnr,
            options={"direction": args.direction, "space": args.space},
        )
        cloaker = Cloaker(comp, config)
        start = time.perf_counter()
        cloaked = [cloaker.protect(a, seed=0).image for a in images]
        seconds = (time.perf_counter() - start) / len(images)
        z = latents(cloaked)
        mse = F.mse_loss(z, target.expand_as(z), reduction="none").mean(dim=(1, 2, 3))
        shift = (z - clean).flatten(1).norm(dim=1)
        shown = ((roundtrips(cloaked) - clean_rt) * stripes).sum(dim=(1, 2, 3)) / stripes.pow(2).sum()
        rows.append((steps, mse.mean().item(), shift.mean().item(), seconds, shown.mean().item()))
    clean_mse = F.mse_loss(clean, target.expand_as(clean)).item()
    best_steps, best_mse, best_shift, _, _ = rows[-1]
    floor = f", PSNR >= {args.min_psnr:g} dB" if args.min_psnr is not None else ""
    print(
        f"testbed, {args.n_images} held-out paintings 64 px ({', '.join(styles)}), "
        f"encoder ({args.direction}, {args.space}) eps {args.eps:g}/255{floor}, {args.threads} thread(s)"
    )
    print(f"latent RMS of the clean images: {clean.pow(2).mean().sqrt().item():.3f}")
    print(f"latent MSE to target of the clean images: {clean_mse:.4f}")
    print(
        "| steps | latent MSE to target | drop from clean | drop / clean | share of longest run's drop | latent shift "
        "| share of its shift | s/image | stripes in the round trip |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for steps, mse, shift, sec, shown in rows:
        drop = (clean_mse - mse) / (clean_mse - best_mse)
        print(
            f"| {steps} | {mse:.4f} | {clean_mse - mse:.4f} | {(clean_mse - mse) / clean_mse:.2f} | {drop:.2f} "
            f"| {shift:.2f} | {shift / best_shift:.2f} | {sec:.2f} | {shown:.3f} |"
        )


if __name__ == "__main__":
    main()
