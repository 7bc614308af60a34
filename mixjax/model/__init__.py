"""Flax Llama-family decoder and Hugging Face checkpoint conversion."""
