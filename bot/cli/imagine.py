"""`dreambot imagine`: local generation (imports trainer lazily)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `imagine` command."""
