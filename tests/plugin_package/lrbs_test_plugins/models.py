import math

from torch import nn


def tiny_mlp(input_shape, num_classes, hidden=16):
    """Gets input_shape and num_classes from the dataset because it names them."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


def not_a_model():
    return "surprise"


class Stuck(nn.Module):
    """A model whose first forward pass never returns: a job that never finishes a step."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.head = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        import time

        time.sleep(3600)
        return self.head(x.flatten(1))


def stuck(input_shape, num_classes):
    return Stuck(input_shape, num_classes)


def hog(input_shape, num_classes, width=8192, depth=3):
    """A plain MLP that lrbs cannot size before it runs (it is a plugin): 8192² × 4 B is 256 MiB a layer."""
    layers = [nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, num_classes))
