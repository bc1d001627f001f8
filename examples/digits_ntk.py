"""The NTK of a small CNN on real data, before and after training.

scikit-learn's bundled digits (1797 8x8 images, 10 classes; no download):

1. train a small CNN (three layers, full-batch Adam);
2. compute its empirical NTK at initialisation and after training, one
   kernel per layer (``groups="top"``; the layers' kernels sum to the NTK);
3. kernel regression with each NTK (and with the pseudo-NTK) against the
   network's own test accuracy;
4. which layers' kernels moved during training (kernel distance, Fort et
   al. 2020), and how well each layer's kernel aligns with the labels
   (centred kernel-target alignment);
5. a plot of all of it.

    python examples/digits_ntk.py [--out digits_ntk.png] [--steps 300]

About a minute on a 2-core CPU.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from sklearn.datasets import load_digits

import autontk
import training

N_TRAIN, N_TEST = 600, 300
LAYERS = ("conv1", "conv2", "dense")


def data(seed=0):
  digits = load_digits()
  x = digits.images[..., None].astype(np.float32) / 16.0
  y = digits.target
  order = np.random.default_rng(seed).permutation(len(y))
  x, y = x[order], y[order]
  return (jnp.asarray(x[:N_TRAIN]), y[:N_TRAIN],
          jnp.asarray(x[N_TRAIN:N_TRAIN + N_TEST]),
          y[N_TRAIN:N_TRAIN + N_TEST])


def init(key):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "conv1": {"w": jax.random.normal(k1, (3, 3, 1, 8)) / 3.0,
                "b": jnp.zeros(8)},
      "conv2": {"w": jax.random.normal(k2, (3, 3, 8, 16)) / (3.0 * 8 ** .5),
                "b": jnp.zeros(16)},
      "dense": {"w": jax.random.normal(k3, (4 * 4 * 16, 10)) / 16.0,
                "b": jnp.zeros(10)},
  }


def cnn(params, x):
  """conv 3x3 (8) -> relu -> conv 3x3 stride 2 (16) -> relu -> dense (10)."""
  dn = ("NHWC", "HWIO", "NHWC")
  h = lax.conv_general_dilated(x, params["conv1"]["w"], (1, 1), "SAME",
                               dimension_numbers=dn) + params["conv1"]["b"]
  h = jax.nn.relu(h)
  h = lax.conv_general_dilated(h, params["conv2"]["w"], (2, 2), "SAME",
                               dimension_numbers=dn) + params["conv2"]["b"]
  h = jax.nn.relu(h).reshape(x.shape[0], -1)
  return h @ params["dense"]["w"] + params["dense"]["b"]


def train(params, x, y, steps, lr=1e-3):
  """Full-batch Adam on the cross-entropy."""
  def loss(p):
    logp = jax.nn.log_softmax(cnn(p, x))
    return -jnp.mean(logp[jnp.arange(len(y)), y])

  params, _ = training.adam(loss, params, steps, lr)
  return params, float(loss(params))


def kernel_regression(k_train, k_test, y_train, ridge=1e-3):
  """Predicts argmax of K_test (K_train + λ·mean(diag)·I)⁻¹ (Y − 1/10)."""
  targets = np.eye(10)[y_train] - 0.1
  k = np.asarray(k_train, np.float64)
  k = k + ridge * np.mean(np.diag(k)) * np.eye(len(k))
  alpha = np.linalg.solve(k, targets)
  return np.argmax(np.asarray(k_test, np.float64) @ alpha, axis=1)


def cosine(a, b):
  """<A, B>_F / (|A|_F |B|_F)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def alignment(k, y):
  """Centred kernel-target alignment: cos(HKH, YYᵀ), H the centring matrix
  (the constant part of K says nothing about the labels)."""
  n = len(y)
  h = np.eye(n) - 1.0 / n
  t = np.eye(10)[y]
  return cosine(h @ np.asarray(k, np.float64) @ h, t @ t.T)


def kernels(params, x_all):
  """Per-layer NTKs and the pseudo-NTK of all examples (train then test)."""
  ntk = autontk.ntk_fn(cnn, groups="top", vmap_axes=0)
  per_layer = {g: np.asarray(k) for g, k in ntk(x_all, None, params).items()}
  pntk = np.asarray(autontk.pntk_fn(cnn, vmap_axes=0)(x_all, None, params))
  return per_layer, pntk


def evaluate(per_layer, pntk, y_train, y_test):
  full = sum(per_layer.values())
  tr, te = slice(0, N_TRAIN), slice(N_TRAIN, None)
  acc = {}
  for name, k in (("NTK", full), ("pNTK", pntk)):
    pred = kernel_regression(k[tr, tr], k[te, tr], y_train)
    acc[name] = float(np.mean(pred == y_test))
  align = {g: alignment(k[tr, tr], y_train) for g, k in per_layer.items()}
  return acc, align


def plot(path, results, moved):
  import matplotlib  # the plot extra: pip install "autontk[plot]"
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
  names = ["network", "NTK init", "NTK trained", "pNTK init", "pNTK trained"]
  accs = [results["net_acc"], results["init"]["acc"]["NTK"],
          results["trained"]["acc"]["NTK"], results["init"]["acc"]["pNTK"],
          results["trained"]["acc"]["pNTK"]]
  axes[0].bar(names, accs, color=["k", "tab:blue", "tab:orange",
                                  "lightsteelblue", "navajowhite"])
  axes[0].set(ylim=(min(accs) - 0.05, 1.0), ylabel="test accuracy",
              title="kernel regression vs the trained network")
  axes[0].tick_params(axis="x", rotation=25)
  axes[1].bar(LAYERS, [moved[g] for g in LAYERS], color="tab:red")
  axes[1].set(ylabel="kernel distance 1 − cos(Θ_l(init), Θ_l(trained))",
              title="how far each layer's kernel moved")
  width = 0.38
  pos = np.arange(len(LAYERS))
  for shift, when, color in ((-width / 2, "init", "tab:blue"),
                             (width / 2, "trained", "tab:orange")):
    axes[2].bar(pos + shift, [results[when]["align"][g] for g in LAYERS],
                width, label=when, color=color)
  axes[2].set(xticks=pos, xticklabels=LAYERS,
              ylabel="centred alignment with the labels",
              title="per-layer kernel-target alignment")
  axes[2].legend(loc="lower right")
  fig.suptitle(f"Empirical NTK of a small CNN on digits ({N_TRAIN} train, "
               f"{N_TEST} test)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="digits_ntk.png")
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args()
  t0 = time.perf_counter()
  x_train, y_train, x_test, y_test = data()
  x_all = jnp.concatenate([x_train, x_test])
  params0 = init(jax.random.PRNGKey(0))
  params1, loss = train(params0, x_train, y_train, args.steps)
  net_acc = float(np.mean(np.argmax(cnn(params1, x_test), 1) == y_test))
  print(f"trained {args.steps} steps: loss {loss:.3f}, test accuracy "
        f"{net_acc:.3f} ({time.perf_counter() - t0:.1f} s)")

  results = {"net_acc": net_acc}
  layer_kernels = {}
  for when, params in (("init", params0), ("trained", params1)):
    t1 = time.perf_counter()
    per_layer, pntk = kernels(params, x_all)
    acc, align = evaluate(per_layer, pntk, y_train, y_test)
    results[when] = {"acc": acc, "align": align}
    layer_kernels[when] = per_layer
    print(f"{when:8s} NTK regression {acc['NTK']:.3f}, pNTK regression "
          f"{acc['pNTK']:.3f}; alignment per layer "
          + ", ".join(f"{g} {a:.3f}" for g, a in align.items())
          + f" ({time.perf_counter() - t1:.1f} s)")
  k0, k1 = layer_kernels["init"], layer_kernels["trained"]
  moved = {g: 1.0 - cosine(k0[g], k1[g]) for g in LAYERS}
  print("kernel distance (1 - cosine) per layer: "
        + ", ".join(f"{g} {m:.3f}" for g, m in moved.items())
        + "; norm ratio trained/init: "
        + ", ".join(f"{g} {np.linalg.norm(k1[g]) / np.linalg.norm(k0[g]):.1f}"
                    for g in LAYERS))
  plot(args.out, results, moved)
  print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
  main()
