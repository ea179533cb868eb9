"""megagpt: GPT-1 / GPT-2 family language models trained with DeepSpeed (see DESIGN in README)."""
