"""The class names of the MedMNIST 2-D sets, so that a model trained on a `.npz` (which stores only label indices)
reports `pneumonia` rather than `1`.

The meaning and the order are MedMNIST's (the ``label`` entries of `medmnist.INFO`, MedMNIST v2, Yang et al.
2023); the names are shortened to lower-case words joined by underscores, so that they work as CSV column
suffixes and command-line values. OFFICIAL keeps MedMNIST's own wording beside each short name. RetinaMNIST's
labels are diabetic retinopathy grades 0-4 (MedMNIST names them only by the digit).
"""

from __future__ import annotations

import re
from typing import Optional

# name -> ((short name, MedMNIST's label text), ...) in label-index order.
OFFICIAL: dict[str, tuple[tuple[str, str], ...]] = {
    "pathmnist": (
        ("adipose", "adipose"),
        ("background", "background"),
        ("debris", "debris"),
        ("lymphocytes", "lymphocytes"),
        ("mucus", "mucus"),
        ("smooth_muscle", "smooth muscle"),
        ("normal_colon_mucosa", "normal colon mucosa"),
        ("cancer_associated_stroma", "cancer-associated stroma"),
        ("colorectal_adenocarcinoma_epithelium", "colorectal adenocarcinoma epithelium"),
    ),
    "dermamnist": (
        ("actinic_keratosis", "actinic keratoses and intraepithelial carcinoma"),
        ("basal_cell_carcinoma", "basal cell carcinoma"),
        ("benign_keratosis", "benign keratosis-like lesions"),
        ("dermatofibroma", "dermatofibroma"),
        ("melanoma", "melanoma"),
        ("melanocytic_nevus", "melanocytic nevi"),
        ("vascular_lesion", "vascular lesions"),
    ),
    "octmnist": (
        ("choroidal_neovascularization", "choroidal neovascularization"),
        ("diabetic_macular_edema", "diabetic macular edema"),
        ("drusen", "drusen"),
        ("normal", "normal"),
    ),
    "pneumoniamnist": (("normal", "normal"), ("pneumonia", "pneumonia")),
    "retinamnist": tuple((f"dr_grade_{grade}", str(grade)) for grade in range(5)),
    "breastmnist": (("malignant", "malignant"), ("normal_or_benign", "normal, benign")),
    "bloodmnist": (
        ("basophil", "basophil"),
        ("eosinophil", "eosinophil"),
        ("erythroblast", "erythroblast"),
        ("immature_granulocyte", "immature granulocytes (myelocytes, metamyelocytes and promyelocytes)"),
        ("lymphocyte", "lymphocyte"),
        ("monocyte", "monocyte"),
        ("neutrophil", "neutrophil"),
        ("platelet", "platelet"),
    ),
    "tissuemnist": (
        ("collecting_duct_connecting_tubule", "Collecting Duct, Connecting Tubule"),
        ("distal_convoluted_tubule", "Distal Convoluted Tubule"),
        ("glomerular_endothelial", "Glomerular endothelial cells"),
        ("interstitial_endothelial", "Interstitial endothelial cells"),
        ("leukocytes", "Leukocytes"),
        ("podocytes", "Podocytes"),
        ("proximal_tubule", "Proximal Tubule Segments"),
        ("thick_ascending_limb", "Thick Ascending Limb"),
    ),
}
_ORGANS = tuple(
    (name.replace("-", "_"), name)
    for name in (
        "bladder",
        "femur-left",
        "femur-right",
        "heart",
        "kidney-left",
        "kidney-right",
        "liver",
        "lung-left",
        "lung-right",
        "pancreas",
        "spleen",
    )
)
OFFICIAL.update({name: _ORGANS for name in ("organamnist", "organcmnist", "organsmnist")})

LABELS: dict[str, tuple[str, ...]] = {name: tuple(short for short, _ in pairs) for name, pairs in OFFICIAL.items()}

# The file names `hdkd data download` writes: `{name}.npz` (28 px) and `{name}_{size}.npz` (MedMNIST+).
_FILE_NAME = re.compile(r"^(?P<name>[a-z]+mnist)(?:_(?:28|64|128|224))?\.npz$")


def medmnist_set(file_name: str) -> Optional[str]:
    """The MedMNIST set a file name identifies (`breastmnist_64.npz` -> `breastmnist`), or None."""
    match = _FILE_NAME.match(file_name.lower())
    return match.group("name") if match and match.group("name") in LABELS else None


def medmnist_class_names(file_name: str, num_classes: int) -> Optional[list[str]]:
    """The official class names for a MedMNIST file, when its name identifies a known set with that many classes."""
    name = medmnist_set(file_name)
    if name is None or len(LABELS[name]) != num_classes:
        return None
    return list(LABELS[name])


__all__ = ["LABELS", "OFFICIAL", "medmnist_set", "medmnist_class_names"]
