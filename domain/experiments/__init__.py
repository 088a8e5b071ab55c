"""Experiments: design and lifecycle, assignment, per-user outcomes, and their statistics."""
