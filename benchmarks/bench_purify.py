"""Benchmark: seconds to purify one image with each diffusion purifier, on a given model and thread count.

The image is a fixed random-noise RGB square (speed does not depend on the content); the model is loaded once,
on the CPU. Each spec runs once per size after one untimed warm-up call on a small image (first-call allocations
are not counted). The machine's load average is printed with the table: on a shared machine it explains slow
figures.

    python benchmarks/bench_purify.py                                  # the four diffusion purifiers, 512 px
    python benchmarks/bench_purify.py --specs gridpure impress:iterations=10 --sizes 256 512 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

DEFAULT_SPECS = ("diffpure", "gridpure", "noisy_upscale", "impress")


def time_spec(spec: str, components, size: int, seed: int) -> float:
    """Wall seconds of one purification of a ``size`` x ``size`` image with ``spec``."""
    import torch

    from attacks import parse_spec

    purifier = parse_spec(spec, components)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    purifier(x[..., :32, :32], torch.Generator().manual_seed(seed))  # warm-up, untimed
    start = time.perf_counter()
    purifier(x, torch.Generator().manual_seed(seed))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS), help="purifier specs (attacks grammar)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[512], help="image sides, px")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--model", default="testbed", help="cloak.models.load_components model (default testbed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from cloak.models import load_components

    torch.set_num_threads(args.threads)
    components = load_components(args.model, ["vae", "unet", "text_encoder", "tokenizer", "scheduler"], device="cpu")
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"# diffusion purifiers on model {components.name!r} (resolution {components.resolution} px), CPU, "
        f"torch {torch.__version__}, load average at start {load} ({os.cpu_count()} cores)"
    )
    print("| purifier | image size | seconds | threads |")
    print("|---|---|---|---|")
    for spec in args.specs:
        for size in args.sizes:
            seconds = time_spec(spec, components, size, args.seed)
            print(f"| `{spec}` | {size}x{size} | {seconds:.1f} | {torch.get_num_threads()} |", flush=True)
    print(f"# load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
