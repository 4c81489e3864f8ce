"""The progress bar of every pass: a notebook widget where one can be drawn, text otherwise.

``tqdm.auto`` picks the widget bar inside Jupyter, but without ``ipywidgets`` installed it
warns (``IProgress not found``) on every bar; the text bar then renders fine in a notebook,
so it is chosen up front instead.
"""

from __future__ import annotations

import importlib.util

from tqdm.std import tqdm

if importlib.util.find_spec("ipywidgets") is not None:  # widget bars inside Jupyter
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
