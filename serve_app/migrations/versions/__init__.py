"""One module per schema revision, ``NNNN_<what>.py``, each with ``revision = "NNNN"``."""
