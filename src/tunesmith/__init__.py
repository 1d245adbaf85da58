"""tunesmith: turn a general LLM into a specialist for one job."""

__version__ = "0.1.0"
