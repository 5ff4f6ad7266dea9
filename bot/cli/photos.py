"""`dreambot photos check` (owned by the photo-intake work)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `photos` command group."""
