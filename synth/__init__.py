"""Defect synthesis: patch sources (the GAN, copy-paste, Perlin), compositing and generated sets; the
procedural line simulator is :mod:`lineguard.sim`."""
