"""Factories a team would ship: a model, datasets, a loss and an optimizer."""
