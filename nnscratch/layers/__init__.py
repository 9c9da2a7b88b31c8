"""The layer library: every layer is a ``Module`` with ``forward`` and ``backward``, in the textbook's terms."""
from .activation import Flatten, ReLU
from .conv import Conv2d
from .linear import Linear
from .module import Module, Parameter
from .pool import MaxPool2d
from .sequential import Sequential

__all__ = ["Module", "Parameter", "Sequential", "Linear", "Conv2d", "MaxPool2d", "ReLU", "Flatten"]
