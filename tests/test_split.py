"""A CPU batch split across cores (TrainStep's ``workers``): the same step as the whole batch's, up to
the order of the gradient's sums, for every loss, optimizer, odd batch size and part count; bad steps
change nothing; the thread pool and the BLAS setting behind it."""
import threading

import numpy as np
import pytest

import nnscratch as ns
from nnscratch import threads
from nnscratch.execution import last_plan
from nnscratch.fast.planner import SplitPlan, _ways


def _split(model) -> bool:
    """Whether the model's last forward pass was split."""
    return isinstance(last_plan(model), SplitPlan)
from nnscratch.kernels import cpu_kernels


def _pair(arch):
    """Two float64 models with the same weights (float64: the split changes only rounding)."""
    ns.manual_seed(0)
    a = getattr(ns.models, arch)().to(dtype=np.float64)
    b = getattr(ns.models, arch)().to(dtype=np.float64)
    b.load_state_dict(a.state_dict())
    return a, b


LOSSES = {
    "ce": (ns.CrossEntropyLoss, None),
    "softmax_mse": (ns.SoftmaxMSELoss, None),
    "mse_one_hot": (ns.MSELoss, lambda y: ns.one_hot(y, 8, dtype="float64")),
    "ce_class_weights": (lambda: ns.CrossEntropyLoss(weight=np.linspace(0.5, 2.0, 8)), None),
}
OPTIMIZERS = {"adam": lambda m: ns.Adam(m.parameters()),
              "sgd": lambda m: ns.SGD(m.parameters(), lr=0.01, momentum=0.9)}


def _run_both(arch, loss, opt, workers, sizes, seed=1):
    make_loss, target = LOSSES[loss]
    a, b = _pair(arch)
    whole = ns.TrainStep(a, make_loss(), OPTIMIZERS[opt](a), target=target, workers=1)
    split = ns.TrainStep(b, make_loss(), OPTIMIZERS[opt](b), target=target, workers=workers)
    rng = np.random.default_rng(seed)
    for B in sizes:
        x, y = rng.standard_normal((B, 3, 28, 28)), rng.integers(0, 8, B)
        assert split._ways(x) == min(workers, B) and whole._ways(x) == 1
        (la, ha), (lb, hb) = whole(x, y), split(x, y)
        assert lb == pytest.approx(la, rel=1e-10) and hb == ha
    # atol: Adam turns rounding on gradients near 0 (Winograd's transforms add and subtract, conv2 and
    # conv3) into parameter differences of up to ~2e-11
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(b.state_dict()[k], v, rtol=1e-9, atol=1e-10, err_msg=k)
    return whole, split


@pytest.mark.parametrize("arch", ["cnn", "mlnn"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_split_step_equals_the_whole_batch_step(arch, loss):
    _run_both(arch, loss, "adam", workers=2, sizes=(12, 7, 12))


@pytest.mark.parametrize("workers", [3, 5])
def test_uneven_parts_and_more_parts_than_cores(workers):
    # 13 images in 3 parts of 4, 4, 5 (or 5 parts); SGD's first step and momentum
    _run_both("cnn", "ce", "sgd", workers=workers, sizes=(13, 6, 13))


def test_more_workers_than_images_gives_one_image_per_part():
    _run_both("mlnn", "ce", "adam", workers=8, sizes=(3, 1))


def test_default_split_is_for_convolutional_networks_with_enough_images():
    cores = threads.blas_thread_count()
    cnn, mlnn = ns.models.cnn(), ns.models.mlnn()
    for model, B, expected in ((cnn, 64, None), (cnn, 31, 1), (mlnn, 64, 1)):
        step = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.Adam(model.parameters()))
        x = np.zeros((B, 3, 28, 28), np.float32)
        if expected is None:      # one part per OpenBLAS thread, at most one per 16 images
            expected = 1 if cores is None else min(cores, B // ns.TrainStep.MIN_PART)
        assert step._ways(x) == expected


def test_a_zero_class_weight_keeps_the_batch_whole():
    # a part holding only that class would have no mean
    loss = ns.CrossEntropyLoss(weight=np.array([0.0] + [1.0] * 7))
    step = ns.TrainStep(ns.models.cnn(), loss, ns.Adam(ns.models.cnn().parameters()), workers=2)
    assert step._ways(np.zeros((64, 3, 28, 28), np.float32)) == 1


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_positive_int(workers):
    model = ns.models.mlnn()
    with pytest.raises(ValueError, match="workers must be a positive int"):
        ns.TrainStep(model, ns.CrossEntropyLoss(), ns.Adam(model.parameters()), workers=workers)


def test_non_finite_loss_in_one_part_changes_nothing():
    model = ns.Sequential(ns.Flatten(), ns.Linear(3 * 28 * 28, 8))
    model[1].weight.data[...] = 1e38                          # finite weights, infinite logits for x != 0
    opt = ns.Adam(model.parameters())
    step = ns.TrainStep(model, ns.CrossEntropyLoss(), opt, workers=2)
    step(np.zeros((8, 3, 28, 28), np.float32), np.arange(8))    # a finite step: the optimizer's state exists
    before = {k: v.copy() for k, v in model.state_dict().items()}
    moments = [s["exp_avg"].copy() for s in opt.state]
    x = np.zeros((8, 3, 28, 28), np.float32)
    x[6] = 1                                                  # the second part's loss only is not finite
    with pytest.raises(ns.NonFiniteLoss, match="left as they were") as err:
        step(x, np.arange(8))
    assert not err.value.applied and not np.isfinite(err.value.loss)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    for s, m in zip(opt.state, moments):
        assert s["step"] == 1
        np.testing.assert_array_equal(s["exp_avg"], m)
    for p in model.parameters():                              # the finite part's gradient is not kept
        assert not p.grad.any()


def test_a_bad_input_in_one_part_raises_its_error_and_changes_nothing():
    model = ns.models.cnn()
    step = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.Adam(model.parameters()), workers=2)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    x = np.zeros((8, 3, 28, 28), np.float32)
    x[5, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        step(x, np.zeros(8, np.int64))
    y = np.zeros(8, np.int64)
    y[7] = 8
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 8\)"):
        step(np.zeros((8, 3, 28, 28), np.float32), y)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_replicas_follow_replaced_parameters():
    whole, split = _run_both("cnn", "ce", "adam", workers=2, sizes=(8,))
    replicas = list(split.model._replicas._copies)
    assert len(replicas) == 1
    for step in (whole, split):                       # new parameter arrays: the replicas are stale
        step.model.to(dtype=np.float32).to(dtype=np.float64)
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((8, 3, 28, 28)), rng.integers(0, 8, 8)
    (la, _), (lb, _) = whole(x, y), split(x, y)
    assert split.model._replicas._copies[0][0] is not replicas[0][0] and lb == pytest.approx(la, rel=1e-12)
    for (_, params) in split.model._replicas._copies:
        assert all(p.data is q.data for p, q in zip(params, split.model.parameters()))


def test_float32_split_training_stays_close_to_the_whole_batch():
    ns.manual_seed(0)
    a = ns.models.cnn()
    b = ns.models.cnn()
    b.load_state_dict(a.state_dict())
    whole = ns.TrainStep(a, ns.CrossEntropyLoss(), ns.Adam(a.parameters()), workers=1)
    split = ns.TrainStep(b, ns.CrossEntropyLoss(), ns.Adam(b.parameters()), workers=2)
    rng = np.random.default_rng(2)
    for _ in range(3):
        x, y = rng.standard_normal((64, 3, 28, 28)).astype(np.float32), rng.integers(0, 8, 64)
        (la, _), (lb, _) = whole(x, y), split(x, y)
        assert lb == pytest.approx(la, rel=1e-5)
    # Adam moves a parameter by about lr = 1e-3 a step whatever its gradient's size, so a gradient
    # within rounding of 0 may point either way in the two runs: such elements (about 1 in 100 with
    # the Winograd convolutions' float32 rounding) differ by up to 2 lr a step; all others agree
    for k, v in a.state_dict().items():
        got = b.state_dict()[k]
        close = np.isclose(got, v, rtol=1e-3, atol=1e-5)
        assert close.mean() > 0.97, (k, close.mean())
        np.testing.assert_array_less(np.abs(got - v), 3 * 2e-3 + 1e-6, err_msg=k)


# ---- threads.py ----------------------------------------------------------------------------------

def test_run_parallel_returns_in_order_and_runs_on_other_threads():
    seen = {}

    def task(k):
        def run():
            seen[k] = threading.get_ident()
            return k * k
        return run
    assert threads.run_parallel([task(k) for k in range(4)]) == [0, 1, 4, 9]
    main = threading.get_ident()
    assert seen[0] == main and all(seen[k] != main for k in (1, 2, 3))


def test_run_parallel_raises_the_first_error_after_every_task_finished():
    done = []

    def slow():
        import time
        time.sleep(0.05)
        done.append("slow")

    def bad(msg):
        def run():
            raise RuntimeError(msg)
        return run
    with pytest.raises(RuntimeError, match="first"):
        threads.run_parallel([bad("first"), slow, bad("second")])
    assert done == ["slow"]


def test_without_a_reachable_openblas_nothing_is_split_by_default_and_workers_still_work(monkeypatch):
    monkeypatch.setattr(threads, "_openblas", lambda: None)
    assert threads.blas_thread_count() is None
    with threads.blas_threads(1):
        pass
    model = ns.models.cnn()
    step = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.Adam(model.parameters()))
    assert step.parts_for(64) == 1
    _run_both("cnn", "ce", "adam", workers=2, sizes=(8,))


def test_tasks_run_single_threaded_and_the_setting_is_restored():
    before = threads.blas_thread_count()
    inside = threads.run_parallel([threads.blas_thread_count, threads.blas_thread_count])
    assert threads.blas_thread_count() == before
    if before is not None:
        assert inside == [1, 1]
    if cpu_kernels() == "numba":
        from nnscratch.kernels import cpu
        flags = threads.run_parallel([lambda: cpu._serial_only[0]] * 2)
        assert flags == [True, True] and cpu._serial_only[0] is False


# ---- the plain loop: Sequential splits a CPU training batch itself ----------------------------------

def _plain_pass(model, x, y, need_input_grad=True):
    loss_fn = ns.CrossEntropyLoss()
    loss = loss_fn(model(x), y)
    return loss, model.backward(loss_fn.backward(), need_input_grad=need_input_grad)


@pytest.mark.parametrize("arch", ["cnn", "mlnn"])
@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("B", [13, 8])
def test_plain_loop_split_equals_the_whole_batch(arch, workers, B):
    a, b = _pair(arch)
    a.workers, b.workers = 1, workers
    rng = np.random.default_rng(B)
    x, y = rng.standard_normal((B, 3, 28, 28)), rng.integers(0, 8, B)
    for _ in range(2):                                # twice: the gradients accumulate (+=) in both
        la, dxa = _plain_pass(a, x, y)
        lb, dxb = _plain_pass(b, x, y)
        assert _split(b) and not _split(a)
        assert lb == pytest.approx(la, rel=1e-12)
        assert dxb.shape == x.shape
        np.testing.assert_allclose(dxb, dxa, rtol=1e-9, atol=1e-13)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(q.grad, p.grad, rtol=1e-9, atol=1e-13, err_msg=name)
    for _, params in b._replicas._copies:             # the replicas' gradients went to the model
        assert all(p._zero_pending for p in params)
    assert _plain_pass(b, x, y, need_input_grad=False)[1] is None


def test_plain_loop_default_split_is_for_convolutional_networks():
    cores = threads.blas_thread_count()
    x = np.zeros((64, 3, 28, 28), np.float32)
    cnn, mlnn = ns.models.cnn(), ns.models.mlnn()
    expected = 1 if cores is None else min(cores, 64 // ns.TrainStep.MIN_PART)
    assert _ways(cnn, x) == expected and _ways(mlnn, x) == 1
    assert _ways(cnn, x[:16]) == 1                     # too few images for two parts of MIN_PART
    cnn.eval()
    assert _ways(cnn, x) == expected                   # inference too (each image alone: the same bits)
    cnn.train()
    cnn.workers = 1
    assert _ways(cnn, x) == 1


def test_plain_loop_split_checks_the_whole_batch():
    model = ns.models.cnn()
    model.workers = 2
    x = np.zeros((8, 3, 32, 32), np.float32)          # wrong size: the error names the whole batch (not 4 images)
    with pytest.raises(ValueError, match=r"expected input of shape .*, got \(8, 2048\)"):
        model(x)
    x = np.zeros((8, 3, 28, 28), np.float32)
    x[6, 1, 2, 3] = np.nan                            # in the second part
    with pytest.raises(ValueError, match=r"of shape \(8, 3, 28, 28\) contains non-finite"):
        model(x)
    out = model(np.zeros((8, 3, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"expected a gradient of the output's shape \(8, 8\), got \(4, 8\)"):
        model.backward(np.zeros((4, 8), np.float32))
    model.backward(np.ones_like(out))
    bad = ns.models.cnn()
    bad.workers = 0
    with pytest.raises(ValueError, match="workers must be a positive int"):
        bad(np.zeros((8, 3, 28, 28), np.float32))


def test_a_split_model_copies_and_pickles_without_its_replicas():
    import copy
    import pickle
    model = ns.models.cnn()
    model.workers = 2
    x = np.random.default_rng(0).standard_normal((8, 3, 28, 28)).astype(np.float32)
    model(x)
    assert model._replicas._copies and _split(model)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert not twin.__dict__.get("_replicas", None) or not twin._replicas._copies
        assert last_plan(twin) is None
        np.testing.assert_array_equal(twin(x), model(x))


def test_nested_sequential_and_trainstep_whole_do_not_split_again():
    ns.manual_seed(0)
    inner = ns.models.cnn()
    outer = ns.Sequential(inner)
    outer.workers = 2
    inner.workers = 2
    x = np.random.default_rng(1).standard_normal((8, 3, 28, 28)).astype(np.float32)
    out = outer(x)                                    # the outer splits; the inner, inside a part, does not
    assert _split(outer) and not _split(inner)
    outer.backward(np.ones_like(out))
    model = ns.models.cnn()
    model.workers = 2
    step = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.Adam(model.parameters()), workers=1)
    step(x, np.zeros(8, np.int64))                    # workers=1: one model, the whole batch
    assert "_replicas" not in model.__dict__


def test_a_layer_with_a_wrapped_forward_keeps_the_batch_whole():
    # a wrapper set on a layer instance (a timer, a hook) would be copied into the replicas by
    # reference and run the original layer on every part: such a model runs whole, and right
    ns.manual_seed(0)
    model = ns.models.cnn()
    calls = []
    inner = model[3].forward

    def wrapped(x):
        calls.append(x.shape[0])
        return inner(x)
    model[3].forward = wrapped
    model.workers = 2
    x = np.random.default_rng(0).standard_normal((8, 3, 28, 28)).astype(np.float32)
    assert _ways(model, x) == 1
    step = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.Adam(model.parameters()), workers=2)
    assert step.parts_for(8) == 1
    model(x)
    step(x, np.zeros(8, np.int64))
    assert calls == [8, 8]


def test_a_split_step_names_the_label_count_the_user_passed():
    model = ns.models.cnn()
    step = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.Adam(model.parameters()), workers=2)
    with pytest.raises(ValueError, match=r"labels of shape \(B,\) = \(64,\) for a batch of 64 images, got shape \(60,\)"):
        step(np.zeros((64, 3, 28, 28), np.float32), np.zeros(60, np.int64))


def test_split_inference_uses_the_models_running_statistics_after_whole_training_and_loading():
    """The replicas share the model's buffers: a ResNet trained whole (dropout keeps the batch whole),
    or given another state, computes the same split as whole (a replica with buffers of its own ran
    part of each batch with the running statistics of an earlier pass)."""
    rng = np.random.default_rng(0)
    ns.manual_seed(0)
    model = ns.models.resnet(widths=(16, 16), blocks=(1, 1), dropout=0.2)
    x = rng.standard_normal((64, 3, 12, 12)).astype(np.float32)

    def split_and_whole():
        model.eval()
        model.workers = 2
        split = model(x)
        model.workers = 1
        whole = model(x)
        model.train()
        model.workers = None
        return split, whole
    split_and_whole()                                   # the replicas are made here
    step = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.AdamW(model.parameters()))
    for _ in range(2):
        step(x, rng.integers(0, 8, 64))                 # trained whole: dropout
    split, whole = split_and_whole()
    np.testing.assert_array_equal(split, whole)
    state = model.state_dict()
    for name in state:
        if name.endswith(("running_mean", "running_var")):
            state[name] = state[name] * 1.5 + 0.25
    model.load_state_dict(state)
    split, whole = split_and_whole()
    np.testing.assert_array_equal(split, whole)


def test_split_training_moves_the_running_statistics_once_a_step():
    """The parts share the running statistics: only the first moves them, so a split step moves them
    as the whole batch's step does (momentum 0.1 once, not twice)."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((64, 3, 12, 12)).astype(np.float32), rng.integers(0, 8, 64)
    stats = []
    for workers in (1, 2):
        ns.manual_seed(0)
        model = ns.models.resnet(widths=(16, 16), blocks=(1, 1))
        ns.TrainStep(model, ns.CrossEntropyLoss(), ns.AdamW(model.parameters()), workers=workers)(x, y)
        stats.append({k: v for k, v in model.state_dict().items() if "running" in k or "tracked" in k})
    assert stats[0]["1.num_batches_tracked"] == stats[1]["1.num_batches_tracked"] == 1
    for k in stats[0]:
        np.testing.assert_allclose(stats[1][k], stats[0][k], rtol=1e-5, atol=1e-6, err_msg=k)
