"""Fine-tuning: datasets and loaders, the Lightning module, and the two-stage fold x head recipe."""
