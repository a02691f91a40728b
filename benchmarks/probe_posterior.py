"""Benchmark: how far can a cloak move the VAE posterior's variance (PID's lever) and mean?

A latent diffusion fine-tune trains on samples ``z = mu + sigma * n`` of the encoder's posterior. PID (Li et al.,
ICML'24) perturbs images so that both moments move; if ``sigma`` could be raised far, the mimic would train on noise.
This prints, for held-out testbed paintings, the posterior's standard deviation and the latent RMS (both in the
UNet's scaled units) of the clean images, and what a ``pid`` cloak makes of them, for each ``terms`` option, measured
on the saved 8-bit images: the ratio of the mean standard deviation to the clean one, the RMS change of ``log sigma``
element by element (0.1: sigma about 10 % larger or smaller), and the RMS shift of the mean.

    python benchmarks/probe_posterior.py                               # 8/255, 16 steps, 4 paintings a style
    python benchmarks/probe_posterior.py --eps 12.75 --steps 1000 --n-images 2   # PID's released setting
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eps", type=float, default=8.0, help="L-inf budget, 0-255 units")
    parser.add_argument("--steps", type=int, default=16, help="optimiser steps")
    parser.add_argument("--n-images", type=int, default=4, help="held-out paintings per style")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from cloak.imageio import to_tensor
    from cloak.methods.pid import TERMS, posterior_moments
    from cloak.models import load_components
    from cloak.protect import CloakConfig, Cloaker
    from cloak.testbed.artists import EVAL_SEED_OFFSET, HELD_OUT, paint

    comp = load_components("testbed", parts=("vae",), device="cpu")
    scale = comp.vae.config.scaling_factor

    def moments(rgb_list):
        with torch.no_grad():
            mean, logvar = posterior_moments(comp.vae, torch.cat([to_tensor(a) for a in rgb_list]))
        return mean * scale, 0.5 * logvar + torch.log(torch.tensor(scale))

    cloakers = {
        t: Cloaker(comp, CloakConfig(method="pid", eps=args.eps, steps=args.steps, options={"terms": t}))
        for t in TERMS
    }
    print(f"testbed VAE, {args.n_images} held-out paintings a style, pid at {args.eps:g}/255, {args.steps} steps")
    print(
        "| style | latent RMS | posterior std | "
        + " | ".join(f"{t}: std ratio, log std change, mean shift" for t in TERMS)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(TERMS))
    for style in HELD_OUT:
        images = [
            (paint(style, EVAL_SEED_OFFSET + i).image * 255).round().astype("uint8") for i in range(args.n_images)
        ]
        mean0, logstd0 = moments(images)
        cells = []
        for cloaker in cloakers.values():
            mean1, logstd1 = moments([cloaker.protect(a, seed=0).image for a in images])
            ratio = float(logstd1.exp().mean() / logstd0.exp().mean())
            change = float((logstd1 - logstd0).pow(2).mean().sqrt())
            shift = float((mean1 - mean0).pow(2).mean().sqrt())
            cells.append(f"{ratio:.3f}, {change:.3f}, {shift:.3f}")
        rms, std = float(mean0.pow(2).mean().sqrt()), float(logstd0.exp().mean())
        print(f"| {style} | {rms:.3f} | {std:.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
