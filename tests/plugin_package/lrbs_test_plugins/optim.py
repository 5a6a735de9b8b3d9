import torch


def nesterov(params, lr, momentum=0.9):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True)
