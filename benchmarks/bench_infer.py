"""Benchmark DICOM -> challenge .npy with the bundle's inference pipeline; prints figures, asserts nothing.

Stages timed separately per image: load (DICOM decode + preprocessing), stage 1 (the coarse network that
finds the vertebrae, inside the preprocessing), inference (the fine network on the crop's grid), restore
(softmax, Invertd to the original grid, argmax, largest component), stage 3 (the per-vertebra network that redraws
each vertebra in its own window, and the largest component again), convex (each vertebra grown to its convex hull),
checks (the plausibility checks that ``spine-seg predict`` runs on each mask) and export (.npy).
Then the same images through the ONNX backend (``spine-seg predict --backend onnx``: onnxruntime and numpy),
DICOM -> checks -> .npy. Also times sliding-window inference at native resolution to show what the working-grid design
saves.

    python benchmarks/bench_infer.py                       # 10 phantom radiographs of 3000 x 2500 px
    python benchmarks/bench_infer.py --real ../shared/data/aasce/test/img --count 20
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer

from data_prep.cases import dicom_files
from spine_seg.anatomy import plausibility_problems
from spine_seg.dicom_io import read_radiograph
from spine_seg.export import ExportFormat, class_map_to_challenge, save_npy
from spine_seg.nifti_io import write_nifti
from spine_seg.predict import DEFAULT_BUNDLE


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", help="folder of real DICOM radiographs instead of phantoms")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    parser.add_argument("--native-count", type=int, default=1, help="images for the native-resolution timing")
    args = parser.parse_args()
    torch.manual_seed(0)
    bundle = Path(args.bundle)
    sys.path.insert(0, str(bundle))  # the bundle's `scripts` package, as `monai.bundle run` does
    config = ConfigParser()
    config.read_config(str(bundle / "configs" / "inference.json"))
    config["bundle_root"] = str(bundle)
    config.get_parsed_content("initialize")  # what `monai.bundle run` does first (seed, oneDNN cache capacity)
    device = config.get_parsed_content("device")
    network = config.get_parsed_content("network").eval()
    ckpt = Path(config.get_parsed_content("ckpt_path"))
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        network.load_state_dict(state.get("model", state))
        print(f"weights: {ckpt}")
    else:
        print(f"weights: {ckpt} missing, timing an untrained network (same cost)")
    preprocessing = config.get_parsed_content("preprocessing").transforms
    inferer = config.get_parsed_content("inferer")
    restore = [config.get_parsed_content(f"postprocessing_transforms#{k}") for k in ("softmax", "invert", "argmax")]
    restore.append(config.get_parsed_content("largest_component"))
    refine = [config.get_parsed_content(k) for k in ("refine", "largest_component")] \
        if config.get_parsed_content("refine_vertebrae") else []
    convex = [config.get_parsed_content("convex")] if config.get_parsed_content("convex_vertebrae") else []
    fmt = ExportFormat()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        if args.real:
            images = dicom_files(Path(args.real))[: args.count]
            print(f"{len(images)} real radiographs from {args.real} on {device}")
        else:
            from spine_seg.phantom import make_phantom, write_dicom

            images = []
            for i in range(args.count):
                image, _ = make_phantom((3000, 2500), seed=i)
                images.append(tmp_dir / f"{i:03d}.dcm")
                write_dicom(images[-1], image, transfer_syntax="jpeg-baseline")
            print(f"{len(images)} phantom radiographs of 3000 x 2500 px (JPEG baseline) on {device}")
        times: dict[str, list[float]] = {
            k: [] for k in ("load", "stage 1", "inference", "restore", "stage 3", "convex", "checks", "export")
        }
        for i, path in enumerate(images):
            t0 = time.perf_counter()
            radiograph = read_radiograph(path)
            write_nifti(tmp_dir / "img.nii", radiograph.pixels, radiograph.spacing)
            data, coarse = {"image": str(tmp_dir / "img.nii")}, 0.0
            for transform in preprocessing:
                t = time.perf_counter()
                data = transform(data)
                if "spine_mask" in data and not coarse:
                    coarse = time.perf_counter() - t
            t1 = time.perf_counter()
            with torch.inference_mode():
                data["pred"] = inferer(data["image"][None].to(device), network)[0]
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t2 = time.perf_counter()
                for transform in restore:
                    data = transform(data)
                t3 = time.perf_counter()
                for transform in refine:
                    data = transform(data)
                t4 = time.perf_counter()
                for transform in convex:
                    data = transform(data)
            class_map = data["pred"][0].cpu().numpy().astype(np.uint8)
            t5 = time.perf_counter()
            plausibility_problems(class_map, config["num_classes"] - 1)
            t6 = time.perf_counter()
            save_npy(tmp_dir / f"{i}.npy", class_map_to_challenge(class_map, fmt))
            t7 = time.perf_counter()
            steps = (t1 - t0 - coarse, coarse, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)
            for key, dt in zip(times, steps, strict=True):
                times[key].append(dt)
        total = np.sum([times[k] for k in times], axis=0)
        skip = 1 if len(images) > 1 else 0  # the first image pays one-off start-up costs
        print(f"seconds per image (mean over {len(images) - skip}, first excluded):")
        for key, values in times.items():
            print(f"  {key:<10} {np.mean(values[skip:]):.3f}")
        print(f"  {'total':<10} {np.mean(total[skip:]):.3f}")
        print(f"peak memory: {peak_mb():.0f} MB")
        onnx_model = bundle / "models" / "model.onnx"
        if onnx_model.is_file():
            from spine_seg.onnx_predict import OnnxSegmenter

            segment = OnnxSegmenter(onnx_model)
            onnx_times = []
            for i, path in enumerate(images):
                t0 = time.perf_counter()
                class_map = segment(read_radiograph(path).pixels)
                plausibility_problems(class_map, config["num_classes"] - 1)
                save_npy(tmp_dir / f"onnx{i}.npy", class_map_to_challenge(class_map, fmt))
                onnx_times.append(time.perf_counter() - t0)
            print(f"onnx backend (onnxruntime + numpy, all stages), DICOM -> .npy: "
                  f"{np.mean(onnx_times[skip:]):.3f} s per image; peak memory {peak_mb():.0f} MB")
        else:
            print(f"onnx backend: {onnx_model} missing (make export-model), not timed")
        native = SlidingWindowInferer(roi_size=config["spatial_size"], sw_batch_size=4, overlap=0.25)
        native_times = []
        for path in images[: args.native_count]:
            pixels = read_radiograph(path).pixels.astype(np.float32)
            x = torch.from_numpy((pixels - pixels.min()) / max(float(np.ptp(pixels)), 1e-6))[None, None].to(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                native(x, network).argmax(1)
            native_times.append(time.perf_counter() - t0)
        print(
            f"native-resolution sliding window ({config['spatial_size']} windows, overlap 0.25): "
            f"{np.mean(native_times):.2f} s per image for inference alone; peak memory {peak_mb():.0f} MB"
        )


if __name__ == "__main__":
    main()
