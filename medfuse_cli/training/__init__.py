"""Training: fitting LWNet (SPI) and LYWNet (the authors' autoencoder) to training pairs.

One job per module:

- ``config``: what defines what a run learns, one frozen config per trainer (no defaults);
- ``recipes``: named configs, the one place for training defaults;
- ``run``: the run skeleton both trainers use (folder, resume, time budget, provenance, saves);
- ``events``: what a run tells its listener (the CLI draws it);
- ``state``: the resumable state file; ``provenance``: the run's record in its checkpoints;
- ``patches``: training pairs and patches; ``losses``: differentiable scores and losses;
- ``labels``: SPI's candidate labels, scores and label set; ``spi``: the SPI loop (LWNet);
- ``lywnet_trainer``: LYWNet's autoencoder training; ``trainers``: which trainer trains which
  ``--model``;
- ``distributed``: training in several processes under torchrun (shares of each batch, rank 0
  writes, failures agreed on).
"""
