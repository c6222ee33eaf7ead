"""Deployment artifacts and host tools (python -m deploy.numa_policy)."""
