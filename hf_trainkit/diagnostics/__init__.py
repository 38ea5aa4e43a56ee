from .curves import *  # noqa: F401,F403
from .curves import _as_arrays  # noqa: F401
