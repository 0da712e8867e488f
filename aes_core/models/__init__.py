"""Backbones (local Hugging Face folders), pooling heads (registry) and the essay regressor."""
