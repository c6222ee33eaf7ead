"""Triton Python-backend adapter helpers (model_repository/moe_llm/1/model.py uses them).

Only modules that run inside the Triton stub import triton_python_backend_utils; the engine never does.
"""
