"""``python -m coupled_mamba``: the command line (train, evaluate, predict, convert, demo, bench).

The same as the ``coupled-mamba`` script, and the module torchrun takes:
``torchrun --nproc_per_node=4 -m coupled_mamba train ...``.
"""

import sys

from .train.cli import main

if __name__ == "__main__":
    sys.exit(main())
