"""Python-backend model code copied into the generated Triton repository (``1/model.py``)."""
