"""nnscratch: a neural-network engine written from scratch on NumPy (CPU) and CuPy (GPU).

    import nnscratch as ns
    model = ns.models.cnn()                     # the paper's CNN
    loss_fn = ns.CrossEntropyLoss()
    opt = ns.Adam(model.parameters(), lr=1e-3)
    loss = loss_fn(model(x), y)                  # x: (B, 3, 28, 28) float32, y: (B,) int
    model.backward(loss_fn.backward()); opt.step(); opt.zero_grad()
"""
from . import data, distributed, fast, init, kernels, lr_scheduler, models
from .augment import Augment
from .backend import get_array_module, gpu_available, to_device, to_numpy
from .clip import clip_grad_norm_
from .errors import CheckpointError
from .execution import get_execution, set_execution
from .fast import plan
from .files import load_checkpoint, save_model
from .gradcheck import GradcheckError, GradcheckResult, gradcheck
from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Buffer, Conv2d, Dropout, Flatten, Linear,
                     MaxPool2d, Module, Parameter, ReLU, Residual, Sequential)
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss, SoftmaxMSELoss, one_hot
from .optim import SGD, Adam, AdamW, Optimizer
from .random import manual_seed
from .step import NonFiniteLoss, TrainStep

__version__ = "0.1.0"

__all__ = [
    "Module", "Parameter", "Buffer", "Sequential", "Linear", "Conv2d", "MaxPool2d", "ReLU", "Flatten",
    "BatchNorm1d", "BatchNorm2d", "Dropout", "AvgPool2d", "AdaptiveAvgPool2d", "Residual",
    "Loss", "CrossEntropyLoss", "BCEWithLogitsLoss", "MSELoss", "SoftmaxMSELoss", "one_hot", "Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler", "clip_grad_norm_", "Augment",
    "TrainStep", "NonFiniteLoss", "save_model", "load_checkpoint", "CheckpointError",
    "models", "init", "kernels", "data", "fast", "distributed", "plan", "set_execution", "get_execution", "manual_seed", "gradcheck", "GradcheckError", "GradcheckResult",
    "get_array_module", "gpu_available", "to_device", "to_numpy",
]
