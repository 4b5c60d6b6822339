"""PyTorch without autograd: the same math as the NumPy baseline, written on torch tensors.

Forward and backward by hand under `torch.no_grad()`, plain SGD updates in place. This is the
"PyTorch without autograd" column: what PyTorch's kernels give once the autograd graph and the
nn.Module machinery are out of the way. Data as in the nn.Module peer (float32 tensor in memory,
`randperm` per epoch, indexed mini-batches); He normal init, zero biases.

Shapes: N batch, D = 784, H hidden, K = 10. X (N, D), W1 (D, H), b1 (H,), W2 (H, K), b2 (K,).
"""

from __future__ import annotations

import math

import torch


class TorchManualNet:
    def __init__(self, hidden, batch, lr, seed, train_images, train_labels, device, threads):
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(seed)
        d, k = 784, 10
        self.W1 = (torch.randn(d, hidden, generator=g) * math.sqrt(2 / d)).to(self.device)
        self.b1 = torch.zeros(hidden, device=self.device)
        self.W2 = (torch.randn(hidden, k, generator=g) * math.sqrt(2 / hidden)).to(self.device)
        self.b2 = torch.zeros(k, device=self.device)
        self.X = torch.from_numpy(train_images).to(self.device).float().div_(255)
        self.y = torch.from_numpy(train_labels).to(self.device).long()
        self.batch, self.lr = batch, lr
        self.gen = torch.Generator(device=self.device).manual_seed(seed)

    @torch.no_grad()
    def epoch(self):
        n = self.X.shape[0]
        perm = torch.randperm(n, generator=self.gen, device=self.device)
        for i in range(0, n, self.batch):
            idx = perm[i:i + self.batch]
            self.step(self.X[idx], self.y[idx])
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def step(self, X, y):
        n = X.shape[0]
        Z1 = torch.addmm(self.b1, X, self.W1)               # (N, H)
        A1 = Z1.clamp_min(0)
        Z2 = torch.addmm(self.b2, A1, self.W2)              # (N, K)
        # d(mean cross-entropy)/dZ2 = (P - Y) / N
        dZ2 = torch.softmax(Z2, dim=1)
        dZ2[torch.arange(n, device=self.device), y] -= 1
        dZ2 /= n
        dW2 = A1.T @ dZ2
        db2 = dZ2.sum(0)
        dZ1 = (dZ2 @ self.W2.T) * (Z1 > 0)
        dW1 = X.T @ dZ1
        db1 = dZ1.sum(0)
        # The update in place, as optim.SGD does it (p.add_(g, alpha=-lr)): no lr * dW temporary.
        self.W1.sub_(dW1, alpha=self.lr)
        self.b1.sub_(db1, alpha=self.lr)
        self.W2.sub_(dW2, alpha=self.lr)
        self.b2.sub_(db2, alpha=self.lr)

    @torch.no_grad()
    def accuracy(self, images, labels):
        X = torch.from_numpy(images).to(self.device).float().div_(255)
        Z2 = torch.addmm(self.b2, torch.addmm(self.b1, X, self.W1).clamp_min(0), self.W2)
        pred = Z2.argmax(dim=1).cpu()
        return (pred == torch.from_numpy(labels).long()).sum().item() / len(labels)


def make(hidden, batch, lr, seed, train_images, train_labels, *, device="cpu", threads=2):
    return TorchManualNet(hidden, batch, lr, seed, train_images, train_labels, device, threads)
