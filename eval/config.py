"""The evaluation grid as a TOML file, read into frozen dataclasses (``tomllib``; unknown keys are errors).

A config names the model, the artists, the defences, the purification attacks, the mimics, the seeds, the
prompts and the metrics' feature extractors. The grid is every (artist, defence, attack, mimic, seed); the clean
baseline is always part of it. Schema (every key but ``model``, ``artists`` and ``mimics`` has a default)::

    name = "quick"                    # a label for the report
    model = "testbed"                 # as `cloak.models.load_components`: "testbed", a hub id, a folder, a file
    device = "auto"                   # auto | cpu | cuda | cuda:N | mps
    dtype = "float32"                 # float32 | float16 | bfloat16 (weights of the loaded model)
    seeds = [0, 1]                    # each seed: its own cloak, purification draws, fine-tune and samples
    attacks = ["jpeg:quality=75"]     # `attacks` spec strings; the unattacked images ("none") always run
    attack_clean = false              # also purify the clean baseline (shows what an attack costs the mimic)
    output_attacks = ["blur:sigma=1"] # also score each cell's generations after these (the attacker cleaning
                                      #   the mimic's output); the attacker keeps the one, or none, it gains most by

    [[artists]]                       # a testbed style ...
    style = "marbling"                #   name from cloak.testbed.artists.STYLES
    n_train = 8                       #   training images (the artist's posted work the mimic trains on)
    n_heldout = 32                    #   held-out images the generations are compared with
    [[artists]]                       # ... or any folder of images
    name = "alice"
    folder = "art/alice"              #   relative to this file; sorted by name: the first n_train train,
    n_train = 8                       #   the rest (>= 2) are held out

    [[defences]]                      # a cloak made here ...
    method = "encoder"                #   cloak.methods.METHODS key
    eps = 8                           #   L-inf budget, 0-255 units
    steps = 16                        #   optimiser steps (also: step_size, schedule, random_start, eot, options, name)
    fraction = 0.5                    #   optional: protect only the first half of the training images
    [[defences]]                      # ... or a preset / published baseline (cloak.presets), keys override it
    preset = "mist"
    [[defences]]                      # ... or another tool's output
    name = "glaze"
    precomputed = "glazed/{artist}"   #   files named like the artist's training images ({artist} = its name)

    [[mimics]]
    kind = "dreambooth"               # dreambooth | lora: eval.mimics.FinetuneConfig fields as keys
    steps = 400
    lr = 5e-6
    [[mimics]]
    kind = "img2img"                  # strength: one value or a list (a sweep); prompt
    strength = [0.3, 0.5]
    prompt = "a painting"

    [generation]                      # what the fine-tuned mimics sample
    prompts = ["a painting in sks style"]
    n = 16                            # images per prompt
    num_inference_steps = 50
    guidance_scale = 7.5
    batch_size = 8

    [metrics]
    judge = "auto"                    # auto (the testbed's judge for testbed models) | testbed | a folder | ""
    clip = ""                         # open_clip "ARCH:TAG" (e.g. "ViT-B-32:openai"), "ARCH:none" = random
    lpips = false                     # LPIPS visibility (needs torchvision's AlexNet weights)
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloak.errors import ConfigError
from eval.mimics import FinetuneConfig

if TYPE_CHECKING:
    from cloak.protect import CloakConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (pyproject: tomli; python_version < "3.11")
    import tomli as tomllib

CONFIG_DIR = Path(__file__).parent / "configs"
"""The built-in configs, one TOML file each (:func:`builtin_configs` lists their names)."""
MIMIC_KINDS = ("dreambooth", "lora", "img2img")
DTYPES = ("float32", "float16", "bfloat16")
# Seeds stay below this: each seeds its random streams as ``seed * 1000 + stream`` (eval.runner), which must fit
# a signed 64-bit generator seed.
MAX_SEED = 2**63 // 1000 - 1


@dataclass(frozen=True)
class ArtistSpec:
    """One artist whose style the mimic tries to copy.

    Attributes:
        name: a label (file-name safe).
        style: a testbed style name (painted at the model's resolution), or None for a folder.
        folder: a folder of images, or None for a testbed style.
        n_train: training images (the artist's posted work).
        n_heldout: held-out images for the metrics (testbed styles; a folder holds out all but ``n_train``).
    """

    name: str
    style: str | None = None
    folder: Path | None = None
    n_train: int = 8
    n_heldout: int = 32


_LATER_OPTIONS = ("smooth", "fraction", "schedule", "random_start")
"""DefenceSpec fields added after results were first cached; left out of fingerprints while unset."""


@dataclass(frozen=True)
class DefenceSpec:
    """One protection: a cloak computed here, or another tool's output read from a folder.

    Attributes:
        name: a label (file-name safe); default ``"<method>-<eps>"``.
        method: a ``cloak.methods.METHODS`` key, or None for ``precomputed``.
        eps: L-inf budget, 0-255 units.
        steps: optimiser steps.
        step_size: first step, 0-255 units; None = the optimiser's schedule.
        schedule: the optimiser's step rule (``cloak.optim.SCHEDULES``); None = its default, ``"cosine"``.
        random_start: start from uniform noise in the budget; None = its default, True.
        eot: expectation-over-transforms specs.
        options: method-specific options.
        precomputed: a folder of protected images named like the training images; ``{artist}`` is replaced by
            the artist's name. None for a cloak computed here.
        lpips_bound: optional LPIPS hinge bound of the cloak (needs LPIPS weights).
        min_psnr: optional PSNR floor of the cloak, dB, on top of ``eps``.
        smooth: optional Gaussian sigma of the optimiser's low-pass, px as the model sees the image (``cloak.optim``).
        preset: the ``cloak.presets`` name the settings came from (an artist preset or a published baseline),
            or None.
        surrogate: the model the cloak is computed against, when it is not the grid's ``model`` (a transfer
            experiment: e.g. a second testbed UNet on the same VAE, from ``cloak testbed build --vae-from``).
        fraction: the share of the artist's training images the defence protects, in (0, 1]; the others stay the
            originals (an artist whose earlier work is already online unprotected). The first
            ``max(1, round(fraction * n_train))`` images are protected, each exactly as with ``fraction`` unset.
            None = all.
    """

    name: str
    method: str | None = None
    eps: float | None = None
    steps: int = 16
    step_size: float | None = None
    eot: tuple[str, ...] = ()
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    precomputed: str | None = None
    lpips_bound: float | None = None
    min_psnr: float | None = None
    preset: str | None = None
    surrogate: str | None = None
    smooth: float | None = None
    fraction: float | None = None
    schedule: str | None = None
    random_start: bool | None = None

    def __fingerprint__(self) -> dict[str, Any]:
        """What the cached results are keyed by: every field, except options added since results were first
        cached (``smooth``, ``fraction``) while they are unset, so that adding an option does not invalidate every
        stored cell."""
        values = dataclasses.asdict(self)
        return {k: v for k, v in values.items() if not (k in _LATER_OPTIONS and v is None)}

    def cloak_config(self) -> CloakConfig:
        """The ``cloak.protect.CloakConfig`` of a cloak computed here."""
        from cloak.protect import CloakConfig

        # `method` and `eps` are None in a DefenceSpec made without them (defaults that serve `precomputed`); they go
        # as they are, for CloakConfig to refuse in its own words. The step rule's fields left unset take its defaults.
        settings: dict[str, Any] = {"method": self.method, "eps": self.eps}
        step_rule = (("schedule", self.schedule), ("random_start", self.random_start))
        settings.update((k, v) for k, v in step_rule if v is not None)
        return CloakConfig(
            steps=self.steps,
            step_size=self.step_size,
            eot=self.eot,
            lpips_bound=self.lpips_bound,
            min_psnr=self.min_psnr,
            smooth=self.smooth,
            options=dict(self.options),
            **settings,
        )


@dataclass(frozen=True)
class MimicSpec:
    """One mimic: a fine-tune (then sampling with ``[generation]``) or img2img at one strength.

    Attributes:
        name: a label; default the kind (img2img: ``"img2img-<strength>"``).
        kind: "dreambooth", "lora" or "img2img".
        finetune: the fine-tune's settings (dreambooth, lora); None for img2img.
        strength: img2img strength in [0, 1]; None for fine-tunes.
        prompt: img2img prompt.
    """

    name: str
    kind: str
    finetune: FinetuneConfig | None = None
    strength: float | None = None
    prompt: str = "a painting"


@dataclass(frozen=True)
class GenerationSpec:
    """Sampling from a fine-tuned mimic.

    Attributes:
        prompts: prompts to sample (the instance prompt's rare token included).
        n: images per prompt.
        num_inference_steps: DDIM steps (also used by img2img).
        guidance_scale: classifier-free guidance scale (also used by img2img).
        batch_size: images per pipeline call (memory only).
    """

    prompts: tuple[str, ...] = ("a painting in sks style",)
    n: int = 16
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    batch_size: int = 8


@dataclass(frozen=True)
class MetricsSpec:
    """Feature extractors behind the metrics.

    Attributes:
        judge: "auto" (the testbed's judge when the model is the testbed or a folder written by ``cloak testbed
            build``, else none), "testbed", a folder written by ``Judge.save``, or "" for none.
        clip: open_clip ``"ARCH:TAG"``; ``"ARCH:none"`` for random weights (tests); "" for none.
        lpips: measure LPIPS visibility (needs torchvision's AlexNet weights).
    """

    judge: str = "auto"
    clip: str = ""
    lpips: bool = False


@dataclass(frozen=True)
class EvalConfig:
    """A whole evaluation grid (see the module docstring for the TOML schema)."""

    name: str
    model: str
    artists: tuple[ArtistSpec, ...]
    mimics: tuple[MimicSpec, ...]
    defences: tuple[DefenceSpec, ...] = ()
    attacks: tuple[str, ...] = ()
    attack_clean: bool = False
    output_attacks: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    dtype: str = "float32"
    generation: GenerationSpec = GenerationSpec()
    metrics: MetricsSpec = MetricsSpec()
    source: str = ""  # the file it was read from

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (paths as strings)."""
        return _jsonable(dataclasses.asdict(self))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


def builtin_configs() -> list[str]:
    """Names of the built-in configs in ``eval/configs``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def resolve_config_path(config: str | Path) -> Path:
    """A config file path, or a built-in name (``quick``) -> the file."""
    path = Path(config).expanduser()
    if path.is_file():
        return path
    if str(config) in builtin_configs():
        return CONFIG_DIR / f"{config}.toml"
    raise ConfigError(
        f"no eval config {str(config)!r}: expected a TOML file or a built-in name ({', '.join(builtin_configs())})."
    )


def load_config(config: str | Path) -> EvalConfig:
    """Read and validate an eval config (a TOML file or a built-in name).

    Raises:
        ConfigError: the file is missing or not TOML, or a key is unknown, missing or of the wrong kind; the
            message names the file and the key.
    """
    path = resolve_config_path(config)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}.") from None
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], path: Path) -> EvalConfig:
    """Validate a parsed TOML document (``path`` for messages and relative folders)."""
    where = str(path)
    top = _pick(
        raw, EvalConfig, where, exclude={"source"}, convert={"artists", "mimics", "defences", "generation", "metrics"}
    )
    for key in ("model", "artists", "mimics"):
        if key not in raw:
            raise ConfigError(f"{where}: the key `{key}` is missing.")
    artists = tuple(
        _artist(t, f"{where}: [[artists]] #{i + 1}", path.parent) for i, t in enumerate(_tables(raw, "artists", where))
    )
    defences = tuple(
        _defence(t, f"{where}: [[defences]] #{i + 1}") for i, t in enumerate(_tables(raw, "defences", where))
    )
    mimics = tuple(
        m for i, t in enumerate(_tables(raw, "mimics", where)) for m in _mimic(t, f"{where}: [[mimics]] #{i + 1}")
    )
    generation = _build(GenerationSpec, _table(raw, "generation", where), f"{where}: [generation]")
    metrics = _build(MetricsSpec, _table(raw, "metrics", where), f"{where}: [metrics]")
    if not artists or not mimics:
        raise ConfigError(f"{where}: `artists` and `mimics` must each hold at least one table.")
    for kind, items in (("artists", artists), ("defences", defences), ("mimics", mimics)):
        names = [it.name for it in items]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"{where}: [[{kind}]] names must be unique, got {', '.join(dup)} more than once.")
    if any(d.name == "clean" for d in defences):
        raise ConfigError(f"{where}: [[defences]] must not be named 'clean': the clean baseline is always run.")
    if top.get("dtype", "float32") not in DTYPES:
        raise ConfigError(f"{where}: `dtype` must be one of {', '.join(DTYPES)}, got {top['dtype']!r}.")
    seeds = top.get("seeds", (0,))
    _check_seeds(seeds, f"{where}: `seeds`")
    if not isinstance(top["model"], str) or not top["model"].strip():
        raise ConfigError(
            f"{where}: `model` must name a model (`testbed`, a hub id or a folder), got {top['model']!r}."
        )
    attacks_ = _attack_specs(top, "attacks", where)
    outputs = _attack_specs(top, "output_attacks", where)
    _check_positive(generation, ("n", "num_inference_steps", "batch_size"), f"{where}: [generation]")
    if not generation.prompts:
        raise ConfigError(f"{where}: [generation] `prompts` must hold at least one prompt.")
    return EvalConfig(
        name=top.get("name", path.stem),
        model=top["model"],
        artists=artists,
        mimics=mimics,
        defences=defences,
        attacks=attacks_,
        attack_clean=top.get("attack_clean", False),
        output_attacks=outputs,
        seeds=tuple(seeds),
        device=top.get("device", "auto"),
        dtype=top.get("dtype", "float32"),
        generation=generation,
        metrics=metrics,
        source=str(path),
    )


def with_artist_folders(config: EvalConfig, folders: list[str | Path] | tuple[str | Path, ...]) -> EvalConfig:
    """Replace the config's artists by folders of images (each named after its folder), keeping ``n_train``.

    This is how a built-in config such as ``paper-style`` gets its artist: ``cloak eval paper-style --artist DIR``.
    """
    template = config.artists[0]
    artists = []
    for folder in folders:
        path = Path(folder).expanduser().resolve()
        artists.append(
            ArtistSpec(
                name=_safe_name(path.name, f"artist folder {path}"),
                folder=path,
                n_train=template.n_train,
                n_heldout=template.n_heldout,
            )
        )
    names = [a.name for a in artists]
    if len(set(names)) != len(names):
        raise ConfigError(f"artist folders must have distinct names, got {', '.join(names)}.")
    return dataclasses.replace(config, artists=tuple(artists))


def parse_seeds(text: str) -> tuple[int, ...]:
    """Seeds written as on the command line: numbers and inclusive ranges, comma-separated (``4-7``, ``0,2,5``,
    ``0-3,6``), in the order given.

    Raises:
        ConfigError: anything else, a range that runs backwards, or a seed given twice.
    """
    seeds: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None:
            raise ConfigError(f"--seeds: expected numbers and ranges such as 4-7 or 0,2,5, got {text!r}.")
        lo = int(m[1])
        hi = int(m[2]) if m[2] is not None else lo
        if hi < lo:
            raise ConfigError(f"--seeds: the range {part.strip()} runs backwards; write {hi}-{lo}.")
        if hi - lo >= 10_000:
            raise ConfigError(f"--seeds: the range {part.strip()} holds over 10,000 seeds; give fewer.")
        seeds.extend(range(lo, hi + 1))
    _check_seeds(seeds, "--seeds")
    return tuple(seeds)


def with_seeds(config: EvalConfig, seeds: list[int] | tuple[int, ...]) -> EvalConfig:
    """The config with other seeds, e.g. to extend a finished grid: ``cloak eval gate8 --seeds 4-7`` runs the
    same cells as ``gate8`` on seeds 4 to 7 (a cell's fingerprint holds its own seed, never the list, so the same
    ``--out`` reuses any it already finished, and ``--seeds 0-7`` then reports all eight)."""
    _check_seeds(seeds, f"{config.source or config.name}: seeds")
    return dataclasses.replace(config, seeds=tuple(seeds))


def _check_seeds(seeds: Any, where: str) -> None:
    ok = isinstance(seeds, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not ok or not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) >= MAX_SEED:
        shown = list(seeds) if isinstance(seeds, (list, tuple)) else seeds
        raise ConfigError(f"{where} must be distinct integers from 0 to {MAX_SEED - 1:,}, at least one, got {shown}.")


def check_input_files(config: EvalConfig) -> None:
    """Fail before any model loads when a file the grid reads is missing: an artist's folder (or it holds too few
    images), a ``precomputed`` defence's folder, a defence's target image (which a config may name before a
    benchmark script writes it, so it is checked here, not when the config is parsed) or its ``surrogate`` model."""
    from eval.data import image_files  # eval.data imports this module

    for a in config.artists:
        if a.folder is None:
            continue
        if not a.folder.is_dir():
            raise ConfigError(
                f"{config.source}: artist {a.name!r}: the folder {a.folder} does not exist; set `folder` in the "
                "config or pass the artist's folder (cloak eval CONFIG --artist FOLDER)."
            )
        images = len(image_files(a.folder))
        if images < a.n_train + 2:  # a folder holds out all but n_train (eval.data.load_artist)
            raise ConfigError(
                f"{config.source}: artist {a.name!r}: the folder {a.folder} holds {images} images; this config "
                f"needs at least {a.n_train + 2} ({a.n_train} to train on, at least 2 held out to judge by)."
            )
    from cloak.errors import ModelNotFoundError
    from cloak.models import check_model_available
    from cloak.targets import check_target

    for d in config.defences:
        if d.surrogate is not None:  # loaded only when the defence's first cloak is made, minutes in
            try:
                check_model_available(d.surrogate)
            except (ModelNotFoundError, ConfigError) as err:
                raise ConfigError(f"{config.source}: defence {d.name!r}: `surrogate`: {err}") from None
        target = (d.options or {}).get("target")
        if target is not None:
            try:
                check_target(target, (d.options or {}).get("period", 16))
            except ConfigError as err:
                raise ConfigError(f"{config.source}: defence {d.name!r}: {err}") from None
        if d.precomputed is None:
            continue
        for a in config.artists:
            folder = Path(d.precomputed.replace("{artist}", a.name)).expanduser()
            if not folder.is_dir():
                raise ConfigError(
                    f"{config.source}: defence {d.name!r}: the `precomputed` folder {folder} does not exist."
                )


def _tables(raw: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{where}: `{key}` must be an array of tables ([[{key}]]), got {type(value).__name__}.")
    return value


def _table(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: `{key}` must be a table ([{key}]), got {type(value).__name__}.")
    return value


def _check_positive(obj: Any, names: tuple[str, ...], where: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ConfigError(f"{where}: `{name}` must be >= 1, got {getattr(obj, name)}.")


def _safe_name(name: str, where: str) -> str:
    if not name or any(c in name for c in '/\\:*?"<>|') or name.startswith("."):
        raise ConfigError(f"{where}: `name` must be a file-name-safe label, got {name!r}.")
    return name


def _artist(t: dict[str, Any], where: str, base: Path) -> ArtistSpec:
    values = _pick(t, ArtistSpec, where)
    if ("style" in values) == ("folder" in values):
        raise ConfigError(f"{where}: give exactly one of `style` (a testbed style) or `folder` (images).")
    if "style" in values:
        from cloak.testbed.artists import STYLES

        if values["style"] not in STYLES:
            raise ConfigError(
                f"{where}: `style` must be a testbed style ({', '.join(STYLES)}), got {values['style']!r}."
            )
    else:
        folder = Path(values["folder"]).expanduser()
        values["folder"] = folder if folder.is_absolute() else (base / folder).resolve()
    values.setdefault("name", values.get("style") or Path(values["folder"]).name)
    spec = ArtistSpec(**values)
    _safe_name(spec.name, where)
    if spec.n_train < 1 or spec.n_heldout < 2:
        raise ConfigError(
            f"{where}: `n_train` must be >= 1 and `n_heldout` >= 2, got {spec.n_train}, {spec.n_heldout}."
        )
    return spec


def _defence(t: dict[str, Any], where: str) -> DefenceSpec:
    values = _pick(t, DefenceSpec, where)
    if "preset" in values:
        values = _expand_preset(values, where)
    if ("method" in values) == ("precomputed" in values):
        raise ConfigError(f"{where}: give exactly one of `method` (a cloak made here) or `precomputed` (a folder).")
    if "precomputed" in values:
        if "name" not in values:
            raise ConfigError(f"{where}: a `precomputed` defence needs a `name` (e.g. 'glaze').")
        extra = sorted(set(values) - {"name", "precomputed", "fraction"})  # e.g. a surrogate needs a cloak here
        if extra:
            raise ConfigError(
                f"{where}: a `precomputed` defence takes only `name` and `fraction`, got also {', '.join(extra)}."
            )
        _check_fraction(values.get("fraction"), where)
        return DefenceSpec(
            name=_safe_name(values["name"], where),
            precomputed=values["precomputed"],
            fraction=values.get("fraction"),
        )
    if "eps" not in values:
        raise ConfigError(f"{where}: the key `eps` (L-inf budget, 0-255 units) is missing.")
    values.setdefault("name", f"{values['method']}-{values['eps']:g}")
    _check_fraction(values.get("fraction"), where)
    spec = DefenceSpec(**values)
    _safe_name(spec.name, where)
    try:
        spec.cloak_config()
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return spec


def _check_fraction(fraction: Any, where: str) -> None:
    if fraction is None:
        return
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"{where}: `fraction` must be a number in (0, 1], got {fraction!r}.")


def protected_count(fraction: float | None, n: int) -> int:
    """How many of ``n`` training images a defence with this ``fraction`` protects (the first ones)."""
    return n if fraction is None else min(n, max(1, round(fraction * n)))


def _expand_preset(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Fill a defence's unset keys from its ``preset`` by ``CloakConfig.from_preset`` (the table's own keys win;
    another method drops the preset's options and step rule). Named after the preset, or ``<preset>-<eps>`` when
    method, eps or steps are overridden."""
    from cloak.protect import STEP_RULE, CloakConfig

    if "precomputed" in values:
        raise ConfigError(f"{where}: give either `preset` or `precomputed`, not both.")
    keys = ("method", "eps", "steps", "step_size", "schedule", "random_start", "eot", "lpips_bound", "min_psnr",
            "smooth", "options")
    try:
        cfg = CloakConfig.from_preset(values["preset"], **{k: values[k] for k in keys if k in values})
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    if "name" not in values:
        overridden = {"method", "eps", "steps"} & set(values)
        values["name"] = f"{values['preset']}-{cfg.eps:g}" if overridden else values["preset"]
    settings = ("method", "eps", "steps", "lpips_bound", "min_psnr", "smooth", "options")
    # The step rule only where it is not the optimiser's default: the cells of the presets that keep the default
    # stay keyed as before.
    defaults = {f.name: f.default for f in dataclasses.fields(CloakConfig)}
    rule = {k: getattr(cfg, k) for k in STEP_RULE if getattr(cfg, k) != defaults[k]}
    return {**values, **{k: getattr(cfg, k) for k in settings}, **rule}


def _mimic(t: dict[str, Any], where: str) -> list[MimicSpec]:
    kind = t.get("kind")
    if kind not in MIMIC_KINDS:
        raise ConfigError(f"{where}: `kind` must be one of {', '.join(MIMIC_KINDS)}, got {kind!r}.")
    rest = {k: v for k, v in t.items() if k not in ("kind", "name")}
    name = t.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}: `name` must be a string, got {name!r}.")
    if kind == "img2img":
        unknown = sorted(set(rest) - {"strength", "prompt"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for img2img; expected strength, prompt.")
        strengths = rest.get("strength", 0.5)
        strengths = strengths if isinstance(strengths, list) else [strengths]
        if not strengths:
            raise ConfigError(f"{where}: `strength` must be a number in [0, 1] or a non-empty list of them, got [].")
        prompt = rest.get("prompt", "a painting")
        if not isinstance(prompt, str):
            raise ConfigError(f"{where}: `prompt` must be a string, got {prompt!r}.")
        out = []
        for s in strengths:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
                raise ConfigError(f"{where}: `strength` must be a number in [0, 1] (or a list of them), got {s!r}.")
            label = name or "img2img"
            out.append(
                MimicSpec(
                    name=_safe_name(f"{label}-{s:g}" if len(strengths) > 1 or not name else label, where),
                    kind=kind,
                    strength=float(s),
                    prompt=prompt,
                )
            )
        return out
    values = _pick(rest, FinetuneConfig, where, exclude={"method"})
    try:
        ft = FinetuneConfig(method=kind, **values)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return [MimicSpec(name=_safe_name(name or kind, where), kind=kind, finetune=ft)]


def _attack_specs(top: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    """The list of attack specs under ``key`` (``attacks``, ``output_attacks``), each checked, none twice."""
    specs = tuple(top.get(key, ()))
    for spec in specs:
        _check_attack(spec, f"{where}: `{key}`")
    if len(set(specs)) != len(specs) or "none" in specs:
        raise ConfigError(f"{where}: `{key}` must be distinct specs and not 'none' (always run), got {list(specs)}.")
    return specs


def _check_attack(spec: Any, where: str) -> None:
    from attacks import ATTACKS, check_spec, needs_model, parse_spec
    from cloak.specs import split_spec

    if not isinstance(spec, str):
        raise ConfigError(f"{where}: each attack must be a spec string like 'jpeg:quality=75', got {spec!r}.")
    try:
        for item in split_spec(spec):
            if item.name not in ATTACKS:
                raise ConfigError(f"unknown attack {item.name!r} in {spec!r}; known: {', '.join(ATTACKS)}.")
        # Every parameter is checked here, before any cell runs; the diffusion purifiers' checks that need the
        # model (a tile size against its resolution) come when they are built.
        check_spec(spec) if needs_model(spec) else parse_spec(spec)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    return cls(**_pick(table, cls, where))


def _pick(
    table: dict[str, Any],
    cls: type,
    where: str,
    exclude: frozenset[str] | set[str] = frozenset(),
    convert: frozenset[str] | set[str] = frozenset(),
) -> dict[str, Any]:
    """Check ``table``'s keys against ``cls``'s fields and coerce each value to the field's type.

    Keys in ``convert`` are accepted but left as they are (the caller parses them).
    """
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls) if f.name not in exclude]
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key `{key}`; expected one of {', '.join(allowed)}.")
        out[key] = value if key in convert else _coerce(value, hints[key], f"{where}: `{key}`")
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        return tuple(_coerce(v, args[0], where) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}.")
        return dict(value)
    if hint is Path:
        hint = str
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
            raise ConfigError(f"{where} must be {_KIND[hint]}, got {value!r}.")
        return value
    raise ConfigError(f"{where}: unsupported value {value!r}.")


_KIND = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
