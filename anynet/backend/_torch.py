"""PyTorch: CPU, CUDA GPUs and Apple's MPS. Devices: `cpu` (default), `cuda`, `cuda:N`, `mps`.

Also the fused step's primitives for PyTorch (`TorchOps`); W -= A @ B there is one fused GEMM
(`addmm_`), on every device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anynet.backend._common import compile as compile
from anynet.backend._common import device_check, import_probe
from anynet.errors import BackendError

NAME = "torch"
INSTALL = "pip install torch (see https://pytorch.org for the build that fits your machine)"

# the device of each kind ("cpu", "gpu") this library computes on, as a spec's device; absent: none
KIND_DEVICES: dict[str, str | None] = {"cpu": "cpu", "gpu": "cuda"}
COMPILES = False


def device_name(device: Any) -> str:
    return str(device)


check_device = device_check(NAME, r"cpu|cuda(:\d+)?|mps",
                            "use torch:cpu, torch:cuda, torch:cuda:N or torch:mps")
probe = import_probe("torch", "PyTorch")


def open(device: str | None) -> tuple[Any, Any]:
    from anynet.backend import import_or_explain

    torch = import_or_explain("torch", NAME, INSTALL)
    import array_api_compat.torch as xp

    dev = torch.device(check_device(device) or "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendError(f"backend 'torch:{device}' asked for, but PyTorch sees no CUDA "
                               "device; use 'torch' for the CPU")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise BackendError(f"backend 'torch:{device}': there are only {count} CUDA "
                               f"device(s) (0..{count - 1})")
        dev = torch.device("cuda", dev.index if dev.index is not None else
                           torch.cuda.current_device())
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BackendError("backend 'torch:mps' asked for, but PyTorch sees no MPS device "
                           "(Apple silicon); use 'torch' for the CPU")
    return xp, dev


def owns(array: Any) -> bool:
    return type(array).__module__.startswith("torch")


def from_host(xp: Any, device: Any, array: np.ndarray) -> Any:
    import torch

    # torch.from_numpy shares memory with the NumPy array: copy, so the backend owns its data
    # (a host array that is not writeable or not native-endian is copied by np.array first)
    tensor = torch.from_numpy(np.array(array, copy=True, order="C"))
    return tensor.to(device) if device.type != "cpu" else tensor


def to_host(array: Any) -> np.ndarray:
    return array.detach().cpu().resolve_conj().numpy()


def sync(array: Any = None) -> None:
    import torch

    if array is not None and array.device.type == "cuda":
        torch.cuda.synchronize(array.device)
    elif array is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def graph_capture(backend):
    """On a CUDA device, `capture(fn) -> replay`: runs `fn` once to warm up (on a side stream,
    as PyTorch asks), records it into a `torch.cuda.CUDAGraph` whose temporaries live in the
    graph's private memory pool, and returns the graph's replay. None on other devices.

    Everything happens on the backend's device, whichever is current: with that device current
    (`torch.cuda.device`) and on a stream of its own (`stream=`), since `torch.cuda.graph`
    without one captures on a stream of the *current* device, and the step's kernels on device
    N would not be in the graph (a failed capture, or an empty graph that changes nothing)."""
    if backend.device.type != "cuda":
        return None
    import torch

    device = backend.device

    def capture(fn):
        with torch.cuda.device(device):
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(device=device)):
                fn()
        # replay() launches on the capture's device (PyTorch guards it), whichever is current
        return graph.replay

    return capture


def fused_ops(backend) -> TorchOps:
    return TorchOps(backend.device)


class TorchOps:
    """The fused step's in-place primitives on PyTorch, for any device."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device
        # On the CPU, SGD with momentum as PyTorch's own fused kernel (`torch._fused_sgd_`, what
        # `optim.SGD(fused=True)` calls; private, so only where it exists): one pass reading
        # p, g, v and writing p, v, where the step's own three axpys read and write 1.8x as
        # much memory (measured, H = 800, 1 thread: 779 against 1,143 us, plain SGD's update
        # 493). Not on CUDA, where the graphed step passes the learning rate as a tensor.
        if getattr(device, "type", device) == "cpu" and hasattr(torch, "_fused_sgd_"):
            self.momentum_ = self._fused_sgd

    def empty(self, shape, dtype):
        return self.torch.empty(shape, dtype=getattr(self.torch, str(np.dtype(dtype))),
                                device=self.device)

    def host(self, array, dtype=None):
        array = np.asarray(array) if dtype is None else np.asarray(array, dtype)
        return from_host(None, self.device, array)

    def load_rows(self, images, idx, out, scale, pixels):
        self.torch.index_select(images, 0, idx, out=pixels)
        out.copy_(pixels).mul_(scale)

    def take(self, array, idx):
        return self.torch.index_select(array, 0, idx)

    def take_into(self, array, idx, out, axis=0):
        self.torch.index_select(array, axis, idx, out=out)

    def mul_into(self, a, c, out):
        self.torch.mul(a, c, out=out)

    def add_into(self, a, b, out):
        self.torch.add(a, b, out=out)

    def put_(self, array, idx, value):
        array.index_copy_(0, idx, value.reshape(1))

    copy_ = staticmethod(lambda dst, src: dst.copy_(src))
    clone = staticmethod(lambda a: a.clone())

    def upload_(self, dst, host):
        dst.copy_(self.torch.from_numpy(np.ascontiguousarray(host)))

    def mm(self, a, b, out):
        self.torch.matmul(a, b, out=out)

    add_ = staticmethod(lambda a, b: a.add_(b))
    sub_ = staticmethod(lambda a, b: a.sub_(b))
    mul_ = staticmethod(lambda a, b: a.mul_(b))
    div_ = staticmethod(lambda a, b: a.div_(b))
    exp_ = staticmethod(lambda a: a.exp_())

    def relu_to(self, a, out):
        self.torch.clamp(a, min=0, out=out)

    def colmax(self, a, out):
        self.torch.amax(a, dim=0, out=out)

    def colsum(self, a, out):
        self.torch.sum(a, dim=0, out=out)

    def bias_relu_(self, Z, b, A):                      # Z += b; A = max(Z, 0)
        Z.add_(b)
        self.torch.clamp(Z, min=0, out=A)

    def softmax_xent_(self, P, Y, c, m, s, loss):       # as UfuncOps.softmax_xent_
        self.torch.amax(P, dim=0, out=m)
        P.sub_(m)
        picked = self.torch.dot(P.reshape(-1), Y.reshape(-1))
        P.exp_()
        self.torch.sum(P, dim=0, out=s)
        loss.copy_((self.torch.sum(self.torch.log(s)) - picked) / P.shape[1])
        P.div_(s).sub_(Y).mul_(c)

    def dot(self, a, b):
        return self.torch.dot(a.reshape(-1), b.reshape(-1))

    def sum_log(self, a):
        return self.torch.sum(self.torch.log(a))

    def relu_backward_(self, dZ, Z, mask):
        self.torch.gt(Z, 0, out=mask)
        dZ.mul_(mask)

    def zero_tiny_(self, a, tiny, tmp):                 # a[|a| < tiny] = 0
        a.masked_fill_(self.torch.abs(a, out=tmp[:a.numel()].view(a.shape)) < tiny, 0)

    def _fused_sgd(self, p, g, v, wd, mu, neg_lr, nesterov):
        """SGD.step with momentum in one pass: g += wd p; v = mu v + g;
        p -= lr (g + mu v) (Nesterov) or p -= lr v. g is overwritten."""
        self.torch._fused_sgd_([p], [g], [v], weight_decay=wd, momentum=mu, lr=-neg_lr,
                               dampening=0.0, nesterov=nesterov, maximize=False,
                               is_first_step=False)

    def axpy_(self, y, a, x, tmp):                      # y += a * x, one pass
        if isinstance(a, self.torch.Tensor):            # a rate in a device buffer (CUDA graph)
            y.addcmul_(x, a)
        else:
            y.add_(x, alpha=a)

    def look_ahead_(self, p, v, a, k, tmp):             # p += a v; v += k p
        self.axpy_(p, a, v, tmp)
        self.axpy_(v, k, p, tmp)

    @staticmethod
    def ema_(a, p, decay, tmp):                         # a = decay * a + (1 - decay) * p
        a.lerp_(p, 1.0 - decay)                         # one pass: a + (1 - decay) (p - a)

    def gemm_acc_(self, C, A, B, beta, tmp):            # C = beta * C + A @ B, one GEMM
        if isinstance(beta, self.torch.Tensor):         # a rate in a device buffer (CUDA graph)
            C.mul_(beta).addmm_(A, B)
        else:
            C.addmm_(A, B, beta=beta)

    @staticmethod
    def sub_mm_(W, A, B, tmp):
        W.addmm_(A, B, alpha=-1.0)
