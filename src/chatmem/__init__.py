"""chatmem: a self-hostable chat backend with conversation memory in Redis."""

__version__ = "0.1.0"
