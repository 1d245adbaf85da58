"""Hyperparameter and base-model search over training runs (Optuna studies kept in the workspace)."""
