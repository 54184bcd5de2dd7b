"""Builders of tiny nnU-Net v2 results folders and Hugging Face cache layouts for the tests.

The folders have exactly the published layout (``Dataset500_KneeMRI/nnUNetTrainer__nnUNetResEncUNetMPlans__
<configuration>/{dataset.json,plans.json,fold_1/checkpoint_best.pth}``) and files in nnunetv2 2.8.1's
formats; only the network is tiny (a 3-stage ResidualEncoderUNet with 4-8-16 features) and random.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import numpy as np

DATASET = "Dataset500_KneeMRI"
TRAINER_PLANS = "nnUNetTrainer__nnUNetResEncUNetMPlans__"
LABELS = {"background": 0, "patellar_cartilage": 1, "femoral_cartilage": 2, "medial_tibial_cartilage": 3,
          "lateral_tibial_cartilage": 4, "medial_meniscus": 5, "lateral_meniscus": 6, "femur": 7, "tibia": 8,
          "patella": 9}


def dataset_json() -> dict:
    return {"channel_names": {"0": "MRI"}, "labels": dict(LABELS), "numTraining": 2, "file_ending": ".nii.gz",
            "name": DATASET}


def _arch(features=(4, 8, 16)) -> dict:
    n = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
            "n_blocks_per_stage": [1] * n, "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _config(spacing_zyx, patch=(16, 16, 16), median=(24, 40, 32)) -> dict:
    return {
        "data_identifier": "nnUNetPlans_3d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(patch), "median_image_size_in_voxels": list(median), "spacing": list(spacing_zyx),
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": _arch(), "batch_dice": False,
    }


def plans_json(fullres_spacing=(1.0, 0.7, 0.6), lowres_spacing=(1.6, 1.3, 1.2)) -> dict:
    lowres = _config(lowres_spacing, median=(15, 22, 16))
    lowres["data_identifier"] = "nnUNetPlans_3d_lowres"
    lowres["next_stage"] = ["3d_cascade_fullres"]
    return {
        "dataset_name": DATASET, "plans_name": "nnUNetResEncUNetMPlans",
        "original_median_spacing_after_transp": list(fullres_spacing),
        "original_median_shape_after_transp": [24, 40, 32], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": _config(fullres_spacing),
            "3d_lowres": lowres,
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        },
        "experiment_planner_used": "nnUNetPlannerResEncM", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1000.0, "mean": 300.0, "median": 290.0, "min": 0.0, "percentile_00_5": 10.0,
            "percentile_99_5": 900.0, "std": 150.0}},
    }


def _network_weights(plans: dict, configuration: str, ds: dict, seed: int) -> dict:
    """Random weights for the configuration's network, built the way nnunetv2 builds it."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    n_in = determine_num_input_channels(pm, cm, ds)
    n_out = pm.get_label_manager(ds).num_segmentation_heads
    torch.manual_seed(seed)
    net = nnUNetTrainer.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=False)
    with torch.no_grad():  # make the random logits vary spatially so several labels appear
        for name, p in net.named_parameters():
            if "seg_layers" in name:
                p.mul_(8.0)
    return net.state_dict()  # as nnunetv2 saves it (decoder.encoder.* shares the encoder's tensors)


def build_results_folder(root: Path, configurations: Sequence[str] = ("3d_fullres",), folds: Iterable = (1,),
                         checkpoints: Iterable[str] = ("checkpoint_best.pth",), seed: int = 0,
                         plans: Optional[dict] = None) -> Path:
    """Write ``root/Dataset500_KneeMRI/<trainer__plans__conf>/...``; returns the Dataset500_KneeMRI folder."""
    import torch

    plans = plans or plans_json()
    ds = dataset_json()
    base = Path(root) / DATASET
    for ci, conf in enumerate(configurations):
        folder = base / (TRAINER_PLANS + conf)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dataset.json").write_text(json.dumps(ds, indent=2))
        (folder / "plans.json").write_text(json.dumps(plans, indent=2))
        for fi, fold in enumerate(folds):
            (folder / ("fold_%s" % fold)).mkdir(exist_ok=True)
            weights = _network_weights(plans, conf, ds, seed + 100 * ci + fi)
            for ck in checkpoints:
                torch.save({
                    "network_weights": weights,
                    "optimizer_state": None, "grad_scaler_state": None, "logging": {}, "_best_ema": None,
                    "current_epoch": 1,
                    "init_args": {"plans": plans, "configuration": conf, "fold": fold, "dataset_json": ds,
                                  "device": "cpu"},
                    "trainer_name": "nnUNetTrainer",
                    "inference_allowed_mirroring_axes": (0, 1, 2),
                }, folder / ("fold_%s" % fold) / ck)
    return base


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def lay_out_hub_cache(cache_dir: Path, repo_id: str, files: Dict[str, Path], commit: str = "a" * 40,
                      ref: str = "main") -> Path:
    """Put ``files`` (repo path -> local file) into ``cache_dir`` in the hub's cache format:
    ``models--owner--name/{blobs/<sha256>, snapshots/<commit>/<path> -> ../../blobs/<sha256>, refs/<ref>}``.
    Returns the snapshot folder."""
    repo_folder = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    blobs = repo_folder / "blobs"
    snap = repo_folder / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    for repo_path, src in files.items():
        digest = sha256(src)
        blob = blobs / digest
        if not blob.exists():
            shutil.copyfile(src, blob)
        link = snap / repo_path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo_folder / "refs").mkdir(exist_ok=True)
    (repo_folder / "refs" / ref).write_text(commit)
    return snap


def phantom_volume(shape_kji=(24, 40, 32), spacing=(0.55, 0.65, 0.9), oblique: bool = True, seed: int = 0):
    """A small knee-like phantom (two 'bones' and a 'cartilage' shell) in an oblique LPS frame."""
    from KneePipelineLib.io.volume import Volume

    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in shape_kji], indexing="ij")
    arr = np.full(shape_kji, 80.0)
    c1 = (shape_kji[0] / 2, shape_kji[1] * 0.3, shape_kji[2] / 2)
    c2 = (shape_kji[0] / 2, shape_kji[1] * 0.72, shape_kji[2] / 2)
    r1 = np.sqrt(((k - c1[0]) * 1.3) ** 2 + (j - c1[1]) ** 2 + (i - c1[2]) ** 2)
    r2 = np.sqrt(((k - c2[0]) * 1.3) ** 2 + (j - c2[1]) ** 2 + (i - c2[2]) ** 2)
    arr[r1 < 11] = 420.0
    arr[r1 < 9] = 250.0
    arr[r2 < 9] = 300.0
    arr += rng.normal(0, 20, shape_kji)
    if oblique:
        a, b = np.deg2rad(20), np.deg2rad(-12)
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        direction = rz @ rx @ np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)
    else:
        direction = np.eye(3)
    return Volume(arr.astype(np.float32), spacing, (-12.5, 30.25, 7.0), direction)
