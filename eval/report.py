"""A self-contained ``report.html``: tables, image grids as base64 PNG, plots as inline SVG (no matplotlib).

Plots: protection vs budget (defences made here, by method), protection vs visibility (PSNR of the protected
training files), and the retained fraction per attack. Image grids: the training images clean, protected and
purified (seed of the first run), and each cell's generations.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cloak.imageio import atomic_write_bytes
from eval import data
from eval.config import EvalConfig
from eval.summary import CLEAN, NO_ATTACK

THUMB = 96  # px, side of each training-image thumbnail
NAMED_SHOWN = 3  # styles shown of what the judge named a condition's generations, most first
COLOURS = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#393b79", "#e7969c",
)
# Series beyond the palette reuse its colours with dashed lines and hollow markers (a second round), so no two
# series of one plot look alike up to twice the palette's size.
DASHES = ("", "4 3", "1 2")


def _style(i: int) -> tuple[str, str]:
    """Colour and SVG dash pattern of series ``i``."""
    return COLOURS[i % len(COLOURS)], DASHES[(i // len(COLOURS)) % len(DASHES)]


def _label(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, the whole of it as a hover title (SVG text)."""
    shown = text if len(text) <= limit else text[: limit - 1] + "\u2026"
    return f"<title>{html.escape(text)}</title>{html.escape(shown)}"
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img{image-rendering:pixelated;vertical-align:middle}
.plots{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{font-size:13px;color:#555;max-width:460px}
.fail{color:#b00}
"""


def _png(rgb: np.ndarray, height: int | None = None) -> str:
    im = Image.fromarray(rgb)
    if height is not None and im.height != height:
        im = im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, float) for x in v):  # an interval
        return f"{_fmt(v[0], digits)} to {_fmt(v[1], digits)}"
    if isinstance(v, dict):  # the judge's namings, the scores after each output attack
        return ", ".join(f"{_fmt(k)} {_fmt(n, 2)}" for k, n in v.items())
    return html.escape(str(v))


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str], left: int = 0) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(c)}</th>' for i, c in enumerate(columns))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{_fmt(r.get(c))}</td>' for i, c in enumerate(columns))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def svg_plot(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    lines: bool = True,
    width: int = 500,
    height: int = 300,
    ranges: Sequence[Sequence[tuple[float, float] | None]] | None = None,
) -> str:
    """A line (or scatter) plot as inline SVG: ``series`` is ``(label, xs, ys)``; None values are skipped.
    ``ranges``, one sequence per series aligned with its ``xs``, draws each point's ``(low, high)`` as a whisker
    (None: none)."""
    ranges = ranges or [[None] * len(xs) for _, xs, _ in series]
    triples = [
        [(x, y, r) for x, y, r in zip(xs, ys, rs, strict=True) if x is not None and y is not None]
        for (_, xs, ys), rs in zip(series, ranges, strict=True)
    ]
    pts = [(x, y) for t in triples for x, y, _ in t]
    pts += [(x, v) for t in triples for x, _, r in t if r is not None for v in r]  # whiskers stay inside the axes
    if not pts:
        return "<p>(nothing to plot yet)</p>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(min(p[1] for p in pts), 0.0), max(max(p[1] for p in pts), 0.0)
    pad_x, pad_y = (x1 - x0) * 0.05 or 1.0, (y1 - y0) * 0.08 or 0.1
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
    left, right, top, bottom = 56, 170, 12, 42
    w, h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">']
    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    for tick in _ticks(x0, x1):
        out.append(f'<text x="{sx(tick):.1f}" y="{top + h + 14}" text-anchor="middle">{tick:g}</text>')
    for tick in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{sy(tick):.1f}" y2="{sy(tick):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 4}" y="{sy(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    if y0 < 0 < y1:
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{sy(0):.1f}" y2="{sy(0):.1f}" stroke="#666"/>')
    out.append(f'<text x="{left + w / 2}" y="{height - 6}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(
        f'<text transform="translate(14 {top + h / 2}) rotate(-90)" text-anchor="middle">{html.escape(ylabel)}</text>'
    )
    for i, ((label, _, _), t) in enumerate(zip(series, triples, strict=True)):
        colour, dash = _style(i)
        fill = "white" if dash else colour  # hollow markers for the second round of colours
        p = sorted((x, y) for x, y, _ in t)
        for x, _, r in t:
            if r is not None:
                out.append(
                    f'<line class="range" x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{sy(r[0]):.1f}" y2="{sy(r[1]):.1f}" '
                    f'stroke="{colour}" stroke-width="1"/>'
                )
        if lines and len(p) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in p)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5" '
                f'stroke-dasharray="{dash}"/>'
            )
        out += [
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{fill}" stroke="{colour}"/>' for x, y in p
        ]
        ly = top + 12 + 15 * i
        out.append(f'<rect x="{left + w + 8}" y="{ly - 8}" width="10" height="10" fill="{fill}" stroke="{colour}"/>')
        out.append(f'<text x="{left + w + 22}" y="{ly + 1}">{_label(label, 26)}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_bars(
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    ylabel: str,
    width: int = 500,
    height: int = 300,
) -> str:
    """Grouped bars as inline SVG: one group per entry of ``groups``, one bar per series (None = no bar)."""
    values = [v for _, vs in series for v in vs if v is not None]
    if not values:
        return "<p>(nothing to plot yet)</p>"
    y0, y1 = min(min(values), 0.0), max(max(values), 1.0)
    left, right, top, bottom = 56, 170, 12, 70
    w, h = width - left - right, height - top - bottom

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">']
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<line x1="{left}" x2="{left + w}" y1="{sy(0):.1f}" y2="{sy(0):.1f}" stroke="#666"/>')
    gw = w / max(len(groups), 1)
    bw = gw * 0.8 / max(len(series), 1)
    for g, name in enumerate(groups):
        gx = left + g * gw
        out.append(
            f'<text transform="translate({gx + gw / 2:.1f} {top + h + 10}) rotate(30)" font-size="10">'
            f"{_label(name, 28)}</text>"
        )
        for i, (_, vs) in enumerate(series):
            v = vs[g]
            if v is None:
                continue
            x = gx + gw * 0.1 + i * bw
            y_top, y_bot = sorted((sy(v), sy(0)))
            colour, dash = _style(i)
            out.append(
                f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{bw * 0.9:.1f}" height="{max(y_bot - y_top, 0.5):.1f}" '
                f'fill="{colour}" stroke="{colour}" fill-opacity="{0.35 if dash else 1}"/>'
            )
    for i, (label, _) in enumerate(series):
        colour, dash = _style(i)
        ly = top + 12 + 15 * i
        out.append(
            f'<rect x="{left + w + 8}" y="{ly - 8}" width="10" height="10" fill="{colour}" stroke="{colour}" '
            f'fill-opacity="{0.35 if dash else 1}"/>'
        )
        out.append(f'<text x="{left + w + 22}" y="{ly + 1}">{_label(label, 26)}</text>')
    out.append(
        f'<text transform="translate(14 {top + h / 2}) rotate(-90)" text-anchor="middle">{html.escape(ylabel)}</text>'
    )
    out.append("</svg>")
    return "".join(out)


def _averaged(points: list[tuple[Any, Any, Any]]) -> dict[Any, list[tuple[Any, Any]]]:
    """``(series, x, y)`` triples -> per series, ``(x, mean y)`` over repeated x (e.g. several artists); a tuple
    ``y`` is averaged entry by entry."""
    acc: dict[Any, dict[Any, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for key, x, y in points:
        acc[key][x].append(y)

    def mean(ys: list[Any]) -> Any:
        m = np.mean(np.asarray(ys, dtype=float), axis=0)
        return tuple(float(v) for v in m) if m.ndim else float(m)

    return {k: [(x, mean(ys)) for x, ys in xs.items()] for k, xs in acc.items()}


def plots(summary: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """The report's plots as ``(file stem, inline SVG, caption)``: budget, visibility, retained fraction.

    Values are averaged over artists when there are several.
    """
    defences = [d for d in summary["defences"] if d.get("effect") is not None]
    # A budget curve joins the defences of one method that differ in eps; where several defences of a method share
    # an eps (other steps, targets, fractions...), each is its own series rather than averaged into one point.
    at_eps: dict[tuple[Any, Any, Any], set[str]] = defaultdict(set)
    for d in defences:
        at_eps[(d["method"], d["mimic"], d.get("eps"))].add(d["defence"])
    crowded = {(m, mimic) for (m, mimic, _), names in at_eps.items() if len(names) > 1}

    def curve(d: dict[str, Any]) -> str:
        return f"{d['defence' if (d['method'], d['mimic']) in crowded else 'method']} {d['mimic']}"

    def with_range(d: dict[str, Any]) -> tuple[float, float, float]:
        low, high = d.get("effect_range") or (d["effect"], d["effect"])
        return d["effect"], low, high

    budget = _averaged([(curve(d), d["eps"], with_range(d)) for d in defences if d.get("eps")])
    vis = _averaged([(d["mimic"], d["vis_psnr"], d["effect"]) for d in defences if d.get("vis_psnr") is not None])
    clear = {(d["artist"], d["defence"], d["mimic"]) for d in defences if d.get("above_noise")}
    cond = [
        c
        for c in summary["conditions"]
        if c["retained"] is not None and (c["artist"], c["defence"], c["mimic"]) in clear
    ]
    retained = _averaged([((c["defence"], c["mimic"]), c["attack"], c["retained"]) for c in cond])
    attacks = list(dict.fromkeys(c["attack"] for c in cond))
    bars = [(f"{d} {m}", [dict(v).get(a) for a in attacks]) for (d, m), v in sorted(retained.items())]
    return [
        (
            "budget",
            svg_plot(
                [(k, [p[0] for p in v], [p[1][0] for p in v]) for k, v in budget.items()],
                "L-inf budget (/255)",
                "protection effect",
                ranges=[[p[1][1:] if p[1][1] < p[1][2] else None for p in v] for v in budget.values()],
            ),
            "Protection vs budget: clean score minus protected score, no attack, mean over seeds (and over artists "
            "where there are several); a line joins the budgets of one method; whiskers span the lowest and highest "
            "effect of a single seed (clean and protected mimic paired by seed).",
        ),
        (
            "visibility",
            svg_plot(
                [(k, [p[0] for p in v], [p[1] for p in v]) for k, v in vis.items()],
                "PSNR of the protected files (dB)",
                "protection effect",
                lines=False,
            ),
            "Protection vs visibility: each point a defence, no attack (higher PSNR = less visible).",
        ),
        (
            "retained",
            svg_bars(attacks, bars, "retained fraction"),
            "Retained fraction per attack: the share of the unattacked protection effect left after purification "
            "(1 = untouched, 0 = removed); only defences whose unattacked effect exceeds the clean seed spread.",
        ),
    ]


def markdown_summary(summary: dict[str, list[dict[str, Any]]]) -> str:
    """The per-defence summary as a Markdown table (for a README or an issue)."""
    cols: tuple[str, ...] = (
        "artist",
        "defence",
        "mimic",
        "vis_linf",
        "vis_psnr",
        "effect",
        "worst_attack",
        "worst_effect",
        "kept",
        "kept_ci",
        "clean_spread",
        "above_noise",
        "lower_on",
    )
    if any("output_kept" in d for d in summary["defences"]):  # the config scored cleaned generations too
        cols += ("output_attack", "output_kept", "output_kept_ci")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(d.get(c)) for c in cols) + " |" for d in summary["defences"]]
    return "\n".join(lines) + "\n" + markdown_scores(summary)


def markdown_scores(summary: dict[str, list[dict[str, Any]]]) -> str:
    """Mimicry success (mean over seeds) per defence (rows) and attack (columns), one table per artist and mimic, and
    below it the share of each defence's unpurified effect kept after each purification (``retained``)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in summary["conditions"]:
        groups.setdefault((c["artist"], c["mimic"]), []).append(c)
    out = []
    for (artist, mimic), conds in groups.items():
        attacks = list(dict.fromkeys(c["attack"] for c in conds))
        defences = list(dict.fromkeys(c["defence"] for c in conds))
        score = {(c["defence"], c["attack"]): c["score"] for c in conds}
        out.append(f"\n{artist}, {mimic}: mimicry success (mean over seeds)\n")
        out += ["| defence | " + " | ".join(attacks) + " |", "|" + "---|" * (len(attacks) + 1)]
        out += [f"| {d} | " + " | ".join(_fmt(score.get((d, a)), 2) for a in attacks) + " |" for d in defences]
        cost = _attack_cost(conds)
        if cost:
            cells = [_fmt(cost.get(a), 3) for a in attacks]
            out.append("| *purified images' PSNR to their input, dB* | " + " | ".join(cells) + " |")
        outputs = list(dict.fromkeys(spec for c in conds for spec in c.get("output_scores") or {}))
        if outputs:
            out.append(f"\n{artist}, {mimic}: mimicry success after cleaning the generations (mean over seeds)\n")
            out += ["| defence | attack | none | " + " | ".join(outputs) + " |", "|" + "---|" * (len(outputs) + 3)]
            out += [
                f"| {c['defence']} | {c['attack']} | {_fmt(c['score'], 2)} | "
                + " | ".join(_fmt((c.get("output_scores") or {}).get(spec), 2) for spec in outputs)
                + " |"
                for c in conds
            ]
        named = [c for c in conds if c.get("judged_as")]
        if named:
            out.append(f"\n{artist}, {mimic}: what the judge named the generations (share, all seeds)\n")
            out += ["| defence | attack | named |", "|---|---|---|"]
            out += [f"| {c['defence']} | {c['attack']} | {_named(c['judged_as'])} |" for c in named]
        # The retained fraction of every purification, not only the worst one the defence table gives.
        kept = {(c["defence"], c["attack"]): c["retained"] for c in conds if c["retained"] is not None}
        purified = [a for a in attacks if any(k[1] == a for k in kept)]
        if purified:
            out.append(f"\n{artist}, {mimic}: share of the unpurified effect kept after each purification\n")
            out += ["| defence | " + " | ".join(purified) + " |", "|" + "---|" * (len(purified) + 1)]
            out += [
                f"| {d} | " + " | ".join(_fmt(kept.get((d, a)), 2) for a in purified) + " |"
                for d in defences
                if any((d, a) in kept for a in purified)
            ]
    return "\n".join(out) + "\n" if out else ""


def _named(shares: dict[str, float]) -> str:
    """The judge's namings, most first: the first ``NAMED_SHOWN``, then what the rest add up to."""
    rest = list(shares.values())[NAMED_SHOWN:]
    shown = _fmt(dict(list(shares.items())[:NAMED_SHOWN]))
    return shown + (f", {len(rest)} more {_fmt(sum(rest), 2)}" if rest else "")


def _attack_cost(conds: list[dict[str, Any]]) -> dict[str, float]:
    """Per attack, the mean over defences of what it costs the images it purifies (``attack_psnr``); cells run
    before the runner recorded it have none."""
    by: dict[str, list[float]] = defaultdict(list)
    for c in conds:
        if c.get("attack_psnr") is not None:
            by[c["attack"]].append(c["attack_psnr"])
    return {a: sum(v) / len(v) for a, v in by.items()}


def _training_grid(out_dir: Path, config: EvalConfig) -> str:
    """Rows: clean, each defence, each defence after each attack (first seed, first 4 images)."""
    from eval.runner import image_set  # the runner imports this module when it writes the report

    parts = []
    seed = config.seeds[0]
    for artist in config.artists:
        clean_dir, _ = image_set(config, out_dir, artist.name)
        names = tuple(sorted(p.stem for p in clean_dir.glob("*.png")))[:4]
        if not names:
            continue
        rows = [(CLEAN, NO_ATTACK)]
        for d in config.defences:
            rows += [(d.name, a) for a in (NO_ATTACK, *config.attacks)]
        if config.attack_clean:
            rows += [(CLEAN, a) for a in config.attacks]
        body = []
        for defence, attack in rows:
            # The sets' own settings, as the runner cached them: a set made with other settings is not shown.
            folder, inputs = image_set(config, out_dir, artist.name, defence, attack, seed)
            images = data.load_set(folder, names, inputs)
            if images is None:
                continue
            cells = "".join(_png(im, THUMB) for im in images)
            body.append(
                f'<tr><td class="l">{html.escape(defence)}</td><td class="l">{html.escape(attack)}</td>'
                f"<td>{cells}</td></tr>"
            )
        parts.append(
            f"<h3>{html.escape(artist.name)}</h3><table><tr><th class='l'>defence</th><th class='l'>attack"
            f"</th><th>training images (seed {seed})</th></tr>{''.join(body)}</table>"
        )
    return "".join(parts)


def _generation_grid(out_dir: Path, config: EvalConfig, rows: Sequence[dict[str, Any]]) -> str:
    seed = config.seeds[0]
    mimics = [m.name for m in config.mimics]
    by = {(r["artist"], r["defence"], r["attack"], r["mimic"]): r for r in rows if r["seed"] == seed}
    order = {d.name: i for i, d in enumerate(config.defences)}
    attack_order = {a: i for i, a in enumerate(config.attacks)}
    parts = []
    for artist in config.artists:
        conds = sorted(
            {(r["defence"], r["attack"]) for r in rows if r["artist"] == artist.name},
            key=lambda c: (order.get(c[0], -1), attack_order.get(c[1], -1)),
        )
        body = []
        for defence, attack in conds:
            cells = []
            for m in mimics:
                r = by.get((artist.name, defence, attack, m))
                if r is None:
                    cells.append("<td></td>")
                elif r["status"] != "ok":
                    cells.append(f'<td class="l fail">{html.escape(str(r.get("error", ""))[:120])}</td>')
                else:
                    strip = np.asarray(Image.open(out_dir / r["generations"]).convert("RGB"))
                    cells.append(f'<td class="l">{_png(strip, 64)}<br>score {_fmt(r.get("score"))}</td>')
            body.append(
                f'<tr><td class="l">{html.escape(defence)}</td><td class="l">{html.escape(attack)}</td>'
                + "".join(cells)
                + "</tr>"
            )
        head = "".join(f"<th class='l'>{html.escape(m)}</th>" for m in mimics)
        parts.append(
            f"<h3>{html.escape(artist.name)}</h3><table><tr><th class='l'>defence</th><th class='l'>attack"
            f"</th>{head}</tr>{''.join(body)}</table>"
        )
    return "".join(parts)


def _provenance(config: EvalConfig, rows: Sequence[dict[str, Any]], run_info: dict[str, Any]) -> str:
    """What a reader needs to weigh the figures: sample sizes, which cells this run made, versions (HTML)."""
    gen = config.generation
    per_cell = sorted({r["n_generated"] for r in rows if r.get("n_generated") is not None})
    resumed = run_info.get("resumed_cells") or 0
    versions = ", ".join(f"{k} {v}" for k, v in (run_info.get("versions") or {}).items())
    artists = "; ".join(
        f"{a.name}: {a.n_train} training images" + ("" if a.folder else f", {a.n_heldout} held out")
        for a in config.artists
    )
    return html.escape(
        f"{' or '.join(map(str, per_cell)) or gen.n} generations per cell ({len(gen.prompts)} prompt(s), "
        f"{gen.num_inference_steps} sampling steps, guidance {gen.guidance_scale:g}); {artists}. "
        f"{resumed} of the cells were finished by an earlier run into this folder (each is reused only with the "
        "same settings, by its fingerprint); the git revision and times are this run's. "
        f"Started {run_info.get('started')}, finished {run_info.get('finished') or run_info.get('interrupted')}. "
        f"Versions: {versions or 'not recorded'}. Mimic settings: run.json (config)."
    )


def write_report(
    out_dir: Path,
    config: EvalConfig,
    rows: Sequence[dict[str, Any]],
    summary: dict[str, list[dict[str, Any]]],
    run_info: dict[str, Any],
) -> Path:
    """Write ``out_dir/report.html`` (self-contained), ``plots/*.svg`` and ``summary.md``; return the report's path."""
    failed = [r for r in rows if r.get("status") != "ok"]
    figures = plots(summary)
    (out_dir / "plots").mkdir(exist_ok=True)
    for stem, svg, _ in figures:
        atomic_write_bytes(out_dir / "plots" / f"{stem}.svg", svg.encode("utf-8"))
    atomic_write_bytes(out_dir / "summary.md", markdown_summary(summary).encode("utf-8"))
    score_names = sorted({r["score_name"] for r in rows if r.get("score_name")})
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>cloak eval: {html.escape(config.name)}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>cloak eval: {html.escape(config.name)}</h1>",
        f"<p>model <b>{html.escape(config.model)}</b> on {html.escape(str(run_info.get('device')))}; "
        f"{len(config.seeds)} seed{'s' * (len(config.seeds) != 1)} ({', '.join(map(str, config.seeds))}); "
        f"{len(rows)} of {run_info.get('cells')} cells recorded, {len(failed)} failed; config "
        f"{html.escape(str(run_info.get('config_file')))}; git {html.escape(str(run_info.get('git')))}.</p>",
        f"<p>{_provenance(config, rows, run_info)}</p>",
        f"<p>Mimicry score: {html.escape(', '.join(score_names) or 'none')} (higher = better mimicry). Protection "
        "effect = score of the mimic trained on clean images minus score with the protection (and attack); "
        "compare it with the clean baseline's seed spread. Worst case = the attack (or none) that leaves the "
        "least effect; kept = the share of the unattacked effect it leaves, kept_ci its 90 % bootstrap interval "
        "over seeds (far too narrow with few seeds). Where the config names output_attacks, output_attack is the "
        "cleaning of the mimic's generations (or none) that scores the protected mimic highest, and output_kept the "
        "share of the unattacked effect left then, against the clean mimic at its own best cleaning (output_kept_ci "
        "its interval, as kept_ci is kept's).</p>",
        "<h2>Summary</h2>",
        _table(
            summary["defences"],
            (
                "artist",
                "defence",
                "mimic",
                "method",
                "eps",
                "vis_linf",
                "vis_psnr",
                "vis_ssim",
                "vis_lpips",
                "effect",
                "worst_attack",
                "worst_effect",
                "kept",
                "kept_ci",
                "clean_spread",
                "above_noise",
                "lower_on",
                "output_attack",
                "output_kept",
                "output_kept_ci",
            ),
            left=4,
        ),
        "<h2>Plots</h2>",
        '<div class="plots">'
        + "".join(f"<figure>{svg}<figcaption>{cap}</figcaption></figure>" for _, svg, cap in figures)
        + "</div>",
        "<h2>Training images</h2>",
        _training_grid(out_dir, config),
        "<h2>Generations</h2>",
        f"<p>Seed {config.seeds[0]}; up to 8 per cell.</p>",
        _generation_grid(out_dir, config, rows),
        "<h2>Conditions</h2>",
        _table(
            summary["conditions"],
            (
                "artist", "defence", "attack", "mimic", "n_seeds", "score", "effect", "retained", "attack_psnr",
                "output_scores", "judged_as",
            ),
            left=4,
        ),
        "<h2>All cells</h2>",
        _table(
            rows,
            (
                "artist",
                "defence",
                "attack",
                "mimic",
                "seed",
                "status",
                "score",
                "success",
                "output_scores",
                "judged_as",
                "style_similarity",
                "fd",
                "clip_score",
                "sharpness",
                "seconds",
                "error",
            ),
            left=4,
        ),
        "</body></html>",
    ]
    path = out_dir / "report.html"
    atomic_write_bytes(path, "\n".join(parts).encode("utf-8"))
    return path
