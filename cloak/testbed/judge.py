"""The style judge: a small CNN that names the style of a 64 px image, and a Frechet distance on its features.

It stands in for the CLIP-based or human judgement used on real models: a mimicry attempt succeeds when the
judge names the protected artist's style in the mimic's generations. It is trained on the procedural artists'
output of every style (seen and held out) with light augmentation (flips, blur, noise, and passes through the
testbed's VAE, since every generation is a VAE decode). Its penultimate features (128-d) also feed
``frechet_distance`` (the FID formula of Heusel et al., 2017, https://arxiv.org/abs/1706.08500, with the
judge in place of Inception).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from cloak.errors import ConfigError, ModelNotFoundError
from cloak.metrics import frechet_distance  # noqa: F401  (the judge's features feed it; one implementation)

JUDGE_DIR = Path(__file__).parent / "weights" / "judge"
"""Where the shipped judge lives: ``config.json`` + ``model.safetensors``."""


@dataclass(frozen=True)
class JudgeConfig:
    """Architecture of the judge.

    Attributes:
        style_names: the class names, in class-index order.
        widths: channels of the conv stages; each stage halves the resolution.
        resolution: input side in px the judge was trained at; inputs are resized to it.
    """

    style_names: tuple[str, ...]
    widths: tuple[int, ...] = (32, 64, 128)
    resolution: int = 64


class JudgeNet(nn.Module):
    """Conv stages (conv-BN-ReLU x2, then 2x2 max-pool) -> global average pool -> linear classifier."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for w in config.widths:
            layers += [
                nn.Conv2d(c_in, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, len(config.style_names))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, widths[-1])`` of images ``(B, 3, H, W)`` in [0, 1]."""
        return self.body(x * 2 - 1).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, n_styles)``."""
        return self.head(self.features(x))


class Judge:
    """A trained judge in eval mode: names styles and embeds images for the Frechet distance."""

    def __init__(self, net: JudgeNet, config: JudgeConfig):
        self.net = net.eval()
        self.config = config

    @property
    def style_names(self) -> tuple[str, ...]:
        """Class names in index order."""
        return self.config.style_names

    def _prepare(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"the judge expects images (B, 3, H, W) in [0, 1], got shape {tuple(x.shape)}.")
        p = next(self.net.parameters())
        x = x.to(device=p.device, dtype=p.dtype)
        r = self.config.resolution
        if x.shape[-2:] != (r, r):
            x = torch.nn.functional.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return x

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """Class logits ``(B, n_styles)`` for images ``(B, 3, H, W)`` in [0, 1] (resized to the judge's side)."""
        return self.net(self._prepare(x))

    def predict(self, x: Tensor) -> Tensor:
        """Style indices ``(B,)`` (int64) for images ``(B, 3, H, W)`` in [0, 1]."""
        return self.logits(x).argmax(dim=1)

    def name_counts(self, x: Tensor) -> dict[str, int]:
        """How many of the images ``(B, 3, H, W)`` in [0, 1] the judge names each style: ``most_first``, styles
        named by none left out."""
        counts: dict[str, int] = {}
        for i in self.predict(x).tolist():
            counts[self.style_names[i]] = counts.get(self.style_names[i], 0) + 1
        return most_first(counts)

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, D)`` for images ``(B, 3, H, W)`` in [0, 1]."""
        return self.net.features(self._prepare(x))

    def save(self, folder: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))


def most_first(counts: dict[str, int]) -> dict[str, int]:
    """``counts`` ordered by count, most first, ties by name: the order in which the judge's namings are shown."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def load_judge(device: str | torch.device = "cpu", folder: str | Path | None = None) -> Judge:
    """Load the judge (default: the shipped one in ``cloak/testbed/weights/judge``) in eval mode.

    Args:
        device: where to put it.
        folder: a folder written by ``Judge.save``; ``None`` for the shipped judge.
    """
    from safetensors.torch import load_file

    folder = JUDGE_DIR if folder is None else Path(folder)
    cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
    if not (cfg_path.is_file() and w_path.is_file()):
        raise ModelNotFoundError(
            f"no style judge in {folder}: expected config.json and model.safetensors. "
            "Build one with `cloak testbed build --out DIR`."
        )
    raw = json.loads(cfg_path.read_text())
    config = JudgeConfig(
        style_names=tuple(raw["style_names"]), widths=tuple(raw["widths"]), resolution=raw["resolution"]
    )
    net = JudgeNet(config)
    net.load_state_dict(load_file(str(w_path)))
    return Judge(net.to(device), config)
