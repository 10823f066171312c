"""Adapters that let other tools drive flashu models (each imports its tool only when that tool loads it)."""
