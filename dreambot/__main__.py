"""`python -m dreambot` is the `dreambot` command."""

from __future__ import annotations

import sys

from dreambot.cli import main

sys.exit(main())
