"""Built-in datasets (read from local files; nothing is downloaded at run time)."""

from . import fashion_mnist  # noqa: F401  (registers the dataset)
