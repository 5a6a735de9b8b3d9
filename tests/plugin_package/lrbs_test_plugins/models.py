import math

from torch import nn


def tiny_mlp(input_shape, num_classes, hidden=16):
    """Gets input_shape and num_classes from the dataset because it names them."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


def not_a_model():
    return "surprise"
