"""The closed loop (curate → synth → select → train → eval) and the ablation over it."""
