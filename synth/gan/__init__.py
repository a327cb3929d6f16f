"""The defect GAN: a compact StyleGAN2-style, class-conditional generator of (image, mask) patches.

``config`` (settings, presets), ``networks`` (G and D), ``augment`` (DiffAugment ops with an ADA-steered
probability), ``train`` (``fit``: data -> GAN_DIR), ``source`` (``GanSource``: GAN_DIR -> patches), ``cli``.
"""
