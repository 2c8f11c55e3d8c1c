"""``python -m liteattn_calib inspect FILE``."""

import sys

from .cli import main

sys.exit(main())
