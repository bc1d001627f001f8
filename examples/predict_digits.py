"""A trained network against its linearization, on real data.

scikit-learn's bundled digits (8x8 images, 10 classes; no download):

1. train an MLP (NTK parameterization) by full-batch gradient descent on
   the MSE loss ``0.5 · mean((f - y)²)`` over all entries of the one-hot
   targets, as neural-tangents' ``predict`` models it, recording its test
   outputs every few steps;
2. predict the same outputs with ``autontk.predict.gradient_descent_mse``
   of the network's NTK at initialization (``trace_axes=()``: the exact
   linearized dynamics), at the same times (``t`` = steps, in units of the
   learning rate), once from the dense kernel and once matrix-free
   (``autontk.ntk_operator``: Lanczos on ``exp(-η Θ t)``, no kernel formed);
3. report the relative RMSE between network and linearization and both
   test accuracies over training, and plot them.

    python examples/predict_digits.py [--out predict_digits.png] [--quick]

About three minutes on a busy 2-core CPU, most of it compiling and the
dense kernel (``--quick``: tiny sizes, about a minute).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

import autontk


def data(n_train, n_test, seed=0):
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  order = np.random.default_rng(seed).permutation(len(x))
  x, y = x[order], np.eye(10, dtype=np.float32)[digits.target[order]]
  x = (x - x[:n_train].mean(0)) / (x[:n_train].std(0) + 1e-3)
  return (jnp.asarray(x[:n_train]), jnp.asarray(y[:n_train]),
          jnp.asarray(x[n_train:n_train + n_test]),
          jnp.asarray(y[n_train:n_train + n_test]))


def mlp(width, seed=0):
  """``f(params, x) -> (N, 10)``, NTK parameterization (weights / √fan-in)."""
  sizes = (64, width, width, 10)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes) - 1)
  params = [(jax.random.normal(k, (a, b)), jnp.zeros(b))
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

  def f(params, x):
    for i, (w, b) in enumerate(params):
      x = x @ w / np.sqrt(w.shape[0]) + 0.1 * b
      if i < len(params) - 1:
        x = jax.nn.relu(x)
    return x

  return f, params


def train(f, params, x, y, x_test, lr, steps, every):
  """Full-batch gradient descent; the test outputs every ``every`` steps."""
  loss = lambda p: 0.5 * jnp.mean((f(p, x) - y) ** 2)

  def block(p, _):
    def step(p, _):
      g = jax.grad(loss)(p)
      return jax.tree.map(lambda a, b: a - lr * b, p, g), None
    p, _ = jax.lax.scan(step, p, None, length=every)
    return p, f(p, x_test)

  _, outs = jax.jit(lambda p: jax.lax.scan(block, p, None,
                                           length=steps // every))(params)
  return jnp.concatenate([f(params, x_test)[None], outs])


def linearized(kernel, cross, f, params, x, y, x_test, lr, t):
  """``gradient_descent_mse`` of the NTK at init: test outputs at ``t``."""
  predict_fn = autontk.predict.gradient_descent_mse(
      kernel, y, learning_rate=lr, trace_axes=())
  _, fx_test = predict_fn(t=t, fx_train_0=f(params, x),
                          fx_test_0=f(params, x_test), k_test_train=cross)
  return fx_test


def rel_rmse(a, b):
  return np.sqrt(np.mean((a - b) ** 2, axis=(-2, -1))
                 / np.mean(b ** 2, axis=(-2, -1)))


def accuracy(out, y):
  return np.mean(np.argmax(out, -1) == np.argmax(y, -1), axis=-1)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="predict_digits.png")
  ap.add_argument("--quick", action="store_true", help="tiny sizes")
  a = ap.parse_args()
  n_train, n_test, width, steps, every = ((40, 40, 64, 40, 10) if a.quick
                                          else (150, 300, 256, 500, 25))
  x, y, x_test, y_test = data(n_train, n_test)
  f, params = mlp(width)

  t0 = time.perf_counter()
  ntk = autontk.ntk_fn(f, trace_axes=())            # (N1, N2, 10, 10)
  k_train = ntk(x, None, params)
  k_test = ntk(x_test, x, params)
  lr = 0.5 * autontk.predict.max_learning_rate(k_train, y.size)
  print(f"NTK at init, dense: {time.perf_counter() - t0:.1f} s; "
        f"learning rate {lr:.3g} (half the largest stable one)")

  t0 = time.perf_counter()
  net = np.asarray(train(f, params, x, y, x_test, lr, steps, every))
  print(f"training, {steps} steps: {time.perf_counter() - t0:.1f} s")
  t = jnp.arange(0, steps + 1, every, dtype=jnp.float32)

  results = {}
  t0 = time.perf_counter()
  results["dense"] = np.asarray(linearized(k_train, k_test, f, params, x, y,
                                           x_test, lr, t))
  print(f"linearized, dense kernel: {time.perf_counter() - t0:.1f} s")
  t0 = time.perf_counter()
  op = autontk.ntk_operator(f, x, params, trace_axes=())   # (N·10, N·10)
  results["matrix-free"] = np.asarray(linearized(
      op, op.cross(x_test), f, params, x, y, x_test, lr, t))
  print(f"linearized, matrix-free: {time.perf_counter() - t0:.1f} s")

  y_test = np.asarray(y_test)
  print("\n  step | rel. RMSE net vs lin (dense, matrix-free) | test acc "
        "net, lin")
  for i in range(0, len(t), max(1, len(t) // 8)):
    print(f"{int(t[i]):6d} | {rel_rmse(net[i], results['dense'][i]):.4f}  "
          f"{rel_rmse(net[i], results['matrix-free'][i]):.4f}"
          f"{'':22s}| {accuracy(net[i], y_test):.3f}  "
          f"{accuracy(results['dense'][i], y_test):.3f}")
  gap = rel_rmse(results["dense"], results["matrix-free"]).max()
  print(f"dense vs matrix-free linearization: relative RMSE <= {gap:.1e}")
  plot(a.out, t, net, results, y_test)


def plot(path, t, net, results, y_test):
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib not installed (pip install autontk[plot]): no plot")
    return
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
  for name, out in results.items():
    a1.plot(t[1:], rel_rmse(net[1:], out[1:]), label=f"net vs {name}",
            ls="-" if name == "dense" else "--")
  a1.set(xlabel="step (t in units of the learning rate)",
         ylabel="relative RMSE of test outputs", yscale="log",
         title="network vs linearization")
  a2.plot(t, accuracy(net, y_test), label="network")
  for name, out in results.items():
    a2.plot(t, accuracy(out, y_test), label=f"linearized ({name})",
            ls="--" if name == "dense" else ":")
  a2.set(xlabel="step", ylabel="test accuracy", title="test accuracy")
  for ax in (a1, a2):
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
