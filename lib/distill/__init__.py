"""distill-study: knowledge distillation of causal LMs, as a thin library behind the notebooks."""
__version__ = "0.1.0"
