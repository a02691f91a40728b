"""Benchmark: seconds per image and peak memory of each preset, on the full-size SD-1.5 architecture.

Random weights (speed does not depend on the weights), built from SD-1.5's configs (the VAE; and the UNet and
CLIP ViT-L/14 text encoder for methods that use them), so it runs offline. Each (preset, size) runs in its own
process so that its peak RSS is its own. Any preset or published baseline (``cloak methods``) can be timed;
``--steps N`` runs N steps instead of the preset's and the table also gives seconds per step, so a long baseline's
time can be extrapolated (marked as such) without running it whole.

    python benchmarks/bench_protect.py                      # the artist presets at 512 and 2048, a markdown table
    python benchmarks/bench_protect.py --presets fast --sizes 512
    python benchmarks/bench_protect.py --presets mist sds --sizes 512 --steps 4
    python benchmarks/bench_protect.py --presets default --sizes 512 --option samples=4  # a preset's option changed
    python benchmarks/bench_protect.py --methods sdedit --sizes 512 --steps 1  # a bare method at 8/255, no preset
    python benchmarks/bench_protect.py --presets fast default --sizes 512 --images 3  # a batch through one cloaker

With ``--images N`` each case cloaks N different images of its size through one cloaker, as ``cloak protect`` runs a
folder; the table then also gives the first image's time and the later ones' mean (what is computed once per size,
such as the target pattern's latent, is paid by the first).
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


# SD-1.5's unet/config.json and text_encoder/config.json (architecture only), and its scheduler's noise schedule.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu",
)
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def sd15_components(seed: int, diffusion: bool):
    """SD-1.5's architecture with random weights: the VAE, plus UNet, text encoder and scheduler if ``diffusion``."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cloak.clip_tokenizer import build_clip_tokenizer
    from cloak.models import Components

    torch.manual_seed(seed)
    vae = AutoencoderKL(**SD15_VAE).eval().requires_grad_(False)
    parts = dict(unet=None, text_encoder=None, tokenizer=None, scheduler=None)
    if diffusion:
        parts = dict(
            unet=UNet2DConditionModel(**SD15_UNET).eval().requires_grad_(False),
            text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).eval().requires_grad_(False),
            tokenizer=build_clip_tokenizer(),
            scheduler=DDPMScheduler(**SD15_SCHEDULER),
        )
    return Components(name="sd15-random", vae=vae, resolution=512, device=torch.device("cpu"),
                      dtype=torch.float32, **parts)


#: ``--methods NAME`` runs are passed to ``--one`` as ``method:NAME``.
METHOD_PREFIX = "method:"


def parse_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, value), as ``cloak protect --option`` reads it (``cloak.presets.parse_option``)."""
    from cloak.errors import ConfigError
    from cloak.presets import parse_option as parse

    try:
        return parse(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run_one(
    preset: str,
    size: int,
    seed: int,
    steps: int | None = None,
    options: dict | None = None,
    float32: bool = False,
    images: int = 1,
) -> dict:
    import numpy as np

    from cloak.methods import METHODS
    from cloak.protect import CloakConfig, Cloaker, slim_for_cloaking

    method = preset.removeprefix(METHOD_PREFIX)
    if method != preset:  # a bare method with its default options at 8/255
        config = CloakConfig(method=method, eps=8, steps=steps or 8, options=options or {})
    else:
        config = CloakConfig.from_preset(preset, steps=steps, options=options or None)
    components = sd15_components(seed, diffusion="unet" in METHODS[config.method].needs)
    cloaker = Cloaker(components, config)
    slim_for_cloaking(components, cloaker, bf16_unet=not float32)  # as `cloak protect` does
    times = []
    for i in range(images):
        rgb = np.random.default_rng(seed + i).integers(0, 256, (size, size, 3), dtype=np.uint8)
        start = time.perf_counter()
        result = cloaker.protect(rgb, seed=seed)
        times.append(time.perf_counter() - start)
    seconds = sum(times) / len(times)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"preset": preset, "size": size, "steps": cloaker.config.steps, "seconds": round(seconds, 1),
            "first": round(times[0], 1), "later": round(sum(times[1:]) / max(1, len(times) - 1), 1),
            "per_step": round(seconds / cloaker.config.steps, 2), "method": cloaker.config.method,
            "peak_rss_gib": round(peak_gib, 2), "linf": result.linf, "psnr": round(result.psnr, 2),
            "views": result.views, "bf16_autocast": cloaker.autocast, "options": cloaker.config.options}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=None,
                        help="presets to time (default: fast, default, strong; none when --methods is given)")
    parser.add_argument("--methods", nargs="+", default=[],
                        help="also time these methods bare (8/255, their default options, 8 steps unless --steps)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="run this many steps instead of the preset's")
    parser.add_argument("--option", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                        help="override one of the presets' method options (repeatable), e.g. samples=1")
    parser.add_argument("--float32-unet", action="store_true",
                        help="keep the UNet's weights in float32 (to measure what storing them in bf16 saves)")
    parser.add_argument("--images", type=int, default=1,
                        help="cloak this many images of each size through one cloaker (as a folder is)")
    parser.add_argument("--one", nargs=2, metavar=("PRESET", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.seed, args.steps, dict(args.option),
                                 args.float32_unet, args.images)))
        return
    import torch

    print(f"# cloak presets on the SD-1.5 architecture: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    if args.option:
        print("# options: " + ", ".join(f"{k}={v}" for k, v in args.option))
    if args.float32_unet:
        print("# UNet weights kept in float32")
    batch = args.images > 1
    if batch:
        print(f"# {args.images} images of each size through one cloaker; seconds/image is their mean")
    print("| preset | method | size | steps | views | seconds/image | seconds/step | peak RSS (GiB) | L-inf | "
          "PSNR (dB) | bf16 |" + (" first image (s) | later images (s) |" if batch else ""))
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if batch else ""))
    presets = args.presets if args.presets is not None else [] if args.methods else ["fast", "default", "strong"]
    for preset in presets + [METHOD_PREFIX + m for m in args.methods]:
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--one", preset, str(size), "--seed", str(args.seed)]
            cmd += ["--steps", str(args.steps)] if args.steps else []
            cmd += [f"--option={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.option]
            cmd += ["--float32-unet"] if args.float32_unet else []
            cmd += ["--images", str(args.images)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:  # show the case's own error, then go on with the next case
                last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
                print(f"| {preset} | failed at {size}x{size}: {last} |", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r['preset']} | {r['method']} | {r['size']}x{r['size']} | {r['steps']} | {r['views']} | "
                  f"{r['seconds']} | {r['per_step']} | {r['peak_rss_gib']} | {r['linf']} | {r['psnr']} | "
                  f"{r['bf16_autocast']} |" + (f" {r['first']} | {r['later']} |" if batch else ""), flush=True)


if __name__ == "__main__":
    main()
