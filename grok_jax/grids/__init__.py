"""The grids shipped with grok_jax: one config file each, with ``get_config(scale)``."""
