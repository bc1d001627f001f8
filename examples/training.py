"""Full-batch Adam, written out, for the examples (optax is not a
dependency of autontk)."""

import jax
import jax.numpy as jnp


def adam(loss, params, steps, lr=1e-3, every=None):
  """Minimises ``loss(params)`` by ``steps`` full-batch Adam steps.

  Returns the final parameters and ``[(step, params)]`` every ``every``
  steps (step 0 included; only step 0 when ``every`` is ``None``).
  """
  @jax.jit
  def step(p, m, v, t):
    g = jax.grad(loss)(p)
    m = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
    v = jax.tree.map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)

    def update(w, a, b):
      return w - lr * (a / (1 - 0.9 ** t)) / (
          jnp.sqrt(b / (1 - 0.999 ** t)) + 1e-8)

    return jax.tree.map(update, p, m, v), m, v

  zeros = jax.tree.map(jnp.zeros_like, params)
  m, v = zeros, zeros
  saved = [(0, params)]
  for t in range(1, steps + 1):
    params, m, v = step(params, m, v, t)
    if every and t % every == 0:
      saved.append((t, params))
  return params, saved
