"""Generation backends behind the `Generator` interface: transformers (default), vllm and openai."""
