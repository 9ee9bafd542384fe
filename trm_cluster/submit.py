"""``python -m trm_cluster.submit``: start a run (or resume, fork or sweep runs) through submitit.

The preset (``--preset NAME|PATH``, or the run's own config with ``--resume RUN_DIR``) supplies the
defaults of every flag, so ``--help`` shows the values that will actually be used. argv becomes one
request in launch/parse.py; launch/launcher.py acts on it.
"""

from __future__ import annotations

import sys

from trm_cluster.core.pipes import quiet_on_broken_pipe
from trm_cluster.core.process_exit import skip_final_collections
from trm_cluster.launch.launcher import launch
from trm_cluster.launch.parse import parse
from trm_cluster.launch.presets import PresetError
from trm_cluster.rundir.manifest import ManifestError


@quiet_on_broken_pipe
def main(argv: list[str] | None = None) -> int:
    """Parse, launch, and turn a refusal into one ``trm-submit: error:`` line and exit status 2."""
    skip_final_collections()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return launch(parse(argv))
    except (ValueError, ManifestError, PresetError) as error:
        print(f"trm-submit: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path the file system refuses (a file given as a run, a name too long)
        print(f"trm-submit: error: {error.strerror or error}: {error.filename}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
