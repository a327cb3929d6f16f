"""``python -m lineguard`` (and ``torchrun -m lineguard train ...``)."""

from .cli import main

main()
