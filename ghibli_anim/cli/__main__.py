"""``python -m ghibli_anim.cli``: the same as the ``ghibli-anim`` command."""

import sys

from ghibli_anim.cli.main import main

sys.exit(main())
