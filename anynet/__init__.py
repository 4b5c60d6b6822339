"""anynet: a two-layer neural network for MNIST, written once against the Python Array API.

The same code trains on NumPy, CuPy, PyTorch, JAX or any Array API library. Importing anynet
imports only NumPy and array-api-compat; a backend is imported when it is asked for.

    >>> import anynet
    >>> net = anynet.TwoLayerNet(n_hidden=30, backend="numpy", seed=0)

The pieces, each a module: `functional` (the math, forward/backward pairs), `network`
(TwoLayerNet), `optim` (SGD and schedules), `backend` (namespaces and devices), `data`
(MNIST files), `training` (the loop), `modelio` (model files), `cli` (the command line).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["SGD", "TwoLayerNet", "__version__", "get_backend", "get_namespace", "load_mnist"]


def __getattr__(name: str):
    # Lazy so that `import anynet` stays cheap and imports no backend.
    if name == "TwoLayerNet":
        from anynet.network import TwoLayerNet

        return TwoLayerNet
    if name == "SGD":
        from anynet.optim import SGD

        return SGD
    if name in ("get_backend", "get_namespace"):  # get_namespace: deprecated, get_backend's
        import anynet.backend

        return getattr(anynet.backend, name)
    if name == "load_mnist":
        from anynet.data import load_mnist

        return load_mnist
    raise AttributeError(f"module 'anynet' has no attribute {name!r}")
