"""``python -m resnetlab.cli``, the same as ``resnetlab``."""

import sys

from . import main

sys.exit(main())
