"""llada-ds: training system for LLaDA-style masked diffusion language models."""

__version__ = "0.1.0"
