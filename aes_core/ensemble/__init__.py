"""Ensembling: Nelder-Mead blend weights, QWK thresholds, the GBDT member."""
