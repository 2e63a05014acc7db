"""scalenet_jax: JAX/Flax ScaleNet (grow + search)."""
