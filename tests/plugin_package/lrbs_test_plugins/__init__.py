"""Factories a team would ship: a model, datasets, a loss and an optimizer."""

from os import system  # noqa: F401  # a re-export: allowing this package must not allow os.system
