"""The library's version, in a module of its own so `adept.io` / `adept.peft_export` can record it without
importing the package (whose lazy attributes import them)."""

__version__ = "0.1.0"
