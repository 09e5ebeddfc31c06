"""Export a torch actor to a policy bundle (``heron_edge.policies.bundle``): the one format every trainer writes.

The actor is any ``torch.nn.Module`` mapping a batch of (normalised) observations, float32 ``[batch, n]``, to the
network's action output ``[batch, 4]`` before the post-processing the manifest names (a deterministic policy: the
Gaussian's mean). Exported with ``torch.onnx.export`` (the dynamo exporter), a dynamic batch axis; the bundle is
loaded back and checked against the torch module on a few observations before this returns.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heron_edge.errors import RunError
from heron_edge.policies.bundle import (
    INPUT_NAME,
    OUTPUT_NAME,
    PolicyManifest,
    PostProcess,
    TrainingSpec,
    load_bundle,
    manifest_for,
    write_bundle,
)

if TYPE_CHECKING:
    from heron_edge.env import MultiAgentMicrogrids

__all__ = ["ROUND_TRIP_TOLERANCE", "export_bundle", "export_onnx"]

ROUND_TRIP_TOLERANCE = 1e-5
"""Largest |onnxruntime - torch| accepted on the network's output after export."""


def export_onnx(actor: Any, n_inputs: int, path: Path) -> Path:
    """Write ``actor`` (a torch module, put in eval mode) as a single-file ONNX model at ``path``."""
    import logging
    import warnings

    import torch

    actor = actor.eval()
    example = torch.zeros((2, n_inputs), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter lists the torchvision ops it skips, irrelevant here
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(actor, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamo=True, external_data=False, dynamic_shapes=({0: batch},), verbose=False)
    finally:
        quiet.setLevel(level)
    return path


def export_bundle(actor: Any, env: MultiAgentMicrogrids, directory: str | Path, *, training: TrainingSpec,
                  postprocess: PostProcess = "clip", check: np.ndarray | None = None) -> PolicyManifest:
    """Export ``actor`` trained on ``env`` (its layout, normalisation, scenario, protocols go in the manifest) as a
    bundle in ``directory``; the round trip on ``check`` (observations the actor reads; default: a few from ``env``)
    must agree to :data:`ROUND_TRIP_TOLERANCE`, else RunError. Returns the manifest written."""
    import torch

    directory = Path(directory)
    with tempfile.TemporaryDirectory(prefix="heron-export-") as tmp:
        onnx_path = export_onnx(actor, env.layout.size, Path(tmp) / "policy.onnx")
        manifest = manifest_for(env, training=training, sha256="0" * 64, postprocess=postprocess)
        write_bundle(directory, onnx_path, manifest)
    bundle = load_bundle(directory)
    if check is None:
        obs, _ = env.reset(seed=0)
        check = np.stack(list(obs.values()))
    inputs = np.asarray(check, dtype=np.float32)
    with torch.no_grad():
        expected = actor(torch.as_tensor(inputs)).numpy()
    got = bundle.run(inputs)
    error = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    if not error <= ROUND_TRIP_TOLERANCE:
        raise RunError(f"exported policy differs from the torch one by {error:g} (> {ROUND_TRIP_TOLERANCE:g})")
    return bundle.manifest
