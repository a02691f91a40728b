"""Benchmark: does a simple statistic of the cloaked latents predict how well a cloak protects?

For the cells of finished ``cloak eval`` runs (no purification), this reads each defence's saved training images and
the mimicry success its mimic reached, and prints, per defence, statistics of the latent shift the cloak makes,
``dz = E(x_cloaked) - E(x)`` (posterior means, scaled as the UNet sees them), over the artist's training images:

- ``shift``: RMS of ``dz``;
- ``shared``: RMS of the mean of ``dz`` over the images (the part of the shift every image shares, which a fine-tune
  can learn as one feature);
- ``shared/shift``: their ratio;
- ``decoded``: RMS of ``D(E(x_cloaked)) - D(E(x))`` in 0-255 units (how much of the shift the decoder shows);
- ``at_budget``: the share of pixel values the cloak changed by its largest change on the file, its L-inf budget (a
  sign-step cloak ends mostly there; how much lies inside the box is what sets its PSNR at a given budget).

and, for each artist, the Pearson correlation of each with the mean success across its defences. Images and scores
are matched to each config by the harness's fingerprints, so a defence whose images or cells in the folder were made
with other settings is left out (and said so).

    python benchmarks/latent_stats.py --out runs/worst8-lite --configs worst8 targets8 away8 space8 pattern8 style8
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the folder the eval runs wrote into")
    parser.add_argument("--configs", nargs="+", required=True, help="built-in config names (or paths) run into --out")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from eval import data
    from eval.config import load_config
    from eval.runner import ARCHIVE, CLEAN, NO_ATTACK, cell_fingerprint, inputs_of, plan

    rows = []
    for name in ("results.json", ARCHIVE):
        path = args.out / name
        if path.is_file():
            rows += json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    scores = {(r["key"], r.get("inputs")): r["score"] for r in rows if r.get("status") == "ok"}

    comp, vae = None, None
    success: dict[tuple[str, str], list[float]] = defaultdict(list)
    stats: dict[tuple[str, str], list[tuple[float, ...]]] = defaultdict(list)
    clean_latents: dict[str, tuple] = {}
    skipped, seen = set(), set()
    for config_name in args.configs:
        config = load_config(config_name)
        if comp is None:
            from cloak.models import load_components
            from cloak.units import vae_latents, vae_roundtrip

            comp = load_components(config.model, parts=("vae",), device="cpu")
            vae = comp.vae
        for cell in plan(config):
            if cell.attack != NO_ATTACK:
                continue
            print_ = cell_fingerprint(config, cell)
            if (cell.key, print_) in seen:  # the same cell named in several configs
                continue
            seen.add((cell.key, print_))
            score = scores.get((cell.key, print_))
            if score is None:
                skipped.add(f"{cell.defence} of {config_name} (seeds without a finished cell)")
                continue
            label = (cell.artist, cell.defence)
            if cell.defence == CLEAN:
                success[label].append(score)
                continue
            clean_folder = args.out / "images" / cell.artist / CLEAN
            names = tuple(sorted(p.stem for p in clean_folder.glob("*.png")))
            if cell.artist not in clean_latents:
                clean = data.load_set(clean_folder, names, inputs_of(config, cell.artist))
                if clean is None:
                    skipped.add(f"{cell.artist}'s clean images (missing, or made with other settings)")
                    continue
                x = data.to_batch(clean)
                with torch.no_grad():
                    clean_latents[cell.artist] = (vae_latents(vae, x), vae_roundtrip(vae, x), x)
            folder = args.out / "images" / cell.artist / cell.defence / f"seed{cell.seed}"
            cloaked = data.load_set(folder, names, inputs_of(config, cell.artist, cell.defence, seed=cell.seed))
            if cloaked is None:
                skipped.add(f"{cell.defence} of {config_name} (images missing, or made with other settings)")
                continue
            x = data.to_batch(cloaked)
            z0, r0, x0 = clean_latents[cell.artist]
            with torch.no_grad():
                dz = vae_latents(vae, x) - z0
                decoded = float((vae_roundtrip(vae, x) - r0).pow(2).mean().sqrt()) * 255
            change = ((x - x0) * 255).round().abs()
            at_budget = float((change == change.max()).float().mean())
            shift = float(dz.pow(2).mean().sqrt())
            shared = float(dz.mean(0).pow(2).mean().sqrt())
            success[label].append(score)
            stats[label].append((shift, shared, shared / shift, decoded, at_budget))

    table = sorted(
        (
            (label, float(np.mean(success[label])), len(success[label]), np.mean(stats[label], axis=0))
            for label in stats
        ),
        key=lambda row: row[1],
    )
    print(f"{args.out}: mimicry success (mean over seeds, no purification) and the latent shift of each cloak")
    for (artist, _), clean in ((k, v) for k, v in success.items() if k[1] == CLEAN):
        print(f"{artist}: clean {np.mean(clean):.2f} ({len(clean)} seeds)")
    print(f"{'artist':14s} {'defence':26s} {'success':>7s} {'seeds':>5s} {'shift':>6s} {'shared':>6s} "
          f"{'shared/shift':>12s} {'decoded':>7s} {'at_budget':>9s}")
    for (artist, defence), mean, n, s in table:
        print(
            f"{artist:14s} {defence:26s} {mean:7.2f} {n:5d} {s[0]:6.3f} {s[1]:6.3f} {s[2]:12.3f} {s[3]:7.1f} "
            f"{s[4]:9.2f}"
        )
    for artist in sorted({label[0] for label, *_ in table}):
        rows_ = [row for row in table if row[0][0] == artist]
        if len(rows_) < 3:
            continue
        y = np.array([row[1] for row in rows_])
        x = np.array([row[3] for row in rows_])
        print(f"{artist}: Pearson correlation with success over {len(rows_)} defences:", end="")
        for i, name in enumerate(("shift", "shared", "shared/shift", "decoded")):
            print(f" {name} {np.corrcoef(y, x[:, i])[0, 1]:+.2f}", end="")
        print()
    for line in sorted(skipped):
        print(f"left out: {line}")


if __name__ == "__main__":
    main()
