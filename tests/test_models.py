"""Model loading: the offline CLIP tokenizer, `cloak.models` loaders and their one-line errors."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from cloak import models
from cloak.clip_tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer
from cloak.errors import ConfigError, ModelNotFoundError
from cloak.units import CLIP_MEAN, CLIP_STD

SENTENCES = [
    "A painting of a cat in the style of Van Gogh, 1889!",
    "héllo wörld 😀 it's 42 x-ray   multiple  spaces",
    "photo of sks dog",
]


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("text", SENTENCES)
def test_clip_tokenizer_matches_open_clip(clip_tokenizer, text):
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    expected = [reference.sot_token_id, *reference.encode(text), reference.eot_token_id]
    assert clip_tokenizer(text).input_ids == expected


def test_clip_tokenizer_vocab_and_special_tokens(clip_tokenizer):
    assert len(clip_tokenizer) == CLIP_VOCAB_SIZE == 49408
    assert clip_tokenizer.bos_token_id == 49406
    assert clip_tokenizer.eos_token_id == clip_tokenizer.pad_token_id == 49407
    assert clip_tokenizer.model_max_length == 77
    # Known SD-1.5 ids: "a" is 320 and DreamBooth's rare token "sks" is 48136.
    assert clip_tokenizer("a sks").input_ids == [49406, 320, 48136, 49407]
    padded = clip_tokenizer("a", padding="max_length", max_length=77, truncation=True).input_ids
    assert padded == [49406, 320] + [49407] * 75


def test_clip_tokenizer_writes_vocab_files(tmp_path):
    build_clip_tokenizer(tmp_path / "t")
    vocab = json.loads((tmp_path / "t" / "vocab.json").read_text(encoding="utf-8"))
    merges = (tmp_path / "t" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 49408 and sorted(vocab.values()) == list(range(49408))
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["<|endoftext|>"] == 49407
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
    assert vocab[merges[1].replace(" ", "")] == 512


def test_clip_tokenizer_without_save_dir_is_self_contained():
    tokenizer = build_clip_tokenizer(model_max_length=16)
    assert tokenizer.model_max_length == 16
    assert tokenizer("photo of sks dog").input_ids == [49406, 1125, 539, 48136, 1929, 49407]


def test_tiny_fixtures_are_real_sd_components(tiny_components, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    assert pipe.vae_scale_factor == 2 and tiny_components.resolution == 32
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.tokenizer("photo of sks dog").input_ids == [49406, 1125, 539, 48136, 1929, 49407]
    for name in ("vae", "unet", "text_encoder"):
        loaded, built = getattr(pipe, name).state_dict(), getattr(tiny_components, name).state_dict()
        assert all(torch.equal(loaded[key], built[key]) for key in built)
    assert sum(p.numel() for p in tiny_components.unet.parameters()) < 100_000


# --- cloak.models: diffusers components -------------------------------------------------------------------------

SUBSETS = [{"vae"}, {"unet"}, {"text_encoder"}, {"tokenizer"}, {"scheduler"}, {"vae", "unet"}, set(models.PARTS)]


@pytest.mark.parametrize("parts", SUBSETS, ids=lambda parts: "+".join(sorted(parts)))
def test_load_components_loads_only_the_requested_parts(tiny_model_dir, tiny_components, parts):
    components = models.load_components(str(tiny_model_dir), parts, device="cpu")
    for part in models.PARTS:
        assert (getattr(components, part) is not None) == (part in parts), part
    assert components.name == str(tiny_model_dir)
    assert components.resolution == 32  # unet sample_size 16 x VAE factor 2, or the VAE's sample_size 32
    assert components.device == torch.device("cpu") and components.dtype == torch.float32
    for part in {"vae", "unet", "text_encoder"} & parts:
        network = getattr(components, part)
        assert not network.training and not any(p.requires_grad for p in network.parameters())
        expected = getattr(tiny_components, part).state_dict()
        assert all(torch.equal(value, expected[key]) for key, value in network.state_dict().items())
    if "scheduler" in parts:
        assert type(components.scheduler).__name__ == "DDPMScheduler"
        assert components.scheduler.config.num_train_timesteps == 1000
    if "tokenizer" in parts:
        assert components.tokenizer("photo of sks dog").input_ids == [49406, 1125, 539, 48136, 1929, 49407]


def test_require_returns_a_loaded_part_and_names_a_missing_one(tiny_components):
    from dataclasses import replace

    assert tiny_components.require("unet") is tiny_components.unet
    message = r"^the model 'tiny' was loaded without its unet; pass 'unet' in load_components' `parts`\.$"
    with pytest.raises(ConfigError, match=message):
        replace(tiny_components, unet=None).require("unet")


def test_load_components_honours_dtype(tiny_model_dir):
    components = models.load_components(tiny_model_dir.as_posix(), ["vae", "text_encoder"], "cpu", torch.bfloat16)
    assert components.dtype == torch.bfloat16
    assert {p.dtype for p in components.vae.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in components.text_encoder.parameters()} == {torch.bfloat16}


def test_resolution_comes_from_the_unet_and_vae_configs(tiny_model_dir, tmp_path):
    folder = tmp_path / "sd"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "vae" / "config.json").read_text())
    config["sample_size"] = 48  # only used when no UNet is loaded
    (folder / "vae" / "config.json").write_text(json.dumps(config))
    assert models.load_components(str(folder), ["unet"], device="cpu").resolution == 32
    assert models.load_components(str(folder), ["tokenizer"], device="cpu").resolution == 48


def test_hub_id_in_the_cache_loads_offline(tiny_model_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--cloak-tests--tiny-sd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(tiny_model_dir, repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    components = models.load_components("cloak-tests/tiny-sd", ["unet", "tokenizer"], device="cpu")
    assert components.unet is not None and components.tokenizer is not None and components.vae is None


def test_uncached_hub_id_offline_fails_fast_with_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        models.load_components("cloak-tests/not-cached", ["vae"], device="cpu")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "\n" not in message
    assert "'cloak-tests/not-cached'" in message and str(tmp_path / "empty-cache") in message
    assert "HF_HUB_OFFLINE" in message and "--model /path/to/folder" in message


def test_unreachable_hub_fails_within_the_probe_timeout(monkeypatch):
    from huggingface_hub import constants

    # Online mode, but the endpoint is a closed local port: the probe must fail without a download attempt.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match=r"cannot be reached \(http://127.0.0.1:9 did not answer"):
        models.load_components("cloak-tests/not-cached", ["unet"], device="cpu")
    assert time.monotonic() - start < models.HUB_PROBE_TIMEOUT_S + 2


def test_testbed_missing_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "TESTBED_DIR", tmp_path / "weights")
    with pytest.raises(ModelNotFoundError, match=r"testbed weights are missing .* `cloak testbed build`"):
        models.load_components("testbed", ["vae"], device="cpu")


def test_testbed_loads_the_shipped_folder(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(models, "TESTBED_DIR", tiny_model_dir)
    components = models.load_components("testbed", ["vae"], device="cpu")
    assert components.name == "testbed" and components.vae is not None and components.resolution == 32


def test_folder_without_a_part_names_the_folder(tiny_model_dir, tmp_path):
    folder = tmp_path / "no-unet"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("unet"))
    with pytest.raises(ModelNotFoundError, match=f"cannot load unet from the folder {folder}"):
        models.load_components(str(folder), ["unet"], device="cpu")
    shutil.rmtree(folder / "tokenizer")
    (folder / "tokenizer").mkdir()
    # transformers 5 would silently build an empty tokenizer here.
    with pytest.raises(ModelNotFoundError, match="no tokenizer files"):
        models.load_components(str(folder), ["tokenizer"], device="cpu")


@pytest.mark.parametrize(
    ("model", "error", "match"),
    [
        ("/no/such/folder", ModelNotFoundError, "model path '/no/such/folder' does not exist"),
        ("missing.ckpt", ModelNotFoundError, "model path 'missing.ckpt' does not exist"),
        ("not a hub id!", ConfigError, "'not a hub id!' is none of these"),
    ],
)
def test_bad_model_names(model, error, match):
    with pytest.raises(error, match=match):
        models.load_components(model, ["vae"], device="cpu")


def test_file_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match=r"single-file checkpoint \(.safetensors, .ckpt\) .* got a .txt file"):
        models.load_components(str(tmp_path / "notes.txt"), ["vae"], device="cpu")


def test_single_file_checkpoint_offline_fails_with_one_line(tmp_path):
    from safetensors.torch import save_file

    checkpoint = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(checkpoint))
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        models.load_components(str(checkpoint), ["vae"], device="cpu")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message and f"checkpoint file '{checkpoint}'" in message
    assert models.hub_cache_dir() in message and "--model /path/to/folder" in message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"parts": ["vae", "clip"]}, r"subset of vae, unet, text_encoder, tokenizer, scheduler; .* \(unknown: clip\)"),
        ({"parts": []}, "non-empty subset"),
        ({"parts": "vae"}, "got the string 'vae'"),
        ({"parts": ["vae"], "dtype": torch.int64}, "`dtype` must be a floating torch.dtype"),
        ({"parts": ["vae"], "device": "tpu"}, "`device` must be one of auto, cpu, cuda, cuda:N, mps; got 'tpu'"),
    ],
)
def test_bad_arguments(tiny_model_dir, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        models.load_components(str(tiny_model_dir), **kwargs)


def test_resolve_device():
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_device("auto").type in {"cpu", "cuda", "mps"}
    for name in ("gpu", "cuda:x", "cpu:0", ""):
        with pytest.raises(ConfigError, match=f"got {name!r}"):
            models.resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_unavailable_cuda():
    assert models.resolve_device("auto") != torch.device("cuda")
    with pytest.raises(ConfigError, match="'cuda' but CUDA is not available"):
        models.resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_components_on_cuda(tiny_model_dir):
    components = models.load_components(str(tiny_model_dir), ["vae", "unet"], device="cuda", dtype=torch.float16)
    assert components.device.type == "cuda"
    for network in (components.vae, components.unet):
        assert {(p.device.type, p.dtype) for p in network.parameters()} == {("cuda", torch.float16)}


# --- open_clip and lpips ----------------------------------------------------------------------------------------


def test_open_clip_random_weights():
    torch.manual_seed(0)
    clip = models.load_open_clip("ViT-B-32", pretrained=None, device="cpu")
    assert clip.mean == CLIP_MEAN and clip.std == CLIP_STD
    assert clip.image_size == (224, 224) and clip.interpolation == "bicubic"
    assert not clip.model.training and not any(p.requires_grad for p in clip.model.parameters())
    with torch.no_grad():
        features = clip.model.encode_image(torch.zeros(1, 3, 224, 224))
    assert features.shape == (1, 512)


def test_open_clip_pretrained_offline_fails_with_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as info:
        models.load_open_clip("ViT-B-32", pretrained="openai", device="cpu")
    message = str(info.value)
    assert "\n" not in message and "ViT-B-32/openai" in message and str(tmp_path) in message
    with pytest.raises(ConfigError, match="no pretrained weights 'nope' for ViT-B-32 .*known: openai"):
        models.load_open_clip("ViT-B-32", pretrained="nope", device="cpu")
    with pytest.raises(ConfigError, match="open_clip has no model 'ViT-Nope'"):
        models.load_open_clip("ViT-Nope", pretrained=None, device="cpu")


def test_open_clip_weights_are_found_in_the_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from open_clip import get_pretrained_cfg

    snapshot = tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("1" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    cfg = get_pretrained_cfg("ViT-B-32", "openai")
    assert models._cached_open_clip_file(cfg) is None
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"x")
    assert models._cached_open_clip_file(cfg) == str(snapshot / "open_clip_pytorch_model.bin")
    (snapshot / "open_clip_model.safetensors").write_bytes(b"x")
    assert models._cached_open_clip_file(cfg) == str(snapshot / "open_clip_model.safetensors")


def test_lpips_random_backbone():
    torch.manual_seed(0)
    model = models.load_lpips("cpu", pretrained=False)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    y = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    with torch.no_grad():
        assert model(x, x).abs().max() == 0
        assert (model(x, y) > 0).all()


def test_lpips_pretrained_not_cached_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert models.lpips_backbone_file("alex") == expected
    with pytest.raises(ModelNotFoundError, match=f"alex backbone at {expected}, which is missing"):
        models.load_lpips("cpu", download=False)


def test_lpips_pretrained_download_failure_is_one_line(tmp_path, monkeypatch):
    import urllib.error

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(ModelNotFoundError, match=r"downloading them failed \(<urlopen error no network in tests>\)"):
        models.load_lpips("cpu", net="alex", download=True)


def test_lpips_pretrained_uses_the_cached_backbone(tmp_path, monkeypatch):
    import torchvision

    # SqueezeNet keeps the file small (5 MB); the lookup is the same for every backbone.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    backbone = torchvision.models.squeezenet1_1().state_dict()
    weights_file = models.lpips_backbone_file("squeeze")
    weights_file.parent.mkdir(parents=True)
    torch.save(backbone, weights_file)
    model = models.load_lpips("cpu", net="squeeze", download=False)
    assert torch.equal(model.net.slice1[0].weight, backbone["features.0.weight"])
    assert not any(p.requires_grad for p in model.parameters())


def test_lpips_unknown_net():
    with pytest.raises(ConfigError, match="LPIPS `net` must be one of alex, vgg, squeeze, got 'resnet'"):
        models.load_lpips("cpu", net="resnet")
