"""TrainStep: the plain five-line step on the CPU; on a GPU, recorded CUDA graphs that give the same
numbers as the op-by-op steps, across shapes, optimizers, losses and bad batches."""
import numpy as np
import pytest

import nnscratch as ns
from nnscratch.training import TrainConfig, run
from nnscratch.data import load

from conftest import requires_gpu
from synthetic import write_medmnist


def _pair(arch="cnn", dtype=np.float32):
    """Two models with the same weights."""
    ns.manual_seed(0)
    a = getattr(ns.models, arch)().to(dtype=dtype)
    b = getattr(ns.models, arch)().to(dtype=dtype)
    b.load_state_dict(a.state_dict())
    return a, b


def _batches(n, sizes, rng, dtype=np.float32, classes=8):
    return [(rng.standard_normal((b, 3, 28, 28)).astype(dtype), rng.integers(0, classes, b))
            for b in (sizes * n)[:n]]


def test_cpu_step_is_the_five_lines_bit_for_bit():
    a, b = _pair()
    opt_a, loss_a = ns.Adam(a.parameters()), ns.CrossEntropyLoss()
    step = ns.TrainStep(b, ns.CrossEntropyLoss(), ns.Adam(b.parameters()))
    for x, y in _batches(3, [8, 5], np.random.default_rng(1)):
        logits = a(x)
        expected = loss_a(logits, y)
        a.backward(loss_a.backward(), need_input_grad=False)
        opt_a.step()
        opt_a.zero_grad()
        loss, hits = step(x, y)
        assert loss == expected and hits == int((logits.argmax(1) == y).sum())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    assert step.replays == 0


def test_non_finite_loss_on_the_cpu_raises_and_changes_nothing():
    model = ns.Sequential(ns.Flatten(), ns.Linear(3 * 28 * 28, 8))
    model[1].weight.data[...] = 1e38                           # finite weights, infinite logits
    before = {k: v.copy() for k, v in model.state_dict().items()}
    step = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ns.NonFiniteLoss, match="left as they were") as err:
        step(np.ones((2, 3, 28, 28), np.float32), np.array([0, 1]))
    assert not err.value.applied and not np.isfinite(err.value.loss)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_optimizer_step_is_prepare_then_apply():
    a, b = _pair("mlnn")
    x, y = _batches(1, [4], np.random.default_rng(2))[0]
    for model in (a, b):
        loss_fn = ns.CrossEntropyLoss()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
    opt_a, opt_b = ns.Adam(a.parameters()), ns.Adam(b.parameters())
    opt_a.step()
    opt_b._prepare()
    assert [s["step"] for s in opt_b.state] == [1] * 4
    opt_b._apply()
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)


# ---- on a GPU ------------------------------------------------------------------------------------

def _compare_graph_with_eager(arch, make_opt, make_loss, target=None, sizes=(16, 16, 16, 5), n=9):
    import cupy as cp
    a, b = _pair(arch)
    a.to("gpu")
    b.to("gpu")
    eager = ns.TrainStep(a, make_loss(), make_opt(a), target=target, graph=False)
    graph = ns.TrainStep(b, make_loss(), make_opt(b), target=target)
    for x, y in _batches(n, list(sizes), np.random.default_rng(3)):
        x, y = cp.asarray(x), cp.asarray(y)
        (la, ha), (lb, hb) = eager(x, y), graph(x, y)
        assert lb == pytest.approx(la, rel=1e-5) and hb == ha
    assert graph.replays > 0 and eager.replays == 0
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(b.state_dict()[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    for sa, sb in zip(eager.optimizer.state, graph.optimizer.state):
        assert sa.get("step") == sb.get("step")
    # evaluation on the default stream after replays sees the trained weights
    x = cp.asarray(np.random.default_rng(4).standard_normal((7, 3, 28, 28)).astype(np.float32))
    np.testing.assert_allclose(cp.asnumpy(b(x)), cp.asnumpy(a(x)), rtol=1e-4, atol=1e-5)
    return graph


@requires_gpu
def test_graph_replays_equal_eager_steps_cnn_adam_cross_entropy():
    graph = _compare_graph_with_eager("cnn", lambda m: ns.Adam(m.parameters()), ns.CrossEntropyLoss)
    assert len(graph._graphs) == 2                       # the batch of 16 and the last batch of 5


@requires_gpu
def test_graph_replays_equal_eager_steps_mlnn_sgd_softmax_mse():
    _compare_graph_with_eager("mlnn", lambda m: ns.SGD(m.parameters(), lr=0.01, momentum=0.9), ns.SoftmaxMSELoss)


@requires_gpu
def test_graph_replays_equal_eager_steps_with_mse_on_one_hot_targets():
    _compare_graph_with_eager("mlnn", lambda m: ns.Adam(m.parameters()), ns.MSELoss,
                              target=lambda y: ns.one_hot(y, 8), sizes=(12,), n=5)


@requires_gpu
def test_a_bad_batch_is_refused_before_the_replay_and_changes_nothing():
    import cupy as cp
    model = ns.models.mlnn().to("gpu")
    step = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.Adam(model.parameters()))
    rng = np.random.default_rng(5)
    for x, y in _batches(4, [8], rng):
        step(cp.asarray(x), cp.asarray(y))
    assert step.replays >= 1
    before = {k: v.copy() for k, v in model.state_dict().items()}
    steps = [s["step"] for s in step.optimizer.state]
    x, y = _batches(1, [8], rng)[0]
    x[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        step(cp.asarray(x), cp.asarray(y))
    x[3, 0, 0, 0] = 0
    y[2] = 9
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 8\)"):
        step(cp.asarray(x), cp.asarray(y))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert [s["step"] for s in step.optimizer.state] == steps


@requires_gpu
def test_training_on_the_gpu_with_and_without_graphs_agrees(tmp_path):
    write_medmnist(tmp_path / "tinymnist.npz", classes=3, size=28, channels=3, n=(150, 40, 40))
    ds = load("tinymnist", str(tmp_path))
    histories = []
    for graphs in (True, False):
        cfg = TrainConfig(arch="cnn", dataset="tinymnist", epochs=3, batch_size=32, device="gpu",
                          cuda_graphs=graphs, out=str(tmp_path / f"run-{graphs}"))
        histories.append(run(cfg, ds, progress=False, log=lambda *a: None, figures=False).history)
    for g, e in zip(*histories):
        assert g["train_loss"] == pytest.approx(e["train_loss"], rel=1e-4)
        assert g["val_acc"] == pytest.approx(e["val_acc"], abs=1 / 40)
