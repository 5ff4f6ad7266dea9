"""``python -m trainer.presets.tiny_base BASES_DIR BPE_PATH SEED``: fit one base and publish it.

:func:`trainer.presets.tiny_base.load_tiny_base` runs this in a child process, holding the lock
beside BASES_DIR (the child inherits it), so no other process fits or cleans there meanwhile.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from trainer.presets.tiny_base import fit_and_write


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    bases_dir, bpe_path, seed = argv
    fit_and_write(Path(bases_dir), Path(bpe_path), int(seed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
