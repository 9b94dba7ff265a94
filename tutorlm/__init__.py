"""tutorlm: teach small language models to reason by learning from larger ones."""

__version__ = "0.1.0"
