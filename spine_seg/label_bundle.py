"""A copy of the bundle that serves weights of your own (``make train DATA=...``) in MONAI Label.

MONAI Label's ``monaibundle`` app serves a bundle folder as it is: the weights in its ``models/``, the class
count in ``configs/inference.json`` and the label names in ``configs/metadata.json`` (the output
``channel_def``). :func:`write_label_bundle` writes such a folder for other weights: the bundle's configs and
scripts, the three stages' weights (and stage 3's level sizes, ``refine_sizes.json``, where training wrote them),
``num_classes`` from the weights and the names from the data set's ``dataset.json``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from spine_seg.dataset_json import read_dataset_json
from spine_seg.predict import DEFAULT_BUNDLE, bundle_weights


def write_label_bundle(models_dir: str | Path, dataset_json: str | Path, out: str | Path,
                       bundle_dir: str | Path = DEFAULT_BUNDLE) -> Path:
    """Write ``out``: ``bundle_dir``'s configs and scripts with the weights of ``models_dir`` (``coarse.pt``,
    ``model.pt``, ``refine.pt``), their class count as ``num_classes`` and ``dataset_json``'s labels as the output
    channels.

    The folder is written beside ``out`` and replaces it only once complete. Raises FileNotFoundError for missing
    weights, RuntimeError for weights that are not the bundle's or whose stages differ, and ValueError when the
    data set's labels do not match the weights' class count.
    """
    models_dir, bundle_dir, out = Path(models_dir), Path(bundle_dir), Path(out)
    coarse, fine, refine, classes = bundle_weights(bundle_dir, coarse_ckpt_path=models_dir / "coarse.pt",
                                                   ckpt_path=models_dir / "model.pt",
                                                   refine_ckpt_path=models_dir / "refine.pt")
    labels = read_dataset_json(dataset_json)["labels"]
    if len(labels) != classes:
        raise ValueError(f"{dataset_json} names {len(labels)} classes ({', '.join(labels.values())}) but {fine} "
                         f"predicts {classes}: give the dataset.json of the data set the weights were trained on")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(bundle_dir / "configs", tmp / "configs")
        shutil.copytree(bundle_dir / "scripts", tmp / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
        (tmp / "models").mkdir()
        sizes = models_dir / "refine_sizes.json"
        for weights in (coarse, fine, refine, *([sizes] if refine and sizes.is_file() else [])):
            shutil.copy2(weights, tmp / "models" / weights.name)
        inference = json.loads((tmp / "configs" / "inference.json").read_text())
        inference["num_classes"] = classes
        (tmp / "configs" / "inference.json").write_text(json.dumps(inference, indent=4) + "\n")
        meta = json.loads((tmp / "configs" / "metadata.json").read_text())
        pred = meta["network_data_format"]["outputs"]["pred"]
        pred["num_channels"], pred["channel_def"] = classes, {str(k): labels[str(k)] for k in range(classes)}
        meta["description"] = f"{meta['description']} Served with the weights of {models_dir.resolve()}."
        (tmp / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
