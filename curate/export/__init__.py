"""`datamill export`: a finished run's corpus in the formats other trainers read (Megatron, nanotron, HF hub)."""
