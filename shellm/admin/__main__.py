"""
C{python -m shellm.admin}: the C{shellm} command without its script.
"""

import sys

from shellm.admin.main import main

sys.exit(main())
