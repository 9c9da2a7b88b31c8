"""MedMNIST's metadata for its 2-D sets at 28 x 28, carried as facts (the ``medmnist`` package
itself needs PyTorch, so it is not a dependency). Source: MedMNIST v3, ``medmnist/info.py``;
the files live on Zenodo record 10519652 and their MD5 sums are those of the 28 x 28 files."""
from __future__ import annotations

from dataclasses import dataclass, replace

ZENODO = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    md5: str
    labels: tuple          # class names, index = label
    channels: int
    task: str              # "multi-class", "binary-class", "ordinal-regression", "multi-label, binary-class"

    @property
    def url(self) -> str:
        return ZENODO.format(name=self.name)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
           "lung-left", "lung-right", "pancreas", "spleen")

DATASETS = {d.name: d for d in [
    DatasetInfo("bloodmnist", "7053d0359d879ad8a5505303e11de1dc",
                ("basophil", "eosinophil", "erythroblast",
                 "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
                 "lymphocyte", "monocyte", "neutrophil", "platelet"), 3, "multi-class"),
    DatasetInfo("pathmnist", "a8b06965200029087d5bd730944a56c1",
                ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                 "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
                3, "multi-class"),
    DatasetInfo("chestmnist", "02c8a6516a18b556561a56cbdd36c4a8",
                ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
                 "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"),
                1, "multi-label, binary-class"),
    DatasetInfo("dermamnist", "0744692d530f8e62ec473284d019b0c7",
                ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                 "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                 "vascular lesions"), 3, "multi-class"),
    DatasetInfo("octmnist", "c68d92d5b585d8d81f7112f81e2d0842",
                ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"), 1, "multi-class"),
    DatasetInfo("pneumoniamnist", "28209eda62fecd6e6a2d98b1501bb15f", ("normal", "pneumonia"), 1,
                "binary-class"),
    DatasetInfo("retinamnist", "bd4c0672f1bba3e3a89f0e4e876791e4", ("0", "1", "2", "3", "4"), 3,
                "ordinal-regression"),
    DatasetInfo("breastmnist", "750601b1f35ba3300ea97c75c52ff8f6", ("malignant", "normal, benign"), 1,
                "binary-class"),
    DatasetInfo("tissuemnist", "ebe78ee8b05294063de985d821c1c34b",
                ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule", "Glomerular endothelial cells",
                 "Interstitial endothelial cells", "Leukocytes", "Podocytes", "Proximal Tubule Segments",
                 "Thick Ascending Limb"), 1, "multi-class"),
    # MedMNIST 3.0.2's info.py gives these three files other MD5 sums than the ones carried here
    # before (866b832e..., 0afa5834..., e5c39f1a...), which were not those of the record's files
    DatasetInfo("organamnist", "68e3f8846a6bd62f0c9bf841c0d9eacc", _ORGANS, 1, "multi-class"),
    DatasetInfo("organcmnist", "b9ceb9546e10131b32923c5bbeaea2b1", _ORGANS, 1, "multi-class"),
    DatasetInfo("organsmnist", "9ab87b696fb54e2a387ebe992d6ed5f1", _ORGANS, 1, "multi-class"),
]}

# MedMNIST+ (v3): the same sets at 64, 128 and 224 pixels, <name>_<size>.npz on the same record;
# MD5 sums from MedMNIST 3.0.2's info.py, in the order 64, 128, 224
SIZES = (28, 64, 128, 224)
_SIZED_MD5 = {
    "pathmnist": ("55aa9c1e0525abe5a6b9d8343a507616", "ac42d08fb904d92c244187169d1fd1d9", "2c51a510bcdc9cf8ddb2af93af1eadec"),
    "chestmnist": ("9de6cd0b934ebb5b7426cfba5efbae16", "db107e5590b27930b62dbaf558aebee3", "45bd33e6f06c3e8cdb481c74a89152aa"),
    "dermamnist": ("b70a2f5635c6199aeaa28c31d7202e1f", "2defd784463fa5243564e855ed717de1", "8974907d8e169bef5f5b96bc506ae45d"),
    "octmnist": ("e229e9440236b774d9f0dfef9d07bdaf", "0a97e76651ace45c5d943ee3f65b63ae", "abc493b6d529d5de7569faaef2773ba3"),
    "pneumoniamnist": ("8f4eceb4ccffa70c672198ea285246c6", "05b46931834c231683c68f40c47b2971", "d6a3c71de1b945ea11211b03746c1fe1"),
    "retinamnist": ("afda852cc34dcda56f86ad2b2457dbcc", "e48e916a24454daf90583d4e6efb1a18", "eae7e3b6f3fcbda4ae613ebdcbe35348"),
    "breastmnist": ("742edef2a1fd1524b2efff4bd7ba9364", "363e4b3f8d712e9b5de15470a2aaadf1", "b56378a6eefa9fed602bb16d192d4c8b"),
    "bloodmnist": ("2b94928a2ae4916078ca51e05b6b800b", "adace1e0ed228fccda1f39692059dd4c", "b718ff6835fcbdb22ba9eacccd7b2601"),
    "tissuemnist": ("123ece2eba09d0aa5d698fda57103344", "61b955355d7425a89687b06cca3ce0c2", "b077128c4a949f0a4eb01517f9037b9c"),
    "organamnist": ("2dcccc29b88e6da5a01161ef20cda288", "eeae80d0a227a8d099027e1b3cfd3b60", "50747347e05c87dd3aaf92c49f9f3170"),
    "organcmnist": ("3ce34a8724ea6f548e6db4744d03b6a9", "773c1f009daa3fe5d9a2a201b2a7ed94", "050f5e875dc056f6768abf94ec9995d1"),
    "organsmnist": ("53a6d115339d874c25e309a994ff46d3", "ded0c5fa01a95dc4978b956f613e9b8e", "b354719e553fbbb2513d5533f52a4cb1"),
}
DATASETS.update({f"{name}_{size}": replace(DATASETS[name], name=f"{name}_{size}", md5=md5)
                 for name, md5s in _SIZED_MD5.items() for size, md5 in zip(SIZES[1:], md5s)})


def sized_name(name: str, size: int) -> str:
    """The file name (without .npz) of a set at ``size`` pixels: MedMNIST+'s naming, no suffix at 28."""
    if size not in SIZES:
        raise ValueError(f"size {size}: MedMNIST's images are {', '.join(map(str, SIZES))} pixels")
    return name if size == 28 else f"{name}_{size}"


def short_label(name: str) -> str:
    """A label short enough for a plot axis: text before any parenthesis."""
    return name.split("(")[0].strip() or name


# --task's names for MedMNIST's four task types (a custom file's; MedMNIST's sets have their own)
TASK_FLAGS = {"multi-class": "multi-class", "binary-class": "binary-class",
              "ordinal-regression": "ordinal-regression", "multi-label": "multi-label, binary-class"}


# MedMNIST v2's published ResNet-18 results on each 2-D set's test split, (ACC, AUC), at 28 and at
# 224 pixels: Yang et al., "MedMNIST v2", Scientific Data 10:41 (2023), Table 3 (the mean of three
# runs; ACC and AUC as its evaluator defines them, metrics.medmnist_scores)
PUBLISHED_RESNET18 = {
    "pathmnist": {28: (0.907, 0.983), 224: (0.909, 0.989)},
    "chestmnist": {28: (0.947, 0.768), 224: (0.947, 0.773)},
    "dermamnist": {28: (0.735, 0.917), 224: (0.754, 0.920)},
    "octmnist": {28: (0.743, 0.943), 224: (0.763, 0.958)},
    "pneumoniamnist": {28: (0.854, 0.944), 224: (0.864, 0.956)},
    "retinamnist": {28: (0.524, 0.717), 224: (0.493, 0.710)},
    "breastmnist": {28: (0.863, 0.901), 224: (0.833, 0.891)},
    "bloodmnist": {28: (0.958, 0.998), 224: (0.963, 0.998)},
    "tissuemnist": {28: (0.676, 0.930), 224: (0.681, 0.933)},
    "organamnist": {28: (0.935, 0.997), 224: (0.951, 0.998)},
    "organcmnist": {28: (0.900, 0.992), 224: (0.920, 0.994)},
    "organsmnist": {28: (0.782, 0.972), 224: (0.778, 0.974)},
}
