"""``python -m plexd.cli``: the same as the ``plexd-api`` command."""

import sys

from . import main

sys.exit(main())
