"""Planning: what the data decides before training.

- ``plan``: fingerprint of the training cases and ``plans.json`` (spacing, normalisation, patch, network).
- ``topology``: the U-Net's stages, patch fitting, FLOPs and memory estimate (torch-free).
- ``split``: seeded k-fold splits.
- ``preprocess``: a case in the canonical orientation, normalised and resampled, stored for training.
"""
