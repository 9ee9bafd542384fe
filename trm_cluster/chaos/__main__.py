"""``python -m trm_cluster.chaos``."""

import sys

from trm_cluster.chaos.driver import main

sys.exit(main())
