"""Assets, one module per pipeline stage."""
