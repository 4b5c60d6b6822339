"""PyTorch the way its users write it: nn.Sequential, CrossEntropyLoss, optim.SGD, autograd.

The training data is converted once to a float32 tensor in memory (on the device), labels to
int64; each epoch draws `torch.randperm` and indexes mini-batches out of it, then
`zero_grad / loss.backward() / step`. Weights use He normal init (`kaiming_normal_`, fan-in,
ReLU gain) and zero biases, so every implementation in the benchmark starts from the same scale.
On CUDA the epoch ends with `torch.cuda.synchronize()` so the timer sees the finished work.
With compile=True the model is `torch.compile(model)`, as users speed it up (the warm-up epoch
pays for the compilation, and for a second one at the epoch's short last batch).

Shapes: X (N, 784) float32, y (N,) int64, logits (N, 10).
"""

from __future__ import annotations

import torch
from torch import nn

ANYNET_BACKEND = "torch"  # the anynet backend whose arrays these are (for anynet's distortions)


class TorchModuleNet:
    def __init__(self, hidden, batch, lr, seed, train_images, train_labels, device, threads,
                 compile=False, momentum=0.0, nesterov=False, weight_decay=0.0):
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.model = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        for layer in (self.model[0], self.model[2]):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        self.model.to(self.device)
        self.loss_fn = nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum,
                                   nesterov=nesterov, weight_decay=weight_decay)
        self.forward = torch.compile(self.model) if compile else self.model
        self.X = torch.from_numpy(train_images).to(self.device).float().div_(255)
        self.y = torch.from_numpy(train_labels).to(self.device).long()
        self.batch = batch
        self.gen = torch.Generator(device=self.device).manual_seed(seed)

    def epoch(self, lrs=None, distort=None):
        """One pass; `lrs`: the learning rate of each step (a schedule's), `distort(X, i)`:
        batch i's images distorted, as a user's transform would."""
        n = self.X.shape[0]
        perm = torch.randperm(n, generator=self.gen, device=self.device)
        for step, i in enumerate(range(0, n, self.batch)):
            idx = perm[i:i + self.batch]
            xb, yb = self.X[idx], self.y[idx]
            if distort is not None:
                xb = distort(xb, step)
            if lrs is not None:
                for group in self.opt.param_groups:
                    group["lr"] = float(lrs[step])
            self.opt.zero_grad()
            loss = self.loss_fn(self.forward(xb), yb)
            loss.backward()
            self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def accuracy(self, images, labels):
        X = torch.from_numpy(images).to(self.device).float().div_(255)
        pred = self.model(X).argmax(dim=1).cpu()
        return (pred == torch.from_numpy(labels).long()).sum().item() / len(labels)


def make(hidden, batch, lr, seed, train_images, train_labels, *, device="cpu", threads=2,
         compile=False, momentum=0.0, nesterov=False, weight_decay=0.0):
    return TorchModuleNet(hidden, batch, lr, seed, train_images, train_labels, device, threads,
                          compile, momentum, nesterov, weight_decay)
