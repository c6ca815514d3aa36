"""Adapter for networks trained by `entropy-probe train` (added with the trainer)."""
