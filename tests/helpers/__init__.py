"""Shared helpers for the reliability tests: launching train.py in subprocesses, killing it, reading checkpoints."""
