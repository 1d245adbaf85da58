from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.chat_template import Conversation
from tunesmith.config import ModelSpec
from tunesmith.errors import UserError


@dataclass
class Item:
    input_ids: list[int]
    label: int
    example_id: str

    @property
    def n_trained(self) -> int:
        return 1  # one target per example: the loop weighs every example the same, whatever the accumulation


def example_text(example: Conversation) -> str:
    """What the classifier reads: the user turns, without a system prompt shared by every example."""
    return "\n".join(m.content for m in example.prompt_messages if m.role == "user")


def load_classifier(spec: ModelSpec, path: str, labels: list[str]) -> tuple[Any, Any, torch.device]:
    """(model, tokenizer, device): the encoder with a head of len(labels) outputs (new unless the folder has one)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunesmith.models.loading import from_pretrained, pick_device, pick_dtype, quiet_libraries

    quiet_libraries()
    device = pick_device(spec)
    try:
        tokenizer = from_pretrained(AutoTokenizer, path)
        model = from_pretrained(
            AutoModelForSequenceClassification,
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            dtype=pick_dtype(spec, device),
            use_safetensors=True,
        )
    except (OSError, ValueError) as exc:
        raise UserError(
            f"could not load '{spec.name}' as a classifier: {str(exc).splitlines()[0]}",
            fix="use an encoder such as all-minilm-l6-v2, a local HF folder or a hub id",
        ) from None
    if tokenizer.pad_token is None:  # decoder models: pad with end-of-sequence, and tell the head where rows end
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer, device


def encode(tokenizer: Any, examples: list[Conversation], label_ids: dict[str, int], max_len: int) -> list[Item]:
    texts = [example_text(e) for e in examples]
    ids = tokenizer(texts, truncation=True, max_length=max_len)["input_ids"] if texts else []
    return [Item(i, label_ids[e.label], e.id) for i, e in zip(ids, examples)]  # type: ignore[index]


def collate(items: list[Item], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(item.input_ids) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
        mask[row, : len(item.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([item.label for item in items])}


def _max_len(tokenizer: Any, model: Any, wanted: int) -> int:
    limits = [wanted, getattr(model.config, "max_position_embeddings", wanted)]
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(tokenizer.model_max_length)
    return min(limits)


@torch.no_grad()
def predict(model, items: list[Item], pad_id: int, device, batch_size: int) -> tuple[list[int], float]:
    """Predicted class per item (in order) and the summed cross-entropy against the items' labels."""
    model.eval()
    predicted, loss = [], 0.0
    for start in range(0, len(items), batch_size):
        tensors = {k: v.to(device) for k, v in collate(items[start : start + batch_size], pad_id).items()}
        logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits.float()
        loss += float(F.cross_entropy(logits, tensors["labels"], reduction="sum"))
        predicted.extend(logits.argmax(-1).tolist())
    return predicted, loss


LABELS_FILE = "labels.json"
