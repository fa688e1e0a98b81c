"""Models: importing this registers `hdkd_teacher`, `hdkd_student` and `hdkd` with timm."""

from hdkd.models.checkpoint import (
    convert_official_state_dict,
    create_model_from_checkpoint,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)
from hdkd.models.hdkd import (
    CBAM,
    MBCSA,
    HDKDDistilled,
    HDKDNet,
    HDKDStudent,
    HDKDTeacher,
    MBConv,
    hdkd,
    hdkd_student,
    hdkd_teacher,
)
from hdkd.models.profile import count_flops, count_params

__all__ = [
    "HDKDNet",
    "HDKDTeacher",
    "HDKDStudent",
    "HDKDDistilled",
    "CBAM",
    "MBCSA",
    "MBConv",
    "hdkd",
    "hdkd_student",
    "hdkd_teacher",
    "load_checkpoint",
    "save_checkpoint",
    "create_model_from_checkpoint",
    "read_checkpoint_metadata",
    "convert_official_state_dict",
    "count_params",
    "count_flops",
]
