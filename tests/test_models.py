"""The paper's two networks: parameter counts and output shapes."""
import numpy as np
import pytest

import nnscratch as ns


def test_paper_cnn_has_422344_parameters_and_8_logits():
    model = ns.models.cnn()
    assert model.num_parameters() == 422_344
    assert model(np.zeros((5, 3, 28, 28), np.float32)).shape == (5, 8)


def test_cnn_feature_maps_shrink_28_14_7_3():
    model = ns.models.cnn()
    x = np.zeros((1, 3, 28, 28), np.float32)
    shapes = []
    for layer in model:
        x = layer(x)
        if isinstance(layer, ns.MaxPool2d):
            shapes.append(x.shape)
    assert shapes == [(1, 32, 14, 14), (1, 64, 7, 7), (1, 128, 3, 3)]


def test_paper_mlnn_has_1180_hidden_units():
    model = ns.models.mlnn()
    assert [p.shape for p in model.parameters()] == [(1180, 2352), (1180,), (8, 1180), (8,)]
    assert model.num_parameters() == 2352 * 1180 + 1180 + 1180 * 8 + 8
    assert model(np.zeros((2, 3, 28, 28), np.float32)).shape == (2, 8)


@pytest.mark.parametrize("channels,size,classes", [(1, 28, 2), (1, 64, 11), (3, 64, 7), (3, 8, 4)])
def test_models_fit_other_medmnist_sets(channels, size, classes):
    x = np.zeros((2, channels, size, size), np.float32)
    assert ns.models.cnn(channels, size, classes)(x).shape == (2, classes)
    mlnn = ns.models.mlnn(in_channels=channels, image_size=size, num_classes=classes)
    assert mlnn(x).shape == (2, classes)
    assert mlnn.parameters()[0].shape == ((channels * size * size + classes) // 2, channels * size * size)


def test_mlnn_hidden_layers_and_size():
    model = ns.models.mlnn(hidden_size=64, hidden_layers=3)
    linears = [m for m in model if isinstance(m, ns.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2352, 64), (64, 64), (64, 64), (64, 8)]
