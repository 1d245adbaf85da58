"""The package's version, in a module of its own: stages read it without importing the package root,
which re-exports the stages (tunesmith/__init__.py)."""

__version__ = "0.1.0"
