"""Data layer: SFT formats, tokenization with loss masks, budgets, grain pipelines."""
