"""Probe: are the `style` cloak's SDEdit decoys another style, and how far are they from the painting?

Glaze (Shan et al., USENIX Security'23) pulls an artwork toward a rendering of itself in a decoy style. Before a
mimicry run spends its time on such a cloak, this checks, on held-out testbed paintings, that the decoys the
testbed's img2img renders under a seen style's prompt (``style`` with ``decoy = "sdedit"``) are what the judge calls
that style, and how far their VAE latents lie from the painting's compared with the encoder cloak's stripes pattern
(RMS over latent elements, posterior means): the share of that distance an 8/255 cloak can close is what it pulls.

    python benchmarks/probe_decoys.py                                    # marbling and woodcut, two decoy styles
    python benchmarks/probe_decoys.py --styles impasto --decoys pointillism --strengths 0.3 0.5 0.7
"""

from __future__ import annotations

import argparse
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", nargs="+", default=["marbling", "woodcut"], help="held-out testbed styles")
    parser.add_argument("--decoys", nargs="+", default=["op art stripes", "watercolour"], help="seen styles")
    parser.add_argument("--strengths", nargs="+", type=float, default=[0.5, 0.7], help="SDEdit strengths")
    parser.add_argument("--n-images", type=int, default=8, help="held-out paintings per style")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from cloak.imageio import to_tensor
    from cloak.methods.diffusion import DIFFUSION_PARTS
    from cloak.methods.style import StyleCloak
    from cloak.models import load_components
    from cloak.targets import target_image
    from cloak.testbed.artists import EVAL_SEED_OFFSET, HELD_OUT, SEEN, paint
    from cloak.testbed.judge import load_judge
    from cloak.units import vae_latents

    for style in args.styles:
        if style not in HELD_OUT:
            parser.error(f"--styles takes held-out testbed styles ({', '.join(HELD_OUT)}), got {style!r}")
    for decoy in args.decoys:
        if decoy not in SEEN:
            parser.error(f"--decoys takes styles the base model has seen ({', '.join(SEEN)}), got {decoy!r}")
    comp = load_components("testbed", parts=DIFFUSION_PARTS, device="cpu")
    judge = load_judge()
    names = judge.style_names

    def latents(batch):
        with torch.no_grad():
            return vae_latents(comp.vae, batch)

    def rms(za, zb):
        return float((za - zb).pow(2).mean().sqrt())

    print(f"testbed, {args.n_images} held-out paintings a style, 64 px; judge's verdicts on the decoys")
    print(
        "| artist | decoy | strength | judged the decoy style | judged the artist | latent RMS to decoy "
        "| to stripes |"
    )
    print("|---|---|---|---|---|---|---|")
    for style in args.styles:
        x = torch.cat(
            [to_tensor((paint(style, EVAL_SEED_OFFSET + i).image * 255).round().astype("uint8"))
             for i in range(args.n_images)]
        )  # fmt: skip
        z_x = latents(x)
        to_stripes = rms(z_x, latents(target_image("stripes", *x.shape[-2:])).expand_as(z_x))
        for decoy in args.decoys:
            for strength in args.strengths:
                obj = StyleCloak(
                    comp, decoy="sdedit", decoy_prompt=f"a painting in the style of {decoy}", strength=strength
                )
                rendered = torch.cat([obj.decoy(view[None]) for view in x])
                verdicts = Counter(names[int(i)] for i in judge.predict(rendered))
                print(
                    f"| {style} | {decoy} | {strength:g} | {verdicts[decoy]}/{len(x)} | {verdicts[style]}/{len(x)} | "
                    f"{rms(z_x, latents(rendered)):.2f} | {to_stripes:.2f} |"
                )


if __name__ == "__main__":
    main()
