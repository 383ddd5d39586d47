"""Interop with the Hugging Face layout of the released LLaDA checkpoints."""
