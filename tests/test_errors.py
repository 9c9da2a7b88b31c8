"""Bad input gets an error that names the layer, what it expected and what it got."""
import numpy as np
import pytest

import nnscratch as ns

f32 = np.float32


def test_linear_wrong_feature_count_names_layer_expected_and_received():
    with pytest.raises(ValueError) as e:
        ns.Linear(2352, 1180)(np.zeros((4, 1152), f32))
    msg = str(e.value)
    assert "Linear(in_features=2352" in msg and "(B, in_features) = (*, 2352)" in msg and "(4, 1152)" in msg


def test_linear_wrong_rank():
    with pytest.raises(ValueError, match=r"Linear\(.*expected a 2-D input .* got a 4-D array of shape \(2, 3, 4, 4\)"):
        ns.Linear(48, 8)(np.zeros((2, 3, 4, 4), f32))


def test_conv2d_wrong_channel_count():
    with pytest.raises(ValueError) as e:
        ns.Conv2d(3, 32, 3, padding=1)(np.zeros((2, 1, 28, 28), f32))
    msg = str(e.value)
    assert msg.startswith("Conv2d(3, 32") and "(*, 3, *, *)" in msg and "(2, 1, 28, 28)" in msg


def test_conv2d_wrong_rank_for_channels_last_images():
    with pytest.raises(ValueError, match=r"Conv2d.*4-D input \(B, C, H, W\).*3-D array of shape \(28, 28, 3\)"):
        ns.Conv2d(3, 8, 3)(np.zeros((28, 28, 3), f32))


def test_conv2d_input_smaller_than_kernel():
    with pytest.raises(ValueError, match="smaller than the 5x5 kernel"):
        ns.Conv2d(1, 1, 5)(np.zeros((1, 1, 3, 3), f32))


def test_maxpool_wrong_rank_and_too_small():
    with pytest.raises(ValueError, match=r"MaxPool2d.*4-D input"):
        ns.MaxPool2d(2)(np.zeros((4, 4), f32))
    with pytest.raises(ValueError, match=r"MaxPool2d.*1x1 pixels is smaller than the 2x2 window"):
        ns.MaxPool2d(2)(np.zeros((1, 1, 1, 1), f32))


@pytest.mark.parametrize("layer", [ns.Linear(4, 2), ns.Conv2d(1, 1, 1), ns.MaxPool2d(1), ns.ReLU(), ns.Flatten()])
def test_integer_input_is_a_type_error_naming_the_layer(layer):
    x = np.zeros((1, 4), np.int64) if isinstance(layer, ns.Linear) else np.zeros((1, 1, 2, 2), np.uint8)
    with pytest.raises(TypeError, match=rf"{type(layer).__name__}.*floating-point input.*got dtype (int64|uint8)"):
        layer(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("layer", [ns.Linear(4, 2), ns.ReLU(), ns.Flatten()])
def test_non_finite_input_is_refused(layer, bad):
    x = np.ones((2, 4), f32)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}.*shape \(2, 4\) contains non-finite"):
        layer(x)


def test_non_array_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"Linear.*NumPy or CuPy array, got list"):
        ns.Linear(2, 2)([[1.0, 2.0]])


def test_dtype_mismatch_with_parameters_says_how_to_convert():
    with pytest.raises(TypeError, match=r"dtype float64 but the layer's parameters are float32.*astype"):
        ns.Linear(2, 2)(np.ones((1, 2)))


@pytest.mark.parametrize("layer", [ns.Linear(2, 2), ns.Conv2d(1, 1, 1), ns.MaxPool2d(2), ns.ReLU(), ns.Flatten(),
                                   ns.Sequential(ns.Linear(2, 2))])
def test_backward_before_forward_says_so(layer):
    with pytest.raises(RuntimeError, match=r"backward was called before forward"):
        layer.backward(np.ones((1, 2), f32))


@pytest.mark.parametrize("loss", [ns.CrossEntropyLoss(), ns.MSELoss(), ns.SoftmaxMSELoss()])
def test_loss_backward_before_forward_says_so(loss):
    with pytest.raises(RuntimeError, match=r"backward was called before forward"):
        loss.backward()


def test_backward_gradient_of_the_wrong_shape():
    layer = ns.Linear(3, 2)
    layer(np.ones((4, 3), f32))
    with pytest.raises(ValueError, match=r"Linear.*backward: expected a gradient of the output's shape \(4, 2\), got \(4, 3\)"):
        layer.backward(np.ones((4, 3), f32))


@pytest.mark.parametrize("loss", [ns.CrossEntropyLoss(), ns.SoftmaxMSELoss()])
def test_label_errors_of_the_classification_losses(loss):
    logits = np.zeros((3, 4), f32)
    with pytest.raises(TypeError, match="integer class labels"):
        loss(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"labels of shape \(B,\) = \(3,\).*got \(3, 1\)"):
        loss(logits, np.array([[0], [1], [2]]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\).*from 0 to 4"):
        loss(logits, np.array([0, 1, 4]))
    # non-finite logits are not refused but give a NaN loss, which training reports with epoch and batch
    assert np.isnan(loss(np.full((3, 4), np.nan, f32), np.array([0, 1, 2])))


def test_cross_entropy_weight_of_the_wrong_length():
    logits = np.zeros((3, 4), f32)
    with pytest.raises(ValueError, match="weight has 3 entries but the logits have 4 classes"):
        ns.CrossEntropyLoss(weight=np.ones(3))(logits, np.array([0, 1, 2]))


def test_mse_shape_mismatch_suggests_one_hot():
    with pytest.raises(ValueError, match=r"MSELoss.*shape \(3, 4\), got \(3,\).*one_hot"):
        ns.MSELoss()(np.zeros((3, 4), f32), np.zeros(3, f32))


def test_mse_given_integer_labels_suggests_one_hot_not_astype():
    # converting the labels' dtype would only lead to the shape error; one-hot is the fix
    with pytest.raises(TypeError, match=r"MSELoss.*class labels of shape \(3,\).*ns\.one_hot\(y, 4\)"):
        ns.MSELoss()(np.zeros((3, 4), f32), np.array([0, 1, 3]))


def test_a_loss_value_passed_to_model_backward_suggests_the_loss_gradient():
    model, loss_fn = ns.models.mlnn(), ns.CrossEntropyLoss()
    loss = loss_fn(model(np.zeros((2, 3, 28, 28), f32)), np.array([0, 1]))
    with pytest.raises(TypeError, match=r"got float; .*model\.backward\(loss_fn\.backward\(\)\)"):
        model.backward(loss)


@pytest.mark.parametrize("make", [
    lambda: ns.Linear(0, 3), lambda: ns.Linear(3, -1), lambda: ns.Linear(2.5, 3), lambda: ns.Conv2d(3, 8, 0),
    lambda: ns.Conv2d(3, 8, 3, padding=-1), lambda: ns.MaxPool2d(0), lambda: ns.models.cnn(image_size=7),
    lambda: ns.models.mlnn(hidden_size=0),
])
def test_bad_constructor_arguments_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_sequential_refuses_non_modules():
    with pytest.raises(TypeError, match="argument 1 is a function"):
        ns.Sequential(ns.ReLU(), lambda x: x)


def test_unknown_device_and_missing_gpu_are_clear():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        ns.Linear(2, 2).to("tpu")
    if not ns.gpu_available():
        with pytest.raises(RuntimeError, match="no GPU is available"):
            ns.Linear(2, 2).to("gpu")


def test_a_model_checks_its_input_once_and_names_the_first_layer():
    model = ns.Sequential(ns.Linear(4, 3), ns.ReLU(), ns.Linear(3, 2))
    x = np.ones((2, 4), f32)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"Linear\(in_features=4.*non-finite"):
        model(x)
    with pytest.raises(ValueError, match=r"Linear\(in_features=3.*\(2, 4\)"):      # shapes still checked inside
        ns.Sequential(ns.ReLU(), ns.Linear(3, 2))(np.ones((2, 4), f32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("training", [True, False])
def test_a_network_starting_with_flatten_and_linear_refuses_non_finite_input_anywhere(bad, training):
    # its Linear's bias pass checks the output instead of reading the input (the plan's
    # input_check_in_bias rule); the error is still the first layer's, for every position and sign
    model = ns.models.mlnn(hidden_size=16)
    model.train(training)
    rng = np.random.default_rng(0)
    assert ns.plan(model, rng.random((5, 3, 28, 28)).astype(f32)).plan.stand_in == 1
    for _ in range(20):
        x = rng.random((5, 3, 28, 28)).astype(f32)
        x[tuple(rng.integers(0, n) for n in x.shape)] = bad
        with pytest.raises(ValueError, match=r"Flatten\(\): the input of shape \(5, 3, 28, 28\) contains non-finite"):
            model(x)
    model(rng.random((5, 3, 28, 28)).astype(f32))      # a finite input passes
    first = ns.Sequential(ns.Linear(4, 3), ns.ReLU(), ns.Linear(3, 2))
    x = np.ones((2, 4), f32)
    x[1, 3] = -np.inf
    with pytest.raises(ValueError, match=r"Linear\(in_features=4.*non-finite"):
        first(x)


def test_overflow_inside_a_model_gives_a_nan_loss_not_an_exception():
    model = ns.Sequential(ns.Linear(2, 2), ns.ReLU(), ns.Linear(2, 2))
    model.parameters()[0].data[...] = np.inf
    with np.errstate(invalid="ignore"):                 # inf * 0 inside the product is the point here
        loss = ns.CrossEntropyLoss()(model(np.ones((1, 2), f32)), np.array([0]))
    assert np.isnan(loss)
