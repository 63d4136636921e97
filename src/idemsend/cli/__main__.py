"""``python -m idemsend.cli``: the ``idemsend`` command."""

import sys

from . import main

sys.exit(main())
