"""Training: the network and one fold's recipe.

- ``network``: the 3D U-Net, saving and loading weights (tensors only).
- ``train``: one fold's training (schedule, loss, checkpoints, resume).
- ``augment``, ``sampling``: augmentation and patch sampling.
- ``validation``: the fold's validation Dice between epochs.
- ``multidomain``: several datasets in one network (marginal loss, balanced sampling, regularisers).
- ``fold``: the per-fold steps the rules call (train a fold, predict with the right models).
"""
