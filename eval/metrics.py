"""One small function per evaluation metric; each docstring gives its direction and input range.

Mimicry (how well the mimic copies the artist): ``judge_success`` (testbed), ``style_similarity`` and
``frechet_distance`` in a feature space (the judge's or CLIP's), ``clip_score`` (prompt alignment),
``sharpness`` (weights-free image quality). Protection: ``protection_effect``, ``retained_fraction``,
``worst_case``, ``seed_spread``. Cloak visibility on the training images: ``visibility`` (reuses
``cloak.metrics``, on the 8-bit files).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from cloak import metrics as pixel_metrics
from cloak.errors import ConfigError
from cloak.metrics import frechet_distance  # noqa: F401  (re-exported: one implementation, in cloak)
from cloak.units import to_clip

if TYPE_CHECKING:
    from cloak.models import OpenClip
    from cloak.testbed.judge import Judge

__all__ = [
    "clip_image_features",
    "clip_score",
    "clip_text_features",
    "frechet_distance",
    "judge_success",
    "judged_share",
    "protection_effect",
    "retained_fraction",
    "seed_spread",
    "sharpness",
    "style_similarity",
    "visibility",
    "worst_case",
]


def judge_success(judge: Judge, images: Tensor, style: str) -> float:
    """Fraction of ``images`` the style judge names as ``style``: the testbed's mimicry success rate.

    Args:
        judge: a ``cloak.testbed.judge.Judge``.
        images: ``(B, 3, H, W)`` in [0, 1], B >= 1 (resized to the judge's side).
        style: one of ``judge.style_names``.

    Returns:
        In [0, 1]; higher = the mimicry worked (1: every image judged in the artist's style).
    """
    return judged_share(judge.name_counts(images), style, judge.style_names)


def judged_share(counts: Mapping[str, int], style: str, style_names: Sequence[str]) -> float:
    """The share of the judge's namings ``counts`` (``Judge.name_counts``) that name ``style``, one of
    ``style_names``: ``judge_success`` from namings already counted."""
    if style not in style_names:
        raise ConfigError(f"the judge does not know the style {style!r}; it knows {', '.join(style_names)}.")
    return counts.get(style, 0) / sum(counts.values())


def style_similarity(feats: Tensor, ref_feats: Tensor) -> float:
    """Mean cosine similarity of each image's features to the centroid of the artist's held-out features.

    The CLIP-based style score of mimicry studies (e.g. Shan et al., Glaze, https://arxiv.org/abs/2302.04222,
    use CLIP features to judge style); works in any feature space (the judge's, CLIP's).

    Args:
        feats: ``(N, D)`` features of the generations.
        ref_feats: ``(M, D)`` features of the artist's held-out images.

    Returns:
        In [-1, 1]; higher = closer to the artist's style.
    """
    if feats.ndim != 2 or ref_feats.ndim != 2 or feats.shape[1] != ref_feats.shape[1]:
        raise ConfigError(
            f"features must be (N, D) and (M, D), got {tuple(feats.shape)} and {tuple(ref_feats.shape)}."
        )
    centroid = torch.nn.functional.normalize(ref_feats.float(), dim=1).mean(0, keepdim=True)
    return float(torch.nn.functional.cosine_similarity(feats.float(), centroid, dim=1).mean())


@torch.no_grad()
def clip_image_features(clip: OpenClip, images: Tensor, batch_size: int = 32) -> Tensor:
    """L2-normalised CLIP image embeddings ``(B, D)`` of ``images`` ``(B, 3, H, W)`` in [0, 1].

    Args:
        clip: a ``cloak.models.OpenClip`` (images are resized to its input size with its interpolation and
            normalised with its mean and std).
        images: in [0, 1].
        batch_size: images per forward pass.
    """
    p = next(clip.model.parameters())
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device=p.device, dtype=p.dtype)
        x = torch.nn.functional.interpolate(x, size=clip.image_size, mode=clip.interpolation, antialias=True)
        # torch types a Module's attributes as Tensor | Module; encode_image is a method of open_clip's CLIP
        image = to_clip(x.clamp(0, 1), clip.mean, clip.std)
        out.append(torch.nn.functional.normalize(clip.model.encode_image(image).float(), dim=1))  # type: ignore[operator]
    return torch.cat(out).cpu()


@torch.no_grad()
def clip_text_features(clip: OpenClip, tokenizer: Callable[[list[str]], Tensor], prompts: Sequence[str]) -> Tensor:
    """L2-normalised CLIP text embeddings ``(len(prompts), D)``; ``tokenizer`` is ``open_clip.get_tokenizer``'s."""
    p = next(clip.model.parameters())
    # torch types a Module's attributes as Tensor | Module; encode_text is a method of open_clip's CLIP
    text = clip.model.encode_text(tokenizer(list(prompts)).to(p.device))  # type: ignore[operator]
    return torch.nn.functional.normalize(text.float(), dim=1).cpu()


def clip_score(image_feats: Tensor, text_feats: Tensor) -> float:
    """CLIP-score of prompt alignment: ``100 * max(cos(image, prompt), 0)`` averaged over pairs.

    Hessel et al., "CLIPScore" (EMNLP 2021, https://arxiv.org/abs/2104.08718), with the 100 scale of
    torchmetrics' ``CLIPScore``.

    Args:
        image_feats: ``(N, D)`` normalised image embeddings (``clip_image_features``).
        text_feats: ``(N, D)`` normalised embeddings of each image's prompt (``clip_text_features``).

    Returns:
        In [0, 100]; higher = the images match their prompts better (about 30 for good SD-1.5 samples with
        ViT-L/14).
    """
    if image_feats.shape != text_feats.shape:
        raise ConfigError(
            f"image and text features must pair up, got {tuple(image_feats.shape)} and {tuple(text_feats.shape)}."
        )
    return float(100 * (image_feats * text_feats).sum(1).clamp(min=0).mean())


def sharpness(images: Tensor) -> float:
    """Image quality without weights: variance of the Laplacian of the grey image, times 1000.

    The classic focus measure (Pech-Pacheco et al., ICPR 2000): blurry or washed-out generations score low,
    noisy ones high, so read it next to the clean baseline's value, not alone.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].

    Returns:
        >= 0; mean over images (about 1-50 for natural 512 px images).
    """
    grey = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).unsqueeze(1).float()
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    lap = torch.nn.functional.conv2d(grey.cpu(), kernel)  # (B, 1, H-2, W-2), valid region only
    return float(1000 * lap.flatten(1).var(dim=1).mean())


def visibility(
    clean: Sequence[np.ndarray], protected: Sequence[np.ndarray], lpips_model: torch.nn.Module | None = None
) -> dict[str, float | None]:
    """How visible a protection is on the training images, on the 8-bit files (``cloak.metrics``).

    Args:
        clean: ``(H, W, 3)`` uint8 originals.
        protected: the protected files' pixels, same shapes, same order.
        lpips_model: an ``lpips.LPIPS`` model, or None to skip LPIPS.

    Returns:
        ``linf`` (max over images, 0-255 units, lower = less visible), ``psnr`` (dB, higher = less visible;
        None when every image is unchanged), ``ssim`` (in [-1, 1], higher = less visible), ``lpips`` (about 0-1,
        lower = less visible; None without a model): means over the images the defence changed (all unchanged:
        0, None, 1 and 0).
    """
    if len(clean) != len(protected) or not clean:
        raise ConfigError(f"need as many protected as clean images (>= 1), got {len(protected)} and {len(clean)}.")
    pairs = list(zip(clean, protected, strict=True))
    # The means are over the images the defence changed: a partial defence (`fraction`) leaves the others as they
    # were, and they would pull SSIM and LPIPS toward "invisible" while PSNR (infinite for them) cannot count them.
    changed = [(a, b) for a, b in pairs if not np.array_equal(a, b)]
    if not changed:
        return {"linf": 0.0, "psnr": None, "ssim": 1.0, "lpips": None if lpips_model is None else 0.0}
    lp = None
    if lpips_model is not None:
        from cloak.imageio import to_tensor

        lp = float(
            np.mean([pixel_metrics.lpips_distance(lpips_model, to_tensor(a), to_tensor(b)) for a, b in changed])
        )
    return {
        "linf": float(max(pixel_metrics.linf(a, b) for a, b in changed)),
        "psnr": float(np.mean([pixel_metrics.psnr(a, b) for a, b in changed])),
        "ssim": float(np.mean([pixel_metrics.ssim(a, b) for a, b in changed])),
        "lpips": lp,
    }


def protection_effect(score_clean: float, score_protected: float) -> float:
    """Mimicry score of the mimic trained on clean images minus that trained on protected ones.

    Args:
        score_clean: the clean baseline's score (e.g. ``judge_success``, higher = better mimicry).
        score_protected: the score with the protection (and possibly an attack) in place.

    Returns:
        Same units as the score; higher = stronger protection, 0 = none, negative = the protection helped the
        mimic. Compare with ``seed_spread`` of the clean baseline to tell an effect from noise.
    """
    return score_clean - score_protected


def retained_fraction(effect_attacked: float, effect_unattacked: float) -> float | None:
    """The fraction of a protection's effect that survives a purification attack.

    Args:
        effect_attacked: ``protection_effect`` with the attack applied to the protected images.
        effect_unattacked: ``protection_effect`` without an attack.

    Returns:
        ``effect_attacked / effect_unattacked``: 1 = the attack removed nothing, 0 = it removed all the
        protection, < 0 = the mimic beats the clean baseline; None when there is no effect to retain
        (``effect_unattacked <= 0``).
    """
    if effect_unattacked <= 0:
        return None
    return effect_attacked / effect_unattacked


def worst_case(effects: Mapping[str, float]) -> tuple[str, float]:
    """The attacker's best choice: the attack (``"none"`` included) leaving the least protection effect.

    Hoenig et al. (ICLR 2025, https://arxiv.org/abs/2406.12027) report this best-of-N over purifications.

    Args:
        effects: ``protection_effect`` per attack name.

    Returns:
        ``(attack, effect)`` of the smallest effect; ties go to the first in order.
    """
    if not effects:
        raise ConfigError("`effects` is empty: need the effect of at least one attack.")
    name = min(effects, key=lambda k: effects[k])
    return name, effects[name]


def seed_spread(scores: Sequence[float]) -> float:
    """Range (max - min) of one condition's score over seeds: the noise floor of an effect.

    Args:
        scores: one score per seed, at least one.

    Returns:
        >= 0, in the score's units; an effect smaller than the clean baseline's spread is not distinguishable
        from seed noise.
    """
    if not scores:
        raise ConfigError("`scores` is empty: need one score per seed.")
    return float(max(scores) - min(scores))


KEPT_LEVEL = 0.9  # the coverage of `kept_interval`


def kept_interval(
    clean: Sequence[float],
    protected: Mapping[str, Sequence[float]],
    *,
    clean_attacked: Mapping[str, Sequence[float]] | None = None,
    level: float = KEPT_LEVEL,
    draws: int = 4000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """A percentile bootstrap interval over seeds for the share of a protection's effect its worst attack leaves.

    The seeds are paired (every condition of a seed draws the same images, fine-tune batches and generations), so
    each draw resamples seeds, not cells: the same seeds for the clean mimic and for each attack. A draw recomputes
    the mean scores, the effects, the worst case (the attacker picks again) and its ``retained_fraction``; a draw
    with no unattacked effect has nothing to keep and counts as keeping 0. With few seeds a percentile bootstrap
    is far too narrow: against IMPRESS with its release's step rule the `default` kept 46 % on 4 seeds (38 % to
    58 %) and 21 % on 8 (docs/RESULTS.md). Read it as a lower bound on the uncertainty, not as coverage.

    Args:
        clean: the clean, unattacked mimic's score per seed.
        protected: the protected mimic's score per seed for each attack, ``"none"`` (unattacked) included; entry
            ``i`` of every sequence comes from the same seed as ``clean[i]``.
        clean_attacked: the clean mimic's score per seed after each attack, for attacks that cost the clean mimic
            too (cleanings of the generations, ``eval.summary``): the worst case is then measured against the clean
            mimic at its best, unattacked or after one of these, in every draw; the unattacked effect stays
            against the unattacked clean mimic. None: every effect against the unattacked clean mimic.
        level: the interval's coverage, in (0, 1).
        draws: bootstrap draws.
        seed: the draws' seed (the interval is reproducible).

    Returns:
        ``(low, high)``, or None with fewer than 2 seeds or without an unattacked score.
    """
    if "none" not in protected or len(clean) < 2:
        return None
    n = len(clean)
    conditions = [*protected.values(), *(clean_attacked or {}).values()]
    if any(len(v) != n for v in conditions):
        counts = [len(v) for v in conditions]
        raise ConfigError(f"every condition needs one score per seed ({n}), got {counts}.")
    if not 0 < level < 1:
        raise ConfigError(f"`level` must be in (0, 1), got {level}.")
    picks = np.random.default_rng(seed).integers(0, n, size=(draws, n))

    def means(scores: Sequence[float]) -> np.ndarray:  # the mean score of every draw's seeds
        return np.asarray(scores, dtype=float)[picks].mean(axis=1)

    base = means(clean)
    scores = np.stack([means(v) for v in protected.values()])
    unattacked = base - scores[list(protected).index("none")]
    reference = np.max([base, *(means(v) for v in (clean_attacked or {}).values())], axis=0)
    worst = reference - scores.max(axis=0)
    kept = np.where(unattacked > 0, worst / np.where(unattacked > 0, unattacked, 1.0), 0.0)
    low, high = np.quantile(kept, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
