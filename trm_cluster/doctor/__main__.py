"""``python -m trm_cluster.doctor``."""

import sys

from trm_cluster.doctor.cli import main

sys.exit(main())
