"""The data stage's Python API: the same functions the `tunesmith data ...` commands call."""

from tunesmith.data.dataset import Dataset, load_dataset, prepare_dataset
from tunesmith.data.example import Example, Message
from tunesmith.data.formats import load_examples
from tunesmith.data.stats import dataset_stats
from tunesmith.data.validate import validate_file

__all__ = ["Dataset", "Example", "Message", "dataset_stats", "load_dataset", "load_examples", "prepare_dataset", "validate_file"]
