"""Named models (``register_models``): tiny ones built offline and the real ones that install from PyPI."""
