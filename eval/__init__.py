"""The evaluation suite: train the mimic the way attackers do on clean, protected and purified art, and measure.

Modules: ``mimics`` (DreamBooth, LoRA DreamBooth, img2img, sampling), ``config`` (the TOML grid), ``data`` (the
artist's images and their protected/purified copies), ``metrics`` (one function per metric), ``summary``
(protection effect, retained fraction, worst case, seed spread), ``runner`` (the resumable grid), ``report``
(the self-contained HTML). Run it as ``cloak eval CONFIG --out DIR`` or ``eval.runner.run(...)``.
"""
