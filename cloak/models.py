"""Load the model parts a protection method needs: diffusers components, open_clip, lpips.

Only the requested parts are loaded. When weights are neither cached nor reachable, the loaders fail fast with
one `ModelNotFoundError` line that names the model, the cache folder and how to pass a local path.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

import torch

from cloak.errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:
    # From their modules: under a type checker, diffusers' top-level names are its torch-less placeholder classes.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale import StableDiffusionUpscalePipeline
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

DEVICES = ("auto", "cpu", "cuda", "mps")
T = TypeVar("T")


@dataclass
class Components:
    """The parts of a Stable Diffusion 1.x model that a method asked for; parts not asked for are None.

    Models are in eval mode with `requires_grad` off: a cloak optimises the image, not the model.
    """

    name: str  # what the user passed ("testbed", a hub id, a folder, a file)
    vae: AutoencoderKL | None
    unet: UNet2DConditionModel | None
    text_encoder: CLIPTextModel | None
    tokenizer: CLIPTokenizer | None
    scheduler: DDPMScheduler | None  # the training noise scheduler
    resolution: int  # the resolution the model is trained at, px (512 for SD-1.5)
    device: torch.device
    dtype: torch.dtype

    @overload
    def require(self, part: Literal["vae"]) -> AutoencoderKL: ...
    @overload
    def require(self, part: Literal["unet"]) -> UNet2DConditionModel: ...
    @overload
    def require(self, part: Literal["text_encoder"]) -> CLIPTextModel: ...
    @overload
    def require(self, part: Literal["tokenizer"]) -> CLIPTokenizer: ...
    @overload
    def require(self, part: Literal["scheduler"]) -> DDPMScheduler: ...

    def require(self, part: str) -> Any:
        """The part ``part`` (one of `PARTS`), typed as what it is: for code that uses a part it knows was loaded.

        Raises:
            ConfigError: ``part`` is None here (the components were loaded without it).
        """
        value = getattr(self, part)
        if value is None:
            raise ConfigError(
                f"the model {self.name!r} was loaded without its {part}; pass {part!r} in load_components' `parts`."
            )
        return value


def resolve_device(device: str) -> torch.device:
    """Turn a device name into a `torch.device`.

    Args:
        device: "auto" (CUDA if available, then Apple MPS, then CPU), "cpu", "cuda" (also "cuda:N") or "mps".

    Returns:
        The device.

    Raises:
        ConfigError: the name is not one of the above or the device is not available on this machine.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = device.partition(":")
    if kind not in DEVICES[1:] or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"`device` must be one of auto, cpu, cuda, cuda:N, mps; got {device!r}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"`device` is {device!r} but CUDA is not available here (no NVIDIA GPU or a CPU-only torch build); "
            "use --device cpu or auto."
        )
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"`device` is {device!r} but this machine has {torch.cuda.device_count()} CUDA device(s).")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"`device` is {device!r} but Apple MPS is not available here; use --device cpu or auto.")
    return torch.device(device)


DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TESTBED = "testbed"
TESTBED_DIR = Path(__file__).parent / "testbed" / "weights"
PARTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
HUB_PROBE_TIMEOUT_S = 3.0  # seconds to wait for the hub before declaring it unreachable
LOCAL_PATH_HINT = (
    "pass a local diffusers folder or a .safetensors/.ckpt file instead: --model /path/to/folder (in an eval "
    "config: its `model` or a defence's `surrogate`)"
)


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder (`HF_HUB_CACHE`, by default ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_unreachable_reason() -> str | None:
    """Why the Hugging Face hub cannot be reached, or None when it answers.

    Skips the network entirely when `HF_HUB_OFFLINE=1`. Otherwise sends one HEAD request to the hub's endpoint and
    waits at most `HUB_PROBE_TIMEOUT_S` seconds, name resolution included (it runs in a daemon thread, since a
    socket timeout does not bound DNS), so a machine without a network fails in seconds instead of retrying
    downloads for minutes.
    """
    import threading
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    finished = threading.Event()
    failure: list[str] = []

    def probe() -> None:
        try:
            request = urllib.request.Request(endpoint, method="HEAD")
            urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # an HTTP error status is still an answer: the hub is reachable
        except OSError as err:  # no route, refused, DNS failure, TLS failure, timeout
            failure.append(f"{endpoint} did not answer: {err}")
        finished.set()

    threading.Thread(target=probe, daemon=True).start()
    if not finished.wait(HUB_PROBE_TIMEOUT_S):
        return f"no answer from {endpoint} within {HUB_PROBE_TIMEOUT_S:g} s"
    return failure[0] if failure else None


def _not_found(model: str, reason: str, hint: str = LOCAL_PATH_HINT) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {model!r} is neither a folder here nor in the Hugging Face cache ({hub_cache_dir()}), and the hub "
        f"cannot be reached ({reason}); download it once on a connected machine, or {hint}."
    )


def _from_cache_or_hub(model: str, what: str, load: Callable[[bool], T], hint: str = LOCAL_PATH_HINT) -> T:
    """``load(local_files_only)`` for a hub id: from the cache first; only when that fails, and the hub answers the
    probe, from the hub. OSErrors become one `ModelNotFoundError` line naming ``what`` of ``model``."""
    try:
        return load(True)
    except OSError:
        reason = hub_unreachable_reason()
        if reason is not None:
            raise _not_found(model, reason, hint) from None
        try:
            return load(False)
        except OSError as err:
            raise ModelNotFoundError(
                f"cannot download {what} of {model!r} from the hub: {str(err).strip().splitlines()[0]}; {hint}."
            ) from None


def check_model_available(model: str) -> None:
    """Fail now, without loading anything, if ``model`` could not be loaded: the testbed not built, a path that does
    not exist, or a hub id neither cached nor reachable. For settings read long before the model is (an eval
    defence's ``surrogate``).

    Raises:
        ModelNotFoundError: as `load_components` would, in one line.
        ConfigError: a ``model`` that is none of the accepted kinds.
    """
    kind, source = _classify(model)
    if kind != "hub":
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "model_index.json"), str):
        return
    reason = hub_unreachable_reason()
    if reason is not None:
        raise _not_found(model, reason)


def _check_parts(parts: Iterable[str]) -> tuple[str, ...]:
    if isinstance(parts, str):
        raise ConfigError(f"`parts` must be a collection of part names such as {{'vae'}}, got the string {parts!r}.")
    wanted = set(parts)
    unknown = sorted(wanted - set(PARTS))
    if unknown or not wanted:
        raise ConfigError(
            f"`parts` must be a non-empty subset of {', '.join(PARTS)}; got {sorted(wanted) or 'nothing'}"
            + (f" (unknown: {', '.join(unknown)})." if unknown else ".")
        )
    return tuple(p for p in PARTS if p in wanted)


def _check_dtype(dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"`dtype` must be a floating torch.dtype such as torch.float32 or None, got {dtype!r}.")
    return dtype


def _classify(model: str) -> tuple[str, str]:
    """Return (kind, source): kind is "folder", "file" or "hub"; source is the path or the hub id."""
    if model == TESTBED:
        if not (TESTBED_DIR / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"the testbed weights are missing (expected a diffusers folder at {TESTBED_DIR}); "
                "build them with `cloak testbed build`."
            )
        return "folder", str(TESTBED_DIR)
    path = Path(model).expanduser()
    if path.is_dir():
        return "folder", str(path)
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ConfigError(
                f"`model` file {model!r} must be a single-file checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) "
                f"or a diffusers folder, got a {path.suffix or 'suffix-less'} file."
            )
        return "file", str(path)
    looks_like_path = (
        model.startswith((".", "/", "~", "\\"))
        or model.count("/") > 1
        or "\\" in model
        or path.suffix.lower() in CHECKPOINT_SUFFIXES
    )
    if looks_like_path:
        raise ModelNotFoundError(
            f"model path {model!r} does not exist (expected a diffusers folder or a .safetensors/.ckpt file)."
        )
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError as err:
        raise ConfigError(
            f"`model` must be 'testbed', a hub id like {DEFAULT_MODEL!r}, a diffusers folder or a checkpoint "
            f"file; {model!r} is none of these ({err})."
        ) from None
    return "hub", model


def _load_part(
    part: str, source: str, local_files_only: bool, dtype: torch.dtype
) -> AutoencoderKL | UNet2DConditionModel | CLIPTextModel | CLIPTokenizer | DDPMScheduler:
    """Load one part from the subfolder `part` of a diffusers folder or hub id; OSError when files are missing."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if part == "tokenizer":
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=local_files_only)
        # transformers 5 builds an empty tokenizer (special tokens only) instead of failing when files are missing.
        if len(tokenizer) <= len(tokenizer.all_special_tokens):
            raise OSError(f"no tokenizer files (vocab.json + merges.txt, or tokenizer.json) in {source}/tokenizer")
        return tokenizer
    if part == "scheduler":
        # SD-1.x ships a PNDM scheduler config; DDPM reads the same training schedule (betas, timesteps) from it.
        return DDPMScheduler.from_pretrained(source, subfolder=part, local_files_only=local_files_only)
    if part == "text_encoder":  # transformers 5 names the argument `dtype`, diffusers `torch_dtype`
        from transformers.utils import logging as hf_logging

        # transformers 5 draws a "Loading weights" bar on stderr, into the middle of the CLI's own progress lines.
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            return CLIPTextModel.from_pretrained(
                source, subfolder=part, local_files_only=local_files_only, dtype=dtype
            )
        finally:
            if shown:
                hf_logging.enable_progress_bar()
    model_class = AutoencoderKL if part == "vae" else UNet2DConditionModel
    return model_class.from_pretrained(source, subfolder=part, local_files_only=local_files_only, torch_dtype=dtype)


def _load_from_diffusers(
    source: str, parts: tuple[str, ...], local_files_only: bool, dtype: torch.dtype
) -> tuple[dict, dict]:
    """Load `parts` and the VAE config (for the resolution) from a diffusers folder or hub id."""
    from diffusers import AutoencoderKL

    with warnings.catch_warnings():
        # diffusers still passes huggingface_hub an argument it deprecated; the warning (two lines on stderr, before
        # our one-line error when weights are missing) is for diffusers' authors, not for whoever runs `cloak`.
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
        loaded = {part: _load_part(part, source, local_files_only, dtype) for part in parts}
        if "vae" in loaded:
            return loaded, dict(loaded["vae"].config)
        return loaded, AutoencoderKL.load_config(source, subfolder="vae", local_files_only=local_files_only)


def _load_single_file(model: str, path: str, parts: tuple[str, ...], dtype: torch.dtype) -> tuple[dict, dict]:
    """Load a single-file SD checkpoint via diffusers; it needs the base model's configs (cache or hub)."""
    from diffusers import StableDiffusionPipeline

    # Probe first: when the configs are not cached, diffusers tries the hub even with local_files_only=True.
    reason = hub_unreachable_reason()
    try:
        pipe = StableDiffusionPipeline.from_single_file(path, local_files_only=reason is not None, torch_dtype=dtype)
    except OSError as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if reason is None:
            raise ModelNotFoundError(f"cannot load the checkpoint file {model!r}: {detail}") from None
        raise ModelNotFoundError(
            f"cannot load the checkpoint file {model!r}: diffusers needs the configs of its base model from the "
            f"Hugging Face cache ({hub_cache_dir()}) and the hub cannot be reached ({reason}); run it once on a "
            "connected machine, or pass a diffusers folder instead: --model /path/to/folder."
        ) from None
    return {part: getattr(pipe, part) for part in parts}, dict(pipe.vae.config)


def load_components(
    model: str = DEFAULT_MODEL,
    parts: Iterable[str] = PARTS,
    device: str = "auto",
    dtype: torch.dtype | None = None,
) -> Components:
    """Load the requested parts of a Stable Diffusion 1.x model, and only those.

    The cache is tried first (no network); only a hub id that is not cached goes online, after a probe that waits
    at most `HUB_PROBE_TIMEOUT_S` seconds and is skipped when `HF_HUB_OFFLINE=1`.

    Args:
        model: "testbed" (the shipped miniature model in `cloak/testbed/weights/`), a diffusers hub id
            (default SD-1.5), a local diffusers folder (the `save_pretrained` layout: `vae/`, `unet/`, ...) or a
            single-file `.safetensors`/`.ckpt` checkpoint (diffusers' `from_single_file`, which needs the base
            model's configs from the cache or the hub).
        parts: a non-empty subset of `PARTS` ("vae", "unet", "text_encoder", "tokenizer", "scheduler"); parts not
            asked for are None in the result. The scheduler is the training noise scheduler, a `DDPMScheduler`.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps" (see `resolve_device`).
        dtype: floating dtype of the networks' weights; None means torch.float32.

    Returns:
        `Components` with the networks on `device` in `dtype`, in eval mode with `requires_grad` off. `resolution`
        is the training resolution in px: `unet.config.sample_size` (latent cells) times the VAE scale factor
        `2 ** (len(vae.block_out_channels) - 1)` when the UNet is loaded, else the VAE config's `sample_size`.
        SD-1.5 holds 64 and four VAE blocks (factor 8), and a VAE `sample_size` of 512: both give 512.

    Raises:
        ConfigError: unknown part, device or dtype, or a `model` that is none of the accepted kinds.
        ModelNotFoundError: weights neither cached nor reachable, a path that does not exist, a folder with a
            part missing, or the testbed weights not built; one line that says what to do.
    """
    wanted = _check_parts(parts)
    torch_device = resolve_device(device)
    torch_dtype = _check_dtype(dtype)
    kind, source = _classify(model)
    if kind == "file":
        loaded, vae_config = _load_single_file(model, source, wanted, torch_dtype)
    elif kind == "folder":
        try:
            loaded, vae_config = _load_from_diffusers(source, wanted, True, torch_dtype)
        except OSError as err:
            raise ModelNotFoundError(
                f"cannot load {', '.join(wanted)} from the folder {source} (expected a diffusers Stable Diffusion "
                f"folder as written by save_pretrained): {str(err).strip().splitlines()[0]}"
            ) from None
    else:
        loaded, vae_config = _from_cache_or_hub(
            model, ", ".join(wanted), lambda local: _load_from_diffusers(source, wanted, local, torch_dtype)
        )
    for part in ("vae", "unet", "text_encoder"):
        if part in loaded:
            loaded[part] = loaded[part].to(torch_device).eval().requires_grad_(False)
    if "unet" in loaded:
        resolution = loaded["unet"].config.sample_size * 2 ** (len(vae_config["block_out_channels"]) - 1)
    else:
        resolution = vae_config["sample_size"]
    return Components(
        name=model,
        vae=loaded.get("vae"),
        unet=loaded.get("unet"),
        text_encoder=loaded.get("text_encoder"),
        tokenizer=loaded.get("tokenizer"),
        scheduler=loaded.get("scheduler"),
        resolution=int(resolution),
        device=torch_device,
        dtype=torch_dtype,
    )


UPSCALER_MODEL = "stabilityai/stable-diffusion-x4-upscaler"  # the upscaler of Hoenig et al.'s noisy upscaling


def load_upscaler(
    model: str = UPSCALER_MODEL, device: torch.device | str = "auto", dtype: torch.dtype | None = None
) -> StableDiffusionUpscalePipeline:
    """A diffusers ``StableDiffusionUpscalePipeline`` (SD x4 by default), for the ``noisy_upscale`` purifier.

    The cache is tried first, as `load_components` does; a hub id that is not cached goes online after the probe.

    Args:
        model: a hub id (default `UPSCALER_MODEL`) or a local folder in the pipeline's ``save_pretrained`` layout.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps".
        dtype: floating dtype of the networks' weights; None means torch.float32.

    Returns:
        The pipeline on ``device``, its progress bar off.

    Raises:
        ConfigError: unknown device or dtype, or a ``model`` that is neither a folder nor a hub id.
        ModelNotFoundError: weights neither cached nor reachable, or a folder that is not such a pipeline; one line.
    """
    from diffusers import StableDiffusionUpscalePipeline as Upscaler  # the top-level name: the module layout may move

    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    torch_dtype = _check_dtype(dtype)
    hint = "pass a local folder of the upscaler pipeline instead (noisy_upscale:upscaler=/path/to/folder)"
    if model == TESTBED:
        raise ConfigError("the testbed has no upscaler; name a diffusers upscaler (noisy_upscale:upscaler=HUB_ID).")
    kind, source = _classify(model)
    if kind == "file":
        raise ConfigError(f"upscaler {model!r}: a single-file checkpoint cannot be loaded as an upscaler; {hint}.")

    def load(local: bool) -> StableDiffusionUpscalePipeline:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
            # diffusers passes `torch_dtype` on to transformers 5, which renamed it; a warning for their authors.
            warnings.filterwarnings("ignore", message=".*torch_dtype.* is deprecated", category=FutureWarning)
            pipe = Upscaler.from_pretrained(source, local_files_only=local, torch_dtype=torch_dtype)
            # a type checker reads diffusers' top-level names as placeholder classes
            return cast("StableDiffusionUpscalePipeline", pipe)

    if kind == "folder":
        try:
            pipe = load(True)
        except (OSError, ValueError, KeyError) as err:  # KeyError: a model_index.json that names no pipeline
            raise ModelNotFoundError(
                f"cannot load an upscaler pipeline from the folder {source}: {str(err).strip().splitlines()[0]}"
            ) from None
    else:
        pipe = _from_cache_or_hub(model, "the upscaler", load, hint)
    pipe = pipe.to(torch_device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


LPIPS_NETS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def lpips_backbone_file(net: str = "alex") -> Path:
    """Where torchvision keeps the ImageNet backbone weights that LPIPS `net` needs (torch hub's cache)."""
    import torchvision.models

    url = getattr(torchvision.models, LPIPS_NETS[net]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_lpips(
    device: torch.device | str = "auto", net: str = "alex", pretrained: bool = True, download: bool = True
) -> torch.nn.Module:
    """LPIPS perceptual distance, for the perceptual budget and the LPIPS metric.

    Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric" (CVPR 2018,
    https://arxiv.org/abs/1801.03924).

    Call the model on two (B, 3, H, W) images in [-1, 1] (`cloak.units.to_lpips`); it returns (B, 1, 1, 1)
    distances, 0 for identical images, larger is more different (about 0.05 is Glaze's budget).

    Args:
        device: "auto", "cpu", "cuda", "mps", or a `torch.device`.
        net: backbone, "alex" (the standard), "vgg" or "squeeze".
        pretrained: True takes the ImageNet backbone from torchvision and the LPIPS calibration layers shipped in
            the lpips wheel. False keeps the shipped calibration on a random backbone (`pnet_rand`): a stand-in
            for tests whose distances mean nothing.
        download: when the backbone weights are not in torch hub's cache (`lpips_backbone_file(net)`), True lets
            torchvision download them (AlexNet: 233 MB), False fails at once without touching the network.

    Returns:
        An `lpips.LPIPS` module on `device` in eval mode with `requires_grad` off.

    Raises:
        ConfigError: unknown `net` or device.
        ModelNotFoundError: the backbone weights are not cached and `download` is False or the download failed.
    """
    if net not in LPIPS_NETS:
        raise ConfigError(f"LPIPS `net` must be one of {', '.join(LPIPS_NETS)}, got {net!r}.")
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    import lpips

    weights_file = lpips_backbone_file(net)
    if pretrained and not download and not weights_file.is_file():
        raise ModelNotFoundError(
            f"LPIPS needs the torchvision ImageNet weights of its {net} backbone at {weights_file}, which is "
            "missing; download them once on a connected machine (load_lpips(download=True)) or copy that file there."
        )
    with warnings.catch_warnings():
        # lpips still calls torchvision's deprecated `pretrained=` argument; the warning is not the user's concern.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        try:
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=not pretrained, verbose=False)
        except OSError as err:  # urllib's URLError and socket errors while downloading
            raise ModelNotFoundError(
                f"LPIPS needs the torchvision ImageNet weights of its {net} backbone at {weights_file} and "
                f"downloading them failed ({err}); copy that file there from a connected machine."
            ) from None
    return model.to(torch_device).eval().requires_grad_(False)


@dataclass(frozen=True)
class OpenClip:
    """An open_clip model and how to feed it images."""

    model: torch.nn.Module  # open_clip CLIP: encode_image / encode_text; eval mode, requires_grad off
    mean: tuple[float, ...]  # per-channel mean of [0, 1] RGB input (pass to cloak.units.to_clip)
    std: tuple[float, ...]  # per-channel std of [0, 1] RGB input
    image_size: tuple[int, int]  # (height, width) of the image tower's input, px
    interpolation: str  # resize filter the model was trained with ("bicubic" for OpenAI CLIP)


def _cached_open_clip_file(cfg: dict) -> str | None:
    """Path of open_clip weights already in the Hugging Face cache, or None (also for URL-only weights)."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo_id, filename = cfg.get("hf_hub", "").rstrip("/"), ""
    if not repo_id:
        return None
    if not cfg["hf_hub"].endswith("/"):  # "org/name/file.ext" names a file, "org/name/" the default one
        repo_id, filename = repo_id.rsplit("/", 1)
    if filename:
        candidates = [filename.rsplit(".", 1)[0] + ".safetensors", filename]
    else:
        candidates = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    for candidate in candidates:
        path = try_to_load_from_cache(repo_id, candidate)
        if isinstance(path, str):
            return path
    return None


def load_open_clip(name: str = "ViT-B-32", pretrained: str | None = "openai", device: str = "auto") -> OpenClip:
    """An open_clip model (https://github.com/mlfoundations/open_clip) for CLIP-feature objectives.

    CLIP: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (ICML 2021,
    https://arxiv.org/abs/2103.00020). The Hugging Face cache is tried first; only weights that are not cached go
    online, after the same short hub probe as `load_components`.

    Args:
        name: open_clip architecture, e.g. "ViT-B-32" (`open_clip.list_models()`).
        pretrained: an open_clip tag such as "openai" (`open_clip.list_pretrained_tags_by_model(name)`), a local
            open_clip checkpoint file, or None for random weights (tests; drawn from torch's global generator).
        device: "auto", "cpu", "cuda" or "mps".

    Returns:
        `OpenClip` with the model in eval mode, `requires_grad` off, and its input normalisation and size.

    Raises:
        ConfigError: unknown architecture or tag, or unknown device.
        ModelNotFoundError: weights neither cached nor reachable; one line that says what to do.
    """
    import open_clip

    torch_device = resolve_device(device)
    if name not in open_clip.list_models():
        raise ConfigError(f"open_clip has no model {name!r}; see open_clip.list_models(), e.g. 'ViT-B-32'.")
    if pretrained is None or Path(pretrained).expanduser().is_file():
        source = None if pretrained is None else str(Path(pretrained).expanduser())
        model = open_clip.create_model(name, pretrained=source, device=torch_device)
    else:
        cfg = open_clip.get_pretrained_cfg(name, pretrained)
        if not cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise ConfigError(
                f"open_clip has no pretrained weights {pretrained!r} for {name} (known: {tags}), "
                "and no such checkpoint file exists."
            )
        cached = _cached_open_clip_file(cfg)
        if cached is not None:
            preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
            model = open_clip.create_model(
                name,
                pretrained=cached,
                force_quick_gelu=cfg.get("quick_gelu", False),
                force_preprocess_cfg=preprocess,
                device=torch_device,
            )
        else:
            reason = hub_unreachable_reason()
            if reason is not None:
                raise ModelNotFoundError(
                    f"open_clip weights {name}/{pretrained} ({cfg.get('hf_hub') or cfg.get('url')}) are not in the "
                    f"Hugging Face cache ({hub_cache_dir()}) and the hub cannot be reached ({reason}); download "
                    "them once on a connected machine, or pass a local open_clip checkpoint file as `pretrained`."
                )
            try:
                model = open_clip.create_model(name, pretrained=pretrained, device=torch_device)
            except OSError as err:  # open_clip raises FileNotFoundError when every download attempt failed
                raise ModelNotFoundError(f"cannot download open_clip weights {name}/{pretrained}: {err}") from None
    preprocess_cfg = model.visual.preprocess_cfg
    size = preprocess_cfg["size"]
    return OpenClip(
        model=model.eval().requires_grad_(False),
        mean=tuple(preprocess_cfg["mean"]),
        std=tuple(preprocess_cfg["std"]),
        image_size=(size, size) if isinstance(size, int) else tuple(size),
        interpolation=preprocess_cfg["interpolation"],
    )
