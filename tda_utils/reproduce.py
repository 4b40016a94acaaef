"""``python -m tda_utils.reproduce``: the papermill runner (``run/reproduce.py``)."""

import sys

from .run.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
