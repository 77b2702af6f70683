"""Re-export of :mod:`geofm.bands` (band names, sensor mappings, normalization statistics).

The constants live in the top-level :mod:`geofm.bands` so that models can use them without
importing the data package.
"""

from geofm.bands import *  # noqa: F401,F403
from geofm.bands import __all__  # noqa: F401
