"""Clients for the moe_llm model on Triton (python -m client.generate)."""
