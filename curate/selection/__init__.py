"""Data selection: rank rows by a score and keep a budget (DSIR, budgets, mixtures, learnability)."""
