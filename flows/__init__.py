"""Prefect flows: they wire tasks from ``tasks/`` and nothing else. One flow per module."""
