"""Artefacts that leave tunesmith (merged Hugging Face folder, PEFT adapter for vLLM, GGUF, Ollama), each checked to behave as the run did in training."""
