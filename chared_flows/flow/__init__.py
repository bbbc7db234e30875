"""Workflows: spec, loader and runner; joins prompts with decoding."""
