"""MedMNIST's metadata for its 2-D sets at 28 x 28, carried as facts (the ``medmnist`` package
itself needs PyTorch, so it is not a dependency). Source: MedMNIST v3, ``medmnist/info.py``;
the files live on Zenodo record 10519652 and their MD5 sums are those of the 28 x 28 files."""
from __future__ import annotations

from dataclasses import dataclass

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
    DatasetInfo("organamnist", "866b832ed4eeba67bfb9edee1d5544e6", _ORGANS, 1, "multi-class"),
    DatasetInfo("organcmnist", "0afa5834fb105f7705a7d93372119a21", _ORGANS, 1, "multi-class"),
    DatasetInfo("organsmnist", "e5c39f1af030238290b9557d9503af9d", _ORGANS, 1, "multi-class"),
]}


def short_label(name: str) -> str:
    """A label short enough for a plot axis: text before any parenthesis."""
    return name.split("(")[0].strip() or name
