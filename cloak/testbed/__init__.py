"""The testbed: a miniature Stable Diffusion, procedural artists and a style judge that run on a CPU.

A faithful miniature of the real setting (the SD architecture and diffusers code paths at 64 px and a few
million parameters, not SD-1.5): ``artists`` paints deterministic styles, ``build`` trains the model and the
judge from scratch, ``dreambooth`` mimics a style, ``check`` measures the gates. The shipped weights live in
``weights/`` and load with ``cloak.models.load_components("testbed", ...)``.
"""
