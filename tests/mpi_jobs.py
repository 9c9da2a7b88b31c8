"""Jobs that tests/test_distributed.py runs under ``mpiexec -n 2 python tests/mpi_jobs.py JOB ...``
(and, for ``steps``, in the test's own process as the single-process reference).

    steps OUT                   four TrainSteps of three networks on one global batch stream; rank 0
                                writes OUT/params.npz and whether every rank ended with the same bits
    train OUT DATA_DIR FLAGS..  python -m nnscratch.train, every real file write recorded: each rank
                                prints "WROTE <rank> <json list of paths>"
    fault raise|kill            rank 1 raises (or is killed) in the middle of a run of collectives
    evaluate OUT FILE           a test split streamed from disk, predicted and evaluated; rank 0 writes
                                OUT/evaluated.npz with the rows each rank read from the file
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nnscratch as ns  # noqa: E402
from nnscratch import distributed  # noqa: E402

NETWORKS = ("cnn", "resnet", "mlnn", "dropout")


def network(name):
    """(model, optimizer) of a network with its optimizer, the same on every rank (seeded)."""
    ns.manual_seed(0)
    if name == "cnn":
        model = ns.models.cnn()
        return model, ns.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if name == "resnet":                   # batch norm pooled across the ranks
        model = ns.models.resnet(widths=(8, 16), blocks=(1, 1))
        return model, ns.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    if name == "dropout":                  # the masks one process draws for the whole batch
        model = ns.Sequential(ns.Flatten(), ns.Linear(3 * 28 * 28, 64), ns.ReLU(), ns.Dropout(0.5), ns.Linear(64, 8))
        return model, ns.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model = ns.models.mlnn(hidden_size=64)
    return model, ns.SGD(model.parameters(), lr=0.05)


def steps(name, batch=37, count=4):
    """The parameters (a state dict) after ``count`` TrainSteps on seeded global batches of ``batch``
    images (37: shares of 18 and 19), with label smoothing: in one process, or as a rank of a job."""
    model, opt = network(name)
    step = ns.TrainStep(model, ns.CrossEntropyLoss(label_smoothing=0.1), opt)
    rng = np.random.default_rng(5)
    for _ in range(count):
        x = rng.standard_normal((batch, 3, 28, 28)).astype(np.float32)
        y = rng.integers(0, 8, batch)
        loss, correct = step(x, y)
    state = model.state_dict()
    state["loss"], state["correct"] = np.float64(loss), np.int64(correct)
    return state


def job_steps(out):
    saved, same = {}, True
    for name in NETWORKS:
        state = steps(name)
        for k, v in state.items():
            every = distributed._world().allgather(v)          # every rank's arrays, on every rank
            same = same and all(np.array_equal(every[0], other) for other in every[1:])
            saved[f"{name}/{k}"] = v
    if distributed.is_main():
        np.savez(Path(out) / "params.npz", world=distributed.world_size(), ranks_equal=same, **saved)


def job_train(out, data_dir, *flags):
    """Every file this rank puts in place (each written file is renamed into place: files.atomic_path)
    and the run folder it creates are recorded."""
    from nnscratch import runfolder, train
    wrote = []
    real_replace, real_create = os.replace, runfolder.create

    def replace(src, dst, *args, **kwargs):
        wrote.append(str(dst))
        return real_replace(src, dst, *args, **kwargs)

    def create(folder, *args, **kwargs):
        wrote.append(str(folder))
        return real_create(folder, *args, **kwargs)
    os.replace, runfolder.create = replace, create
    code = train.main(["--data-dir", data_dir, "--out", out, *flags])
    # (mpiexec may join the ranks' output mid-line: the test finds the record anywhere)
    print(f"\nWROTE {distributed.rank()} {json.dumps(wrote)}", flush=True)
    return code


def evaluate_streamed(path, budget=1000):
    """(probabilities, loss, accuracy, rows read from the file) of a seeded small ResNet on the test
    split of a MedMNIST-format file loaded within ``budget`` bytes (streamed from disk when it exceeds
    them), in eval batches of 8: in one process, or as a rank of a job."""
    from nnscratch import data, stream, training
    read, real = [0], stream._Map.rows

    def rows(self, index):
        out = real(self, index)
        read[0] += len(out)
        return out
    stream._Map.rows = rows
    try:
        ds = data.load_file(path, memory_budget=budget, log=lambda _: None, progress=False)
        test = ds.split("test")
        ns.manual_seed(0)
        model = ns.models.resnet(in_channels=ds.channels, image_size=ds.image_size, num_classes=ds.num_classes,
                                 widths=(4, 8), blocks=(1, 1))
        model.eval()
        labels = test.labels.reshape(-1)
        probs = training.predict(model, test.images, batch_size=8)
        loss, acc = training.evaluate_split(model, test.images, labels, ns.CrossEntropyLoss(), lambda y: y,
                                            batch_size=8)
    finally:
        stream._Map.rows = real
    return probs, loss, acc, read[0]


def job_evaluate(out, path):
    probs, loss, acc, read = evaluate_streamed(path)
    every = distributed._world().allgather(read)
    if distributed.is_main():
        np.savez(Path(out) / "evaluated.npz", probs=probs, loss=loss, acc=acc, read=np.array(every))


def job_fault(mode):
    from nnscratch import cli

    def body():
        for i in range(300):
            distributed.sum_in_rank_order([1.0])
            if i == 20 and distributed.rank() == 1:
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("a fault injected by the test")
            time.sleep(0.02)
    return cli.run_cli(body)


if __name__ == "__main__":
    distributed.init()
    job, *args = sys.argv[1:]
    if job == "steps":
        job_steps(*args)
    elif job == "train":
        sys.exit(job_train(*args))
    elif job == "fault":
        sys.exit(job_fault(*args))
    elif job == "evaluate":
        job_evaluate(*args)
