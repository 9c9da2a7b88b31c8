"""The layer library: every layer is a ``Module`` with ``forward`` and ``backward``, in the textbook's terms."""
from .activation import Flatten, ReLU
from .avgpool import AdaptiveAvgPool2d, AvgPool2d
from .conv import Conv2d
from .dropout import Dropout
from .linear import Linear
from .module import Buffer, Module, Parameter
from .norm import BatchNorm1d, BatchNorm2d
from .pool import MaxPool2d
from .residual import Residual
from .sequential import Sequential

__all__ = ["Module", "Parameter", "Buffer", "Sequential", "Linear", "Conv2d", "MaxPool2d", "ReLU", "Flatten",
           "BatchNorm1d", "BatchNorm2d", "Dropout", "AvgPool2d", "AdaptiveAvgPool2d", "Residual"]
