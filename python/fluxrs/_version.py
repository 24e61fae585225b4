"""fluxrs's version, in a leaf module so that code writing it (checkpoints) needs no package import."""

__version__ = "0.1.0"
