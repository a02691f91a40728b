"""Benchmark: seconds per image and peak memory of each preset, on the full-size SD-1.5 VAE architecture.

Random weights (speed does not depend on the weights), built from SD-1.5's VAE config, so it runs offline. Each
(preset, size) runs in its own process so that its peak RSS is its own.

    python benchmarks/bench_protect.py                      # all presets at 512 and 2048, a markdown table
    python benchmarks/bench_protect.py --presets fast --sizes 512
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

# SD-1.5's vae/config.json (architecture only).
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=512,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], scaling_factor=0.18215,
)


def run_one(preset: str, size: int, seed: int) -> dict:
    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    from cloak.models import Components
    from cloak.protect import CloakConfig, Cloaker

    torch.manual_seed(seed)
    vae = AutoencoderKL(**SD15_VAE).eval().requires_grad_(False)
    components = Components(name="sd15-vae-random", vae=vae, unet=None, text_encoder=None, tokenizer=None,
                            scheduler=None, resolution=512, device=torch.device("cpu"), dtype=torch.float32)
    cloaker = Cloaker(components, CloakConfig.from_preset(preset))
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    start = time.perf_counter()
    result = cloaker.protect(rgb, seed=seed)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"preset": preset, "size": size, "steps": cloaker.config.steps, "seconds": round(seconds, 1),
            "peak_rss_gib": round(peak_gib, 2), "linf": result.linf, "psnr": round(result.psnr, 2),
            "views": result.views, "bf16_autocast": cloaker.autocast}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["fast", "default", "strong"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", nargs=2, metavar=("PRESET", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.seed)))
        return
    import torch

    print(f"# cloak presets on the SD-1.5 VAE architecture: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| preset | size | steps | views | seconds/image | peak RSS (GiB) | L-inf | PSNR (dB) | bf16 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        for size in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--one", preset, str(size), "--seed", str(args.seed)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r['preset']} | {r['size']}x{r['size']} | {r['steps']} | {r['views']} | {r['seconds']} | "
                  f"{r['peak_rss_gib']} | {r['linf']} | {r['psnr']} | {r['bf16_autocast']} |", flush=True)


if __name__ == "__main__":
    main()
