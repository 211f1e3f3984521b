"""Training: data sets of patches, losses, and the loops that fit each network."""
