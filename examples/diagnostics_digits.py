"""Kernel diagnostics over training on real data: which layers moved.

scikit-learn's bundled digits (1797 8x8 images, 10 classes; no download):

1. train an MLP (64 -> 128 -> 128 -> 64 -> 10, tanh) with full-batch Adam
   written by hand; at several checkpoints compute, per layer
   (``groups="layer"``; the layers' kernels sum to the NTK), the kernel
   distance from the initial kernel and the centered kernel-target
   alignment with the one-hot labels, with ``autontk.diagnostics`` (each
   result says its route, dense or matrix-free, and its error);
2. rank a few untrained architectures (depth, width, activation) by the
   condition number of their NTK at initialisation, a zero-cost ranking in
   the manner of TE-NAS, against their accuracy after a short training;
3. plot both to ``diagnostics_digits.png``.

    python examples/diagnostics_digits.py [--out diagnostics_digits.png]

About five minutes on a 2-core CPU (1000 training and 797 test images);
``--quick`` (or ``AUTONTK_QUICK=1``) runs a small version in under a minute.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

import autontk
import training
from autontk import diagnostics as D

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu,
               "erf": jax.scipy.special.erf}
# (name, hidden widths, activation) of the ranked architectures.
ARCHITECTURES = (
    ("1x128 tanh", (128,), "tanh"),
    ("2x128 relu", (128, 128), "relu"),
    ("3x128 tanh", (128, 128, 128), "tanh"),
    ("3x32 erf", (32, 32, 32), "erf"),
    ("6x64 relu", (64,) * 6, "relu"),
    ("8x64 tanh", (64,) * 8, "tanh"),
)


def data(n_train, n_test, seed=0):
  digits = load_digits()
  x = digits.data.astype(np.float32) / 16.0
  x = (x - x.mean(0)) / (x.std(0) + 1e-3)  # standardised pixels
  y = digits.target
  order = np.random.default_rng(seed).permutation(len(y))
  x, y = x[order], y[order]
  return (jnp.asarray(x[:n_train]), y[:n_train],
          jnp.asarray(x[n_train:n_train + n_test]),
          y[n_train:n_train + n_test])


def init(key, widths, n_in=64, n_out=10):
  """One ``{"w", "b"}`` dict per layer ``dense0, dense1, ...``; standard
  (LeCun) scaling, so every layer's kernel is of a similar size."""
  sizes = (n_in, *widths, n_out)
  keys = jax.random.split(key, len(sizes) - 1)
  return {f"dense{i}": {"w": jax.random.normal(k, (a, b)) / np.sqrt(a),
                        "b": jnp.zeros(b)}
          for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}


def mlp(activation):
  act = ACTIVATIONS[activation]

  def f(params, x):
    n = len(params)
    for i in range(n):
      x = x @ params[f"dense{i}"]["w"] + params[f"dense{i}"]["b"]
      if i < n - 1:
        x = act(x)
    return x
  return f


def train(f, params, x, y, steps, lr=1e-3, every=None):
  """Full-batch Adam on the cross-entropy. Returns the final parameters
  and ``[(step, params)]`` at ``every`` steps (step 0 included)."""
  def loss(p):
    logp = jax.nn.log_softmax(f(p, x))
    return -jnp.mean(logp[jnp.arange(len(y)), y])

  return training.adam(loss, params, steps, lr, every)


def accuracy(f, params, x, y):
  return float(np.mean(np.argmax(f(params, x), 1) == y))


def over_training(x, y, x_test, y_test, steps, n_checkpoints):
  """Per-layer kernel distance from init and alignment at each checkpoint."""
  f = mlp("tanh")
  params0 = init(jax.random.PRNGKey(0), (128, 128, 64))
  _, saved = train(f, params0, x, y, steps,
                   every=max(1, steps // (n_checkpoints - 1)))
  onehot = np.eye(10)[y]
  # one kernel function: its plan and compiled kernels are reused at every
  # checkpoint; each diagnostic picks its route from the kernel's size
  ntk = autontk.ntk_fn(f, groups="layer", vmap_axes=0)
  k0 = D.kernels(ntk, x=x, params=params0)
  rows = []
  for t, p in saved:
    t0 = time.perf_counter()
    kt = k0 if t == 0 else D.kernels(ntk, x=x, params=p)
    dist = D.kernel_distance(k0, kt)
    align = D.alignment(kt, onehot)
    rows.append({"step": t, "acc": accuracy(f, p, x_test, y_test),
                 "distance": dist, "alignment": align})
    some = next(iter(dist.values()))
    print(f"step {t:4d}: test acc {rows[-1]['acc']:.3f}; distance "
          + ", ".join(f"{g} {e.value:.3f}" for g, e in dist.items())
          + "; alignment "
          + ", ".join(f"{g} {e.value:.3f}" for g, e in align.items())
          + f" [{some.route}, {time.perf_counter() - t0:.1f} s]")
  return rows


def ranking(x, y, x_test, y_test, n_rank, steps, architectures):
  """Condition number of each architecture's NTK at init on ``n_rank``
  examples, and its test accuracy after ``steps`` of training."""
  rows = []
  for name, widths, act in architectures:
    f = mlp(act)
    params = init(jax.random.PRNGKey(1), widths)
    cond = D.condition_number(f, x=x[:n_rank], params=params)
    trained, _ = train(f, params, x, y, steps)
    rows.append({"name": name, "cond": float(cond.value),
                 "acc": accuracy(f, trained, x_test, y_test)})
    print(f"{name:12s} condition number {cond.value:10.4g} "
          f"({cond.route}), accuracy after {steps} steps "
          f"{rows[-1]['acc']:.3f}")
  order = sorted(rows, key=lambda r: r["cond"])
  print("ranked by condition number (lowest first): "
        + ", ".join(r["name"] for r in order) + "; rank correlation of the "
        f"condition number and the accuracy "
        f"{spearman([r['cond'] for r in rows], [r['acc'] for r in rows]):+.2f}"
        " (TE-NAS expects it negative)")
  return rows


def spearman(a, b):
  ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
  return float(np.corrcoef(ra, rb)[0, 1])


def plot(path, rows, ranked):
  import matplotlib  # the plot extra: pip install "autontk[plot]"
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  steps = [r["step"] for r in rows]
  for g in rows[0]["distance"]:
    for ax, key in ((axes[0], "distance"), (axes[1], "alignment")):
      est = [r[key][g] for r in rows]
      ax.errorbar(steps, [e.value for e in est],
                  yerr=[3 * e.error for e in est], marker="o", ms=3,
                  label=g, capsize=2)
  axes[0].set(xlabel="training step",
              ylabel="kernel distance from init, 1 − cos(Θ_l(0), Θ_l(t))",
              title="which layers moved")
  axes[1].set(xlabel="training step",
              ylabel="centered alignment with the one-hot labels",
              title="per-layer kernel-target alignment")
  axes[0].legend()
  axes[1].legend()
  cond = [r["cond"] for r in ranked]
  acc = [r["acc"] for r in ranked]
  axes[2].scatter(cond, acc)
  for r in ranked:
    axes[2].annotate(r["name"], (r["cond"], r["acc"]), fontsize=8,
                     xytext=(3, 3), textcoords="offset points")
  axes[2].set(xscale="log", xlabel="NTK condition number at init",
              ylabel="test accuracy after a short training",
              title=f"zero-cost ranking (rank correlation of κ and "
                    f"accuracy {spearman(cond, acc):+.2f})")
  fig.suptitle(f"MLP on digits: NTK diagnostics over training "
               f"({len(rows[0]['distance'])} layers)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="diagnostics_digits.png")
  parser.add_argument("--quick", action="store_true",
                      default=bool(os.environ.get("AUTONTK_QUICK")))
  args = parser.parse_args()
  if args.quick:
    n_train, n_test, steps, n_ckpt, n_rank, rank_steps = 200, 100, 40, 3, 60, 20
    architectures = ARCHITECTURES[:3]
  else:
    n_train, n_test, steps, n_ckpt, n_rank, rank_steps = (
        1000, 797, 400, 5, 300, 150)
    architectures = ARCHITECTURES
  t0 = time.perf_counter()
  x, y, x_test, y_test = data(n_train, n_test)
  rows = over_training(x, y, x_test, y_test, steps, n_ckpt)
  ranked = ranking(x, y, x_test, y_test, n_rank, rank_steps,
                   architectures)
  plot(args.out, rows, ranked)
  print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
  main()
