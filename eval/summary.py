"""From per-cell rows to the figures a reader wants: protection effect, retained fraction, worst case, noise.

Rows are the dicts the runner writes to ``results.json`` (one per (artist, defence, attack, mimic, seed)). The
mimicry ``score`` of a row is the judge's success rate when the artist is a testbed style, else the style
similarity; higher = better mimicry. Every effect is measured against the clean, unattacked baseline of the
same artist and mimic (the attacker can always choose not to purify), averaged over seeds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from statistics import fmean
from typing import Any

from cloak.testbed.judge import most_first
from eval.metrics import kept_interval, protection_effect, retained_fraction, seed_spread, worst_case

CLEAN = "clean"
NO_ATTACK = "none"


def _scores_by_seed(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[Any, float]]:
    """Each finished condition's scores, by seed: ``{(artist, defence, attack, mimic): {seed: score}}``."""
    by: dict[tuple[str, str, str, str], dict[Any, float]] = defaultdict(dict)
    for r in rows:
        if r.get("status") == "ok" and r.get("score") is not None:
            by[(r["artist"], r["defence"], r["attack"], r["mimic"])][r.get("seed")] = r["score"]
    return by


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Aggregate finished cells.

    Returns:
        ``{"conditions": [...], "defences": [...]}``. A condition is one (artist, defence, attack, mimic) with
        ``score`` (mean over seeds), ``n_seeds``, ``effect`` (``protection_effect`` vs the clean unattacked baseline;
        None without one), ``retained`` (``retained_fraction`` vs the same defence unattacked), ``attack_psnr`` (the
        purified training images' PSNR to the images purified, dB, mean over the seeds that recorded it; None
        unattacked or unrecorded), ``judged_as`` (``{style: share}``, most first: what the testbed's judge named the
        generations of every seed, pooled; None without a judge) and ``output_scores`` (``{spec: score}``, mean over
        seeds, after each of the config's ``output_attacks``; None without them). A defence entry is one (artist,
        defence, mimic) with ``effect`` (unattacked), ``worst_attack`` and ``worst_effect`` (``worst_case`` over its
        attacks, "none" included), ``kept`` (``retained_fraction`` of the worst case: the share of the unattacked
        effect the attacker's best purification leaves; None without an effect or without a purification), ``kept_ci``
        (``[low, high]``: ``kept_interval``, the 90 % bootstrap interval of ``kept`` over the seeds every condition
        finished; None with fewer than 2), ``clean_spread`` (``seed_spread`` of the clean baseline), ``above_noise``
        (the unattacked effect exceeds that spread), ``lower_on`` (``"k/n"``: on k of the n seeds both ran, the
        protected mimic scored below the clean one, seed for seed), ``effect_range`` (``[low, high]``: the unattacked
        effect of a single seed, clean and protected paired by seed; None with fewer than 2), the defence's mean
        visibility figures and, with ``output_attacks``, ``output_attack``, ``output_effect``, ``output_kept``
        (``_output_case``) and ``output_kept_ci``, its 90 % bootstrap interval as ``kept_ci`` is ``kept``'s.
    """
    by_seed = _scores_by_seed(rows)
    costs: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok" and r.get("attack_psnr") is not None:
            costs[(r["artist"], r["defence"], r["attack"], r["mimic"])].append(r["attack_psnr"])
    named: dict[tuple[str, str, str, str], dict[str, int]] = defaultdict(dict)
    for r in rows:
        if r.get("status") == "ok" and r.get("judged_as"):
            pooled = named[(r["artist"], r["defence"], r["attack"], r["mimic"])]
            for style, n in r["judged_as"].items():
                pooled[style] = pooled.get(style, 0) + n
    cleaned: dict[tuple[str, str, str, str], dict[str, dict[Any, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r.get("status") == "ok":
            for spec, value in (r.get("output_scores") or {}).items():
                if value is not None:
                    cleaned[(r["artist"], r["defence"], r["attack"], r["mimic"])][spec][r.get("seed")] = value
    scores = {k: list(v.values()) for k, v in by_seed.items()}
    means = {k: fmean(v) for k, v in scores.items()}
    conditions: list[dict[str, Any]] = []
    for (artist, defence, attack, mimic), score in means.items():  # grid order: config order
        base = means.get((artist, CLEAN, NO_ATTACK, mimic))
        unattacked = means.get((artist, defence, NO_ATTACK, mimic))
        effect = None
        retained = None
        if base is not None:
            effect = protection_effect(base, score)
            if defence != CLEAN and attack != NO_ATTACK and unattacked is not None:
                retained = retained_fraction(effect, protection_effect(base, unattacked))
        conditions.append(
            {
                "artist": artist,
                "defence": defence,
                "attack": attack,
                "mimic": mimic,
                "score": score,
                "n_seeds": len(scores[(artist, defence, attack, mimic)]),
                "effect": effect,
                "retained": retained,
                "attack_psnr": fmean(costs[key]) if (key := (artist, defence, attack, mimic)) in costs else None,
                "judged_as": _shares(named[key]) if key in named else None,
                "output_scores": (
                    {spec: fmean(v.values()) for spec, v in cleaned[key].items()} if key in cleaned else None
                ),
            }
        )
    vis: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    meta: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r.get("status") == "ok":
            meta[(r["artist"], r["defence"])] = {"method": r.get("method"), "eps": r.get("eps")}
            for figure in ("vis_linf", "vis_psnr", "vis_ssim", "vis_lpips"):
                if r.get(figure) is not None:
                    vis[(r["artist"], r["defence"])][figure].append(r[figure])
    defences = []
    groups: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for c in conditions:
        if c["defence"] != CLEAN and c["effect"] is not None:
            groups[(c["artist"], c["defence"], c["mimic"])][c["attack"]] = c["effect"]
    for (artist, defence, mimic), effects in groups.items():
        # "none" first: on a tie the attacker need not purify at all
        effects = dict(sorted(effects.items(), key=lambda item: item[0] != NO_ATTACK))
        worst_attack, worst_effect = worst_case(effects)
        clean_scores = scores.get((artist, CLEAN, NO_ATTACK, mimic), [])
        entry = {
            "artist": artist,
            "defence": defence,
            "mimic": mimic,
            **meta.get((artist, defence), {}),
            "effect": effects.get(NO_ATTACK),
            "worst_attack": worst_attack,
            "worst_effect": worst_effect,
            # measured only against a purification: with none the worst case is "none" and kept would read 100 %
            "kept": (
                retained_fraction(worst_effect, effects[NO_ATTACK])
                if NO_ATTACK in effects and len(effects) > 1
                else None
            ),
            "kept_ci": None,
            "clean_spread": seed_spread(clean_scores) if clean_scores else None,
        }
        # an effect within the clean baseline's seed range cannot be told from noise (nor can its retained fraction)
        entry["above_noise"] = (
            None
            if entry["effect"] is None or entry["clean_spread"] is None
            else entry["effect"] > entry["clean_spread"]
        )
        # Seeds are paired (the same draws for clean and protected): on how many of them the protected mimic did
        # worse than the clean one. Unlike the spread, this does not widen as seeds are added.
        clean, protected = by_seed[(artist, CLEAN, NO_ATTACK, mimic)], by_seed[(artist, defence, NO_ATTACK, mimic)]
        paired = sorted(set(clean) & set(protected), key=str)
        entry["lower_on"] = (
            f"{sum(protected[s] < clean[s] for s in paired)}/{len(paired)}" if paired else None
        )
        each = [clean[s] - protected[s] for s in paired]  # the effect seed by seed
        entry["effect_range"] = [min(each), max(each)] if len(each) > 1 else None
        if entry["kept"] is not None:
            entry["kept_ci"] = _kept_ci(by_seed, artist, defence, mimic, list(effects))
        entry.update(_output_case(conditions, artist, defence, mimic, entry["effect"]))
        if entry.get("output_kept") is not None:
            entry["output_kept_ci"] = _output_kept_ci(by_seed, cleaned, artist, defence, mimic)
        entry.update({k: fmean(v) for k, v in vis[(artist, defence)].items()})
        defences.append(entry)
    return {"conditions": conditions, "defences": defences}


def _output_case(
    conditions: list[dict[str, Any]], artist: str, defence: str, mimic: str, effect: float | None
) -> dict[str, Any]:
    """When the attacker also cleans the mimic's generations (``output_attacks``): the cleaning (or none) that
    scores the mimic trained on the unpurified protected images highest, ``output_attack``; the effect left,
    ``output_effect``, against the clean mimic at its own best cleaning; and ``output_kept``, its share of the
    unpurified effect. Empty where no output attack was scored."""
    find = {(c["defence"], c["attack"]): c for c in conditions if c["artist"] == artist and c["mimic"] == mimic}
    clean, protected = find.get((CLEAN, NO_ATTACK)), find.get((defence, NO_ATTACK))
    if not clean or not protected or not clean["output_scores"] or not protected["output_scores"]:
        return {}
    best = {NO_ATTACK: protected["score"], **protected["output_scores"]}
    attack = max(best, key=lambda a: best[a])  # a tie keeps the earlier: none first
    out_effect = protection_effect(max(clean["score"], *clean["output_scores"].values()), best[attack])
    kept = retained_fraction(out_effect, effect) if effect is not None else None
    return {"output_attack": attack, "output_effect": out_effect, "output_kept": kept}


def _output_kept_ci(
    by_seed: dict[tuple[str, str, str, str], dict[Any, float]],
    cleaned: dict[tuple[str, str, str, str], dict[str, dict[Any, float]]],
    artist: str, defence: str, mimic: str,
) -> list[float] | None:
    """`kept_interval` of ``output_kept``, over the seeds on which the clean and the protected mimic were scored
    unfiltered and after every cleaning of the output."""
    clean, protected = (artist, CLEAN, NO_ATTACK, mimic), (artist, defence, NO_ATTACK, mimic)
    runs = [by_seed[clean], by_seed[protected], *cleaned[clean].values(), *cleaned[protected].values()]
    seeds = sorted(set(runs[0]).intersection(*runs[1:]), key=str)
    interval = kept_interval(
        [by_seed[clean][s] for s in seeds],
        {
            NO_ATTACK: [by_seed[protected][s] for s in seeds],
            **{spec: [v[s] for s in seeds] for spec, v in cleaned[protected].items()},
        },
        clean_attacked={spec: [v[s] for s in seeds] for spec, v in cleaned[clean].items()},
    )
    return None if interval is None else list(interval)


def _shares(counts: dict[str, int]) -> dict[str, float]:
    """Counts as shares of their total, most first."""
    total = sum(counts.values())
    return {style: n / total for style, n in most_first(counts).items()}


def _kept_ci(
    by_seed: dict[tuple[str, str, str, str], dict[Any, float]], artist: str, defence: str, mimic: str,
    attacks: list[str],
) -> list[float] | None:
    """`kept_interval` over the seeds that every condition of this defence, and the clean mimic, finished."""
    clean = by_seed[(artist, CLEAN, NO_ATTACK, mimic)]
    runs = {a: by_seed[(artist, defence, a, mimic)] for a in attacks}
    seeds = sorted(set(clean).intersection(*runs.values()), key=str)
    interval = kept_interval([clean[s] for s in seeds], {a: [r[s] for s in seeds] for a, r in runs.items()})
    return None if interval is None else list(interval)
