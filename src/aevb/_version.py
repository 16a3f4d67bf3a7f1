"""The package's version, in a module of its own so that any module may import it without a cycle
through the package's ``__init__``."""

__version__ = "0.2.0"
