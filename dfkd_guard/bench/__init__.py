"""Benchmark kit: vendored MNIST-family data, ID/OOD settings, small CNNs and cached teachers.

Import the pieces from their modules (:mod:`.data`, :mod:`.models`,
:mod:`.teachers`) or from here; the names below are the public API.
"""

from .data import (
    SETTINGS,
    Domain,
    Setting,
    SettingName,
    add_trigger,
    build_setting,
    load_digits,
    load_fashion,
    load_photos,
    make_mnist_m,
    make_rotated_mnist,
    read_idx,
    to_rgb32,
    verify_vendored_data,
)
from .models import STUDENT_WIDTHS, TEACHER_WIDTHS, ConvNet, Generator, make_student, make_teacher
from .teachers import (
    CODE_VERSION,
    TeacherConfig,
    TeacherKind,
    evaluate_teacher,
    gaussian_mmd,
    load_or_train_teacher,
    ntl_loss,
    teacher_cache_key,
    train_teacher,
)

__all__ = [
    "CODE_VERSION",
    "SETTINGS",
    "STUDENT_WIDTHS",
    "TEACHER_WIDTHS",
    "ConvNet",
    "Domain",
    "Generator",
    "Setting",
    "SettingName",
    "TeacherConfig",
    "TeacherKind",
    "add_trigger",
    "build_setting",
    "evaluate_teacher",
    "gaussian_mmd",
    "load_digits",
    "load_fashion",
    "load_or_train_teacher",
    "load_photos",
    "make_mnist_m",
    "make_rotated_mnist",
    "make_student",
    "make_teacher",
    "ntl_loss",
    "read_idx",
    "teacher_cache_key",
    "to_rgb32",
    "train_teacher",
    "verify_vendored_data",
]
