"""Watching a served model: drift of its traffic against its training data, output health, alerts."""
