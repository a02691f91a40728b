"""Measure the testbed's gates: is it a faithful enough miniature for protection results to mean something?

Gates (issue 3), all on fresh evaluation seeds (``>= EVAL_SEED_OFFSET``, never used by a build):

- VAE reconstruction PSNR >= 24 dB on every style (mean over its images; held-out styles included).
- Judge accuracy >= 95% on images of all styles.
- Base model prompted "a painting in the style of <seen style>": >= 70% of generations judged as that style
  (mean over the seen styles).
- DreamBooth on 16 clean images of a held-out style with "a painting in sks style": >= 70% of generations
  judged as that style after fine-tuning, against <= 20% from the base model with the same prompt
  (mean over the held-out styles; each style's figure is printed too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from cloak.errors import ConfigError
from cloak.testbed.artists import EVAL_SEED_OFFSET, HELD_OUT, SEEN, STYLES, caption, paint_batch
from cloak.testbed.judge import Judge, load_judge

SKS_PROMPT = "a painting in sks style"
"""The DreamBooth prompt of the testbed's mimicry gate."""

PSNR_MIN_DB = 24.0
JUDGE_ACC_MIN = 0.95
BASE_FIDELITY_MIN = 0.70
DREAMBOOTH_MIN = 0.70
BASE_SKS_MAX = 0.20


@dataclass(frozen=True)
class CheckSettings:
    """How much the check draws.

    Attributes:
        images_per_style: evaluation images per style for the PSNR and judge-accuracy gates.
        generations: generations per prompt for the fidelity and DreamBooth gates.
        num_inference_steps: DDIM steps per generation.
        guidance_scale: classifier-free guidance scale.
        instance_images: DreamBooth training images (16 in the gate).
        db_steps, db_lr, db_batch: the DreamBooth fine-tune.
        held_out: held-out styles to fine-tune on.
    """

    images_per_style: int = 64
    generations: int = 24
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    instance_images: int = 16
    db_steps: int = 1500
    db_lr: float = 4e-4
    db_batch: int = 8
    held_out: tuple[str, ...] = HELD_OUT


QUICK = CheckSettings(images_per_style=8, generations=4, num_inference_steps=5, db_steps=5, held_out=HELD_OUT[:1])
"""A smoke run that exercises every gate in seconds (figures meaningless)."""


@dataclass(frozen=True)
class Gate:
    """One gate: its name, the measured figure, the target (both as text) and whether it passed."""

    name: str
    measured: str
    target: str
    passed: bool


@dataclass(frozen=True)
class CheckReport:
    """The gates and the raw figures behind them (per style), plus seconds per stage."""

    gates: list[Gate]
    figures: dict[str, object] = field(default_factory=dict)


def psnr_db(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [0, 1], ``(B,)``."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def judged_fraction(judge: Judge, images: Tensor, style: str) -> float:
    """Fraction of ``images`` the judge names ``style``, in [0, 1]."""
    return float((judge.predict(images).cpu() == STYLES.index(style)).float().mean())


def _eval_images(style: str, n: int, size: int) -> Tensor:
    images, _ = paint_batch(style, range(EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + n), size)
    return torch.from_numpy(images)


def run_check(
    model: str = "testbed",
    seed: int = 0,
    quick: bool = False,
    settings: CheckSettings | None = None,
    log: Callable[[str], None] = print,
    held_out: str = "",
) -> CheckReport:
    """Measure every gate on ``model`` ("testbed" or a folder written by ``build``) with its judge.

    The DreamBooth gate uses the evaluation suite's fine-tune (``eval.mimics``), the project's one DreamBooth
    implementation, so ``cloak eval`` and this check train the same mimic.

    Args:
        model: "testbed" (the shipped weights; judge in ``cloak/testbed/weights/judge``) or a build folder
            (judge in ``<folder>/judge``).
        seed: seed of every draw (generation noise, DreamBooth batches).
        quick: use ``QUICK`` settings (a smoke run) unless ``settings`` is given.
        settings: explicit settings.
        log: where progress lines go.
        held_out: comma-separated held-out styles to DreamBooth, overriding the settings' list ("" keeps it).

    Returns:
        A ``CheckReport``; ``figures`` holds per-style numbers and timings.
    """
    from cloak.models import TESTBED, TESTBED_DIR, load_components
    from eval.mimics import FinetuneConfig, finetune, generate

    s = settings or (QUICK if quick else CheckSettings())
    if held_out:
        names = tuple(n.strip() for n in held_out.split(","))
        unknown = [n for n in names if n not in HELD_OUT]
        if unknown:
            raise ConfigError(f"`held_out` styles must be among {', '.join(HELD_OUT)}, got {', '.join(unknown)}.")
        s = replace(s, held_out=names)
    folder = TESTBED_DIR if model == TESTBED else Path(model)
    comp = load_components(model, device="cpu")
    judge = load_judge("cpu", folder / "judge")
    r = comp.resolution
    figures: dict[str, object] = {"settings": s.__dict__.copy()}
    gates: list[Gate] = []
    t0 = time.perf_counter()

    # 1. VAE reconstruction and 2. judge accuracy, on evaluation images of every style.
    psnr, acc = {}, {}
    with torch.no_grad():
        for style in STYLES:
            x = _eval_images(style, s.images_per_style, r)
            z = comp.require("vae").encode(x * 2 - 1).latent_dist.mean
            rec = ((comp.require("vae").decode(z).sample + 1) / 2).clamp(0, 1)
            psnr[style] = float(psnr_db(rec, x).mean())
            acc[style] = judged_fraction(judge, x, style)
    figures["vae_psnr_db"], figures["judge_accuracy"] = psnr, acc
    worst = min(psnr, key=psnr.__getitem__)
    gates.append(
        Gate(
            "VAE PSNR, worst style",
            f"{psnr[worst]:.1f} dB ({worst})",
            f">= {PSNR_MIN_DB:.0f} dB",
            psnr[worst] >= PSNR_MIN_DB,
        )
    )
    mean_acc = sum(acc.values()) / len(acc)
    gates.append(
        Gate("judge accuracy, all styles", f"{mean_acc:.1%}", f">= {JUDGE_ACC_MIN:.0%}", mean_acc >= JUDGE_ACC_MIN)
    )
    log(f"VAE and judge measured in {time.perf_counter() - t0:.0f} s")

    # 3. Base model fidelity on seen styles.
    gen = torch.Generator().manual_seed(seed)
    fidelity = {}
    for style in SEEN:
        images = generate(
            comp, caption(style), s.generations, s.num_inference_steps, s.guidance_scale, gen, batch_size=16
        )
        fidelity[style] = judged_fraction(judge, images, style)
    figures["base_fidelity"] = fidelity
    mean_fid = sum(fidelity.values()) / len(fidelity)
    gates.append(
        Gate(
            "base model, seen style prompted",
            f"{mean_fid:.1%}",
            f">= {BASE_FIDELITY_MIN:.0%}",
            mean_fid >= BASE_FIDELITY_MIN,
        )
    )
    log(f"base fidelity measured at {time.perf_counter() - t0:.0f} s: {mean_fid:.1%}")

    # 4. DreamBooth mimicry of held-out styles.
    before, after, seconds, cpu_seconds = {}, {}, {}, {}
    for style in s.held_out:
        base_images = generate(
            comp, SKS_PROMPT, s.generations, s.num_inference_steps, s.guidance_scale, gen, batch_size=16
        )
        before[style] = judged_fraction(judge, base_images, style)
        instance = _eval_images(style, s.instance_images, r)
        t_db, cpu_db = time.perf_counter(), time.process_time()
        db = FinetuneConfig(instance_prompt=SKS_PROMPT, steps=s.db_steps, lr=s.db_lr, batch_size=s.db_batch)
        mimic = finetune(comp, instance, db, gen)
        seconds[style] = time.perf_counter() - t_db
        cpu_seconds[style] = time.process_time() - cpu_db
        images = generate(
            mimic, SKS_PROMPT, s.generations, s.num_inference_steps, s.guidance_scale, gen, batch_size=16
        )
        after[style] = judged_fraction(judge, images, style)
        log(
            f"DreamBooth on {style}: {before[style]:.0%} -> {after[style]:.0%} in {seconds[style]:.0f} s wall, "
            f"{cpu_seconds[style]:.0f} s CPU ({torch.get_num_threads()} threads)"
        )
    figures["dreambooth_before"], figures["dreambooth_after"] = before, after
    figures["dreambooth_seconds"], figures["dreambooth_cpu_seconds"] = seconds, cpu_seconds
    mean_after = sum(after.values()) / len(after)
    mean_before = sum(before.values()) / len(before)
    gates.append(
        Gate(
            "DreamBooth (sks) mimic judged as the style",
            f"{mean_after:.1%}",
            f">= {DREAMBOOTH_MIN:.0%}",
            mean_after >= DREAMBOOTH_MIN,
        )
    )
    gates.append(
        Gate(
            "base model with the sks prompt",
            f"{mean_before:.1%}",
            f"<= {BASE_SKS_MAX:.0%}",
            mean_before <= BASE_SKS_MAX,
        )
    )
    slowest = max(seconds, key=seconds.__getitem__)
    gates.append(
        Gate(
            "DreamBooth fine-tune time, slowest (wall)",
            f"{seconds[slowest]:.0f} s ({cpu_seconds[slowest]:.0f} s CPU)",
            "<= 180 s",
            seconds[slowest] <= 180,
        )
    )
    figures["seconds"] = time.perf_counter() - t0
    return CheckReport(gates=gates, figures=figures)
