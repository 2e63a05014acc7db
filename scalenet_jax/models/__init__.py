"""Models: DeiT/ViT, Swin and a Llama-style decoder LM over one scanned, shareable block stack (stack.py)."""

from scalenet_jax.models.registry import arch_kwargs, create_model, family_of, list_models, model_config
from scalenet_jax.models.stack import StackLayout
