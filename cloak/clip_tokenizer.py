"""Build the real CLIP BPE tokenizer offline, from the vocabulary that open_clip ships in its wheel.

Stable Diffusion 1.x conditions on OpenAI CLIP ViT-L/14's text tower, whose tokenizer is the byte-level BPE of
Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (ICML 2021,
https://arxiv.org/abs/2103.00020). open_clip ships its merge list (`bpe_simple_vocab_16e6.txt.gz`); from it we
write the `vocab.json` + `merges.txt` pair that transformers' `CLIPTokenizer` reads, so tests and the testbed
get a tokenizer that gives the same ids as SD-1.5's without touching a model hub.

Token order (49408 ids, as in open_clip's `SimpleTokenizer` and SD-1.5's `tokenizer/vocab.json`):
the 256 byte-level unicode symbols, the same 256 with the end-of-word suffix `</w>`, one token per merge
(48894 merges, in rank order), then `<|startoftext|>` (49406) and `<|endoftext|>` (49407).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

from transformers import CLIPTokenizer

CLIP_VOCAB_SIZE = 49408  # 256 bytes + 256 bytes with </w> + 48894 merges + 2 special tokens
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"  # also the pad and unknown token, as in SD-1.5's tokenizer
_NUM_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2
_END_OF_WORD = "</w>"


def _byte_symbols() -> list[str]:
    """The 256 printable unicode stand-ins of byte-level BPE, in the order of the CLIP/GPT-2 byte table.

    Printable bytes map to themselves and come first (in byte order); the other bytes (controls, space, ...)
    follow, mapped to code points 256, 257, ... in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(shifted))]


def _open_clip_merges() -> list[str]:
    """The CLIP merge rules shipped with open_clip, one `"a b"` string per rule, rank order, header dropped."""
    import open_clip.tokenizer

    lines = gzip.open(open_clip.tokenizer.default_bpe()).read().decode("utf-8").split("\n")
    # Line 0 is the "#version: 0.2" header; CLIP uses exactly the first _NUM_MERGES rules after it.
    return lines[1 : 1 + _NUM_MERGES]


def write_clip_vocab(save_dir: str | Path) -> Path:
    """Write `vocab.json` and `merges.txt` of the CLIP BPE tokenizer into `save_dir` (created if needed).

    Args:
        save_dir: folder to write into.

    Returns:
        The folder, as a `Path`.
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    merges = _open_clip_merges()
    symbols = _byte_symbols()
    tokens = symbols + [s + _END_OF_WORD for s in symbols] + [m.replace(" ", "") for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    (save_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (save_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return save_dir


def build_clip_tokenizer(save_dir: str | Path | None = None, model_max_length: int = 77) -> CLIPTokenizer:
    """Build the CLIP tokenizer of Stable Diffusion 1.x without a network.

    Args:
        save_dir: where to write `vocab.json` and `merges.txt`; None writes them to a temporary folder that is
            removed once the tokenizer is built (it keeps everything in memory).
        model_max_length: context length in tokens (77 for CLIP and SD-1.x).

    Returns:
        A `transformers.CLIPTokenizer` with 49408 tokens, bos `<|startoftext|>` (49406) and eos = pad = unk
        `<|endoftext|>` (49407), as SD-1.5's tokenizer.
    """
    if save_dir is None:
        with tempfile.TemporaryDirectory(prefix="cloak-clip-tokenizer-") as tmp:
            return build_clip_tokenizer(tmp, model_max_length)
    folder = write_clip_vocab(save_dir)
    return CLIPTokenizer.from_pretrained(
        folder,
        model_max_length=model_max_length,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
    )
