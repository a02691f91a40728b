"""``aspl``: AdvDM against a surrogate that is fine-tuned in alternation with the perturbation (Anti-DreamBooth).

Van Le et al., "Anti-DreamBooth: Protecting Users from Personalized Text-to-image Synthesis", ICCV'23,
https://arxiv.org/abs/2303.15433 (code: https://github.com/VinAIResearch/Anti-DreamBooth, ``attacks/aspl.py``).

Targets the UNet and the text encoder. The loss is AdvDM's (``cloak.methods.advdm``: the negative denoising MSE),
evaluated on a *surrogate* model instead of the pretrained one, because the model a mimic ends up with has been
fine-tuned on the artist's images. ASPL ("Alternating Surrogate and Perturbation Learning") alternates, per round:

1. ``f_sur <- copy(f)``; fine-tune ``f_sur`` for ``finetune_steps`` (3) steps on the *clean* images;
2. ``update_every`` (6) PGD steps on the images against ``f_sur`` (the shared loop, ``cloak.optim``);
3. fine-tune ``f`` for ``finetune_steps`` steps on the *perturbed* images.

``f`` starts as the pretrained model. Here :meth:`ASPL.update`, which the loop calls before every ``update_every``-th
step, does step 3 of the previous round (on the perturbed views it is handed) and then step 1, so the order is the
paper's. ``f`` and ``f_sur`` are private copies (``copy.deepcopy``) of the UNet and, with ``train_text_encoder``, of
the text encoder: the shared components are never modified. Each image starts from the pretrained weights again, so a
cloak depends only on the image and the seed, not on the images cloaked before it.

Each fine-tune step is the DreamBooth instance loss (the denoising MSE of a posterior sample at a random t, under the
instance ``prompt``), one view per step in turn, with a fresh AdamW (betas 0.9/0.999, weight decay 1e-2, eps 1e-8) and
gradient-norm clipping at 1.0, as the official code. Differences from it: the paper fine-tunes on a separate set of
clean images of the same subject and on a batch of images; here the clean images are the views of the image being
cloaked (stored by :meth:`ASPL.target`). Prior preservation (200 generated class images) is left out.

Cost and memory: two private copies of the UNet and text encoder, plus gradients and AdamW state while fine-tuning
(about 20 GB in float32 for SD-1.5, on top of the shared components), and ``2 * finetune_steps`` training steps per
round. Budget: the paper uses 0.05 in [-1, 1] = 6.4/255 with
50 rounds of 6 PGD steps (FIELD_NOTES section 2); this project's default is the shared L-inf budget.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, ClassVar

import torch

from cloak.errors import ConfigError
from cloak.methods.advdm import AdvDM
from cloak.methods.diffusion import denoising_loss, positive_int, prompt_ids
from cloak.units import vae_latents

if TYPE_CHECKING:
    from cloak.models import Components


class ASPL(AdvDM):
    """AdvDM against a surrogate fine-tuned in alternation on the clean and the perturbed views.

    Args:
        components: needs ``vae``, ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``.
        prompt: the DreamBooth instance prompt the mimic would train with (rare token ``sks``).
            Default ``"a painting in sks style"``.
        samples: (t, eps) draws per loss evaluation, one UNet batch. Default 1 (the paper's code).
        finetune_steps: fine-tune steps of each model per round. Default 3 (the paper's ``max_f_train_steps``).
        learning_rate: AdamW learning rate of the fine-tunes. Default 5e-7 (the paper's script).
        train_text_encoder: fine-tune the text encoder with the UNet, as the paper does. Default True.
    """

    name: ClassVar[str] = "aspl"
    summary: ClassVar[str] = "Anti-DreamBooth ASPL: AdvDM on a surrogate fine-tuned in alternation"
    update_every: ClassVar[int] = 6  # PGD steps per round (the paper's max_adv_train_steps)
    setup_only: ClassVar[frozenset[str]] = frozenset()  # its surrogate fine-tune runs the text encoder

    def __init__(
        self,
        components: Components,
        prompt: str = "a painting in sks style",
        samples: int = 1,
        finetune_steps: int = 3,
        learning_rate: float = 5e-7,
        train_text_encoder: bool = True,
    ) -> None:
        super().__init__(components, prompt=prompt, samples=samples)
        self.finetune_steps = positive_int(finetune_steps, "finetune_steps", self.name)
        if not isinstance(learning_rate, float) or not 0 < learning_rate < 1:
            raise ConfigError(f"`learning_rate` (aspl option) must be a float in (0, 1), got {learning_rate!r}.")
        if not isinstance(train_text_encoder, bool):
            raise ConfigError(f"`train_text_encoder` (aspl option) must be true or false, got {train_text_encoder!r}.")
        self.learning_rate = learning_rate
        self._ids = prompt_ids(components.require("tokenizer"), prompt).to(components.device)
        parts: dict[str, torch.nn.Module] = {"unet": components.require("unet")}
        if train_text_encoder:
            parts["text_encoder"] = components.require("text_encoder")
        self._pretrained = parts
        # f, trained in float32 whatever the loaded weights' dtype (cloak.protect.store_unet_in_bf16)
        self._main = torch.nn.ModuleDict({k: copy.deepcopy(m).float() for k, m in parts.items()})
        self.surrogate = copy.deepcopy(self._main)  # f_sur, the model the loss attacks
        self.unet = self.surrogate["unet"]
        self._clean: list[torch.Tensor] = []  # clean views of the image being cloaked
        self._rounds = 0  # updates done for that image

    def target(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Store the clean view for the surrogate's fine-tune (a new image once updates have run)."""
        if self._rounds:
            self._clean, self._rounds = [], 0
        self._clean.append(x.detach())
        return None

    def update(self, views_adv: list[torch.Tensor], generator: torch.Generator) -> None:
        """Between rounds: fine-tune f on the perturbed views (not before round 0), then f_sur on the clean ones."""
        if self._rounds == 0:
            for key, model in self._pretrained.items():
                self._main[key].load_state_dict(model.state_dict())
        else:
            self._finetune(self._main, views_adv, generator)
        self.surrogate.load_state_dict(self._main.state_dict())
        self._finetune(self.surrogate, self._clean, generator)
        self.prompt_embeds = self._condition(self.surrogate).detach()
        self._rounds += 1

    def _condition(self, models: torch.nn.ModuleDict) -> torch.Tensor:
        """The instance prompt's embedding c under ``models``' text encoder (the shared one when not trained)."""
        if "text_encoder" in models:
            return models["text_encoder"](self._ids)[0]
        with torch.no_grad():
            return self.components.require("text_encoder")(self._ids)[0]

    def _finetune(self, models: torch.nn.ModuleDict, images: list[torch.Tensor], generator: torch.Generator) -> None:
        """DreamBooth instance loss, ``finetune_steps`` AdamW steps, one image per step in turn."""
        vae, scheduler = self.components.require("vae"), self.components.require("scheduler")
        params = list(models.parameters())
        models.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        for step in range(self.finetune_steps):
            with torch.no_grad():
                z = vae_latents(vae, images[step % len(images)], generator)
            loss = denoising_loss(models["unet"], scheduler, z, self._condition(models), generator)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        models.requires_grad_(False)
