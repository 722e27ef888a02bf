"""ringrift-coord: the coordination layer of the RingRift training cluster.

The library is importable without the CLI; the public modules keep the reference's names
(``task_coordinator``, ``safeguards``, ...). This package ``__init__`` stays empty of imports
so that ``ringrift-coord can-spawn`` pays only for what it uses.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
