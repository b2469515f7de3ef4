"""``python -m trainer``: see ``trainer.cli``. Nothing imports this module."""

import sys

from trainer.cli import main

sys.exit(main())
