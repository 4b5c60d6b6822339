"""The whole idea on one screen: a 784-30-10 network trained on MNIST with anynet.functional
(the math) and anynet.optim (the update) alone, on whatever Array API library X comes from.
Run: python examples/from_scratch.py     (NumPy, 5 epochs: about 95-96% test accuracy)"""

import numpy as np
from array_api_compat import array_namespace, device

from anynet import functional as F
from anynet.optim import SGD


def init(X, H=30, K=10, seed=0):
    """He-scaled Gaussian weights, zero biases, beside X (N, D): W1 (D, H), b1, W2 (H, K), b2."""
    xp, rng = array_namespace(X), np.random.default_rng(seed)
    shapes = {"W1": (X.shape[1], H), "b1": (H,), "W2": (H, K), "b2": (K,)}
    return {k: xp.asarray(rng.normal(0, np.sqrt(2 / s[0]), s) if len(s) == 2 else np.zeros(s),
                          dtype=X.dtype, device=device(X)) for k, s in shapes.items()}


def loss_and_grads(p, X, t):
    """Forward X (N, D) -> J, then backward: the gradient of J for every parameter."""
    Z1 = F.linear(X, p["W1"], p["b1"])                  # (N, H)
    A1 = F.relu(Z1)
    Z2 = F.linear(A1, p["W2"], p["b2"])                 # (N, K) logits
    J, P = F.softmax_cross_entropy_forward(Z2, t)       # mean cross-entropy, softmax(Z2)
    dZ2 = F.softmax_cross_entropy_grad(P, t)            # (P - Y) / N
    dW2, db2 = F.linear_grad_params(dZ2, A1)
    dZ1 = F.relu_backward(F.linear_grad_input(dZ2, p["W2"]), Z1)
    dW1, db1 = F.linear_grad_params(dZ1, X)
    return J, {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


def train(X, t, epochs=5, batch=64, lr=0.1, seed=0):
    """Mini-batch SGD over X (N, D) float32 in [0, 1] with labels t (N,): the trained params."""
    xp = array_namespace(X)
    params, sgd = init(X, seed=seed), SGD(lr=lr)
    state, rng = sgd.init(params), np.random.default_rng(seed)
    for epoch in range(epochs):
        order = xp.asarray(rng.permutation(X.shape[0]), device=device(X))
        for start in range(0, N := X.shape[0], batch):
            rows = order[start:min(start + batch, N)]
            J, grads = loss_and_grads(params, xp.take(X, rows, axis=0), xp.take(t, rows))
            params, state = sgd.step(params, grads, state)
        print(f"epoch {epoch + 1}: last batch loss {float(J):.3f}")
    return params


def accuracy(params, X, t):  # the fraction of X (N, D) whose most probable class is t (N,)
    Z1 = F.linear(X, params["W1"], params["b1"])
    return F.accuracy(F.linear(F.relu(Z1), params["W2"], params["b2"]), t)


if __name__ == "__main__":
    from anynet.data import load_mnist

    mnist = load_mnist()
    X = np.asarray(mnist.train_images, dtype=np.float32) / 255
    params = train(X, mnist.train_labels.astype(np.int64))
    Xt = np.asarray(mnist.test_images, dtype=np.float32) / 255
    print(f"test accuracy {accuracy(params, Xt, mnist.test_labels.astype(np.int64)):.2%}")
