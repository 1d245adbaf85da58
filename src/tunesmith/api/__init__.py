"""The fine-tuning service: OpenAI's files, fine-tuning jobs and models APIs over tunesmith's own
training, evaluation and serving, with jobs in a durable SQLite queue run by worker processes."""
