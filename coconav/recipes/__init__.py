"""Recipes: the programs behind the CLI, each readable top to bottom (train_coconut, train_navigator,
evaluate_checkpoint, demo). The library never imports them; only coconav.cli does."""
