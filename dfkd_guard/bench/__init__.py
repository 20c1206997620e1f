"""Benchmark kit: vendored MNIST-family data, ID/OOD settings, small networks and cached teachers.

Import the pieces from their modules (:mod:`.data`, :mod:`.settings`,
:mod:`.triggers`, :mod:`.ntl_losses`, :mod:`.models`, :mod:`.teachers`) or
from here; the names below are the public API. New settings, triggers, NTL
losses and architectures are declared with the decorators of
:mod:`.registry` (``docs/benchmark.md``).
"""

from .data import (
    Domain,
    Setting,
    build_setting,
    load_digits,
    load_fashion,
    load_photos,
    make_mnist_m,
    make_rotated_mnist,
    read_idx,
    subseed,
    to_rgb32,
    verify_vendored_data,
)
from .models import (
    STUDENT_WIDTHS,
    TEACHER_WIDTHS,
    VGG,
    BenchNet,
    ConvNet,
    Generator,
    ResNet,
    build_network,
    make_student,
    make_teacher,
)
from .ntl_losses import gaussian_mmd, outlier_exposure_loss, wang2022_loss
from .registry import BenchComponent, BenchRegistry, Resolved, default_registry, resolve
from .settings import SETTINGS, ResolvedSetting, SettingSpec, resolve_setting
from .teachers import (
    CODE_VERSION,
    TeacherConfig,
    TeacherKind,
    evaluate_teacher,
    load_or_train_teacher,
    teacher_cache_key,
    train_teacher,
)
from .triggers import add_trigger

__all__ = [
    "CODE_VERSION",
    "SETTINGS",
    "STUDENT_WIDTHS",
    "TEACHER_WIDTHS",
    "VGG",
    "BenchComponent",
    "BenchNet",
    "BenchRegistry",
    "ConvNet",
    "Domain",
    "Generator",
    "ResNet",
    "Resolved",
    "ResolvedSetting",
    "Setting",
    "SettingSpec",
    "TeacherConfig",
    "TeacherKind",
    "add_trigger",
    "build_network",
    "build_setting",
    "default_registry",
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
    "outlier_exposure_loss",
    "read_idx",
    "resolve",
    "resolve_setting",
    "subseed",
    "teacher_cache_key",
    "to_rgb32",
    "train_teacher",
    "verify_vendored_data",
    "wang2022_loss",
]
