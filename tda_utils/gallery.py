"""``python -m tda_utils.gallery``: the HTML reports and ``index.html`` (``run/gallery.py``)."""

import sys

from .run.gallery import main

if __name__ == "__main__":
    sys.exit(main())
