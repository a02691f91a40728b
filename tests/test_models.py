"""Model loading: the offline CLIP tokenizer, `cloak.models` loaders and their one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from cloak.clip_tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer

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
