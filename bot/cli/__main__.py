"""`python -m bot.cli` is the `dreambot` command."""

from __future__ import annotations

import sys

from bot.cli import main

sys.exit(main())
