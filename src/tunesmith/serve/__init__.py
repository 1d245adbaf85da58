"""An OpenAI-compatible inference server for trained runs, export folders and base models."""
