"""Built-in datasets (read from local files; nothing is downloaded at run time)."""

from . import cifar, fashion_mnist, mnist, synthetic, text  # noqa: F401  (registers the datasets)
