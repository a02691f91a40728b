"""Benchmark: how much of the cloak's pull toward its target pattern is left after a purification (IMPRESS)?

Cloak 0.2's `default` pulls the VAE latent of the image toward the latent of a target pattern (and adds SDS(-)).
IMPRESS (Cao et al., NeurIPS'23) looks for an image near the cloaked one that the VAE reconstructs faithfully,
which undoes cloaks that make ``D(E(x))`` differ from ``x``. This prints, for held-out testbed paintings, the
share of the clean-to-target latent distance the cloak closes ("pull": 1 - ||E(x') - t||^2 / ||E(x) - t||^2,
posterior means, on the saved 8-bit images) and what is left of it after the purification (the same with both
images purified: 1 - ||E(P(x')) - t||^2 / ||E(P(x)) - t||^2), the VAE's reconstruction error on the cloaked image
(RMS, 0-255 units) and the PSNR.

``--attack`` takes several purifications (a column each). ``--smooth SIGMA`` adds a variant of the preset whose
optimiser low-passes its start and gradients (``CloakConfig.smooth``). ``--consistency MU`` adds a variant of the
preset whose objective also carries ``MU * ||D(E(x')) - x'||^2`` (the reconstruction error IMPRESS minimises), to
ask whether a cloak the VAE already reproduces keeps more of its pull. That variant is an experiment defined here,
not a library method; it costs a VAE decoder forward and backward a step. ``--bpda K`` adds a variant whose objective
is taken at the image after K steps of the suite's IMPRESS and back-propagated as if that purification were the
identity (BPDA: Athalye, Carlini and Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018), to ask
whether a cloak optimised through the purification keeps more of its pull; it costs K VAE round trips a step.
``--roundtrip W`` adds a variant whose objective also carries ``W * ||E(D(E(x'))) - t||^2``, the pull measured again
after one VAE round trip (the map whose fixed points IMPRESS seeks), to ask whether a pull that survives a round trip
survives IMPRESS; it costs a VAE round trip a step. ``--steps N`` runs every variant with N steps.

    python benchmarks/bench_impress.py                                   # the default, IMPRESS, 8 paintings
    python benchmarks/bench_impress.py --consistency 100 1000 10000      # and three consistency weights
    python benchmarks/bench_impress.py --attack "blur:sigma=1" --style impasto
    python benchmarks/bench_impress.py --bpda 10 50                      # optimised through 10 and 50 IMPRESS steps
    python benchmarks/bench_impress.py --roundtrip 1 4 --attack impress blur:sigma=1 resize:factor=0.5
    python benchmarks/bench_impress.py --steps 32 --roundtrip 4 --bpda 10  # the same with 32 steps
    python benchmarks/bench_impress.py --attack blur:sigma=1 resize:factor=0.5 jpeg:quality=75 impress \
        --smooth 0.5 0.7 1                                                # low-passed variants, four purifications
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", help="a preset pulling toward a target (mist, encoder)")
    parser.add_argument("--steps", type=int, default=None, help="run this many steps instead of the preset's")
    parser.add_argument("--attack", nargs="+", default=["impress"], help="purification specs (attacks)")
    parser.add_argument("--consistency", nargs="*", type=float, default=[], help="weights MU of the variant")
    parser.add_argument("--roundtrip", nargs="*", type=float, default=[], help="weights W of the round-trip variant")
    parser.add_argument("--bpda", nargs="*", type=int, default=[], help="IMPRESS steps K of the BPDA variant")
    parser.add_argument("--smooth", nargs="*", type=float, default=[], help="sigmas (px) of the low-passed variant")
    parser.add_argument("--n-images", type=int, default=8, help="held-out testbed paintings")
    parser.add_argument("--style", default="marbling", help="held-out testbed style")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    from attacks import parse_spec
    from attacks.diffusion import impress
    from cloak.imageio import to_tensor
    from cloak.methods import METHODS
    from cloak.methods.diffusion import DIFFUSION_PARTS
    from cloak.methods.encoder import EncoderAttack
    from cloak.models import load_components
    from cloak.protect import CloakConfig, Cloaker
    from cloak.testbed.artists import EVAL_SEED_OFFSET, HELD_OUT, paint
    from cloak.units import vae_latents, vae_roundtrip

    if args.style not in HELD_OUT:
        parser.error(f"--style must be a held-out testbed style ({', '.join(HELD_OUT)}), got {args.style!r}")
    base = CloakConfig.from_preset(args.preset, steps=args.steps)
    if not issubclass(METHODS[base.method], EncoderAttack):
        parser.error(f"preset {args.preset!r} uses {base.method!r}, which pulls toward no target pattern")

    class Consistent(METHODS[base.method]):
        """The preset's objective plus ``mu`` (an option) times the VAE reconstruction error of the cloaked image."""

        name = "bench-consistent"

        def __init__(self, components, mu: float = 0.0, **options):
            super().__init__(components, **options)
            self.mu = mu

        def loss(self, x_adv, target, generator):
            recon = vae_roundtrip(self.components.vae, x_adv)
            return super().loss(x_adv, target, generator) + self.mu * F.mse_loss(recon.float(), x_adv.float())

    class ThroughImpress(METHODS[base.method]):
        """The preset's objective at the image after ``k`` (an option) steps of the suite's IMPRESS, back-propagated
        as if the purification were the identity (BPDA)."""

        name = "bench-through-impress"

        def __init__(self, components, k: int = 0, **options):
            super().__init__(components, **options)
            self.k = k

        def loss(self, x_adv, target, generator):
            purified = impress(x_adv.detach(), self.components, self.k, 0.004, 8.0, 0.1, 0.025)
            return super().loss(x_adv + (purified - x_adv).detach(), target, generator)

    class RoundTrip(METHODS[base.method]):
        """The preset's objective plus ``w`` (an option) times the textural pull measured again after one VAE round
        trip of the cloaked image: ``||E(D(E(x'))) - t||^2``."""

        name = "bench-roundtrip"

        def __init__(self, components, w: float = 0.0, **options):
            super().__init__(components, **options)
            self.w = w

        def loss(self, x_adv, target, generator):
            again = vae_latents(self.components.vae, vae_roundtrip(self.components.vae, x_adv).clamp(0, 1))
            return super().loss(x_adv, target, generator) + self.w * F.mse_loss(again.float(), target.float())

    METHODS[Consistent.name] = Consistent  # this process only
    METHODS[RoundTrip.name] = RoundTrip
    METHODS[ThroughImpress.name] = ThroughImpress
    comp = load_components("testbed", parts=DIFFUSION_PARTS, device="cpu")
    purifiers = {spec: parse_spec(spec, comp) for spec in args.attack}
    images = [
        (paint(args.style, EVAL_SEED_OFFSET + i).image * 255).round().astype("uint8") for i in range(args.n_images)
    ]
    x = torch.cat([to_tensor(a) for a in images])

    def latents(batch):
        with torch.no_grad():
            return vae_latents(comp.vae, batch).float()

    with torch.no_grad():  # the method's own target: the pattern's latent at the image's size
        target = EncoderAttack(comp, **{k: v for k, v in base.options.items() if k in ("target", "period")}).target(
            x[:1], torch.Generator()
        ).float()

    def distance(z):
        return F.mse_loss(z, target.expand_as(z), reduction="none").mean(dim=(1, 2, 3))

    def purify(spec, batch):
        return purifiers[spec](batch, torch.Generator().manual_seed(0))

    clean = distance(latents(x))
    clean_purified = {spec: distance(latents(purify(spec, x))) for spec in args.attack}
    print(
        f"testbed, {args.n_images} held-out {args.style} paintings 64 px, preset {args.preset!r} "
        f"({base.method}, {base.steps} steps, eps {base.eps:g}/255), {args.threads} thread(s); "
        "after each purification: pull (share of the unpurified pull left)"
    )
    print(f"| cloak | pull | {' | '.join(args.attack)} | VAE recon RMS (0-255) | PSNR (dB) | s/image |")
    print("|---|---|" + "---|" * len(args.attack) + "---|---|---|")
    variants = [(args.preset, base)]
    variants += [(f"{args.preset}, smooth {sigma:g}", replace(base, smooth=sigma)) for sigma in args.smooth]
    for mu in args.consistency:
        consistent = replace(base, method=Consistent.name, options={**base.options, "mu": mu})
        variants.append((f"{args.preset} + {mu:g} x recon error", consistent))
    for w in args.roundtrip:
        again = replace(base, method=RoundTrip.name, options={**base.options, "w": w})
        variants.append((f"{args.preset} + {w:g} x pull after a round trip", again))
    for k in args.bpda:
        through = replace(base, method=ThroughImpress.name, options={**base.options, "k": k})
        variants.append((f"{args.preset} through {k} IMPRESS steps (BPDA)", through))
    for label, config in variants:
        cloaker = Cloaker(comp, config)
        start = time.perf_counter()
        results = [cloaker.protect(a, seed=i) for i, a in enumerate(images)]
        seconds = (time.perf_counter() - start) / len(images)
        cloaked = torch.cat([to_tensor(r.image) for r in results])
        pull = 1 - distance(latents(cloaked)) / clean
        after = []
        for spec in args.attack:
            left = (1 - distance(latents(purify(spec, cloaked))) / clean_purified[spec]).mean()
            after.append(f"{left:.3f} ({left / pull.mean():.2f})")
        with torch.no_grad():
            recon = vae_roundtrip(comp.vae, cloaked)
        rms = (recon - cloaked).pow(2).mean().sqrt().item() * 255
        psnr = sum(r.psnr for r in results) / len(results)
        print(f"| {label} | {pull.mean():.3f} | {' | '.join(after)} | {rms:.2f} | {psnr:.1f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
