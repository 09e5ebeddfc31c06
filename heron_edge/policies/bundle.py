"""Policy bundles: one folder from training to the gateway, run by onnxruntime.

A bundle is a directory with two files:

- ``policy.onnx``: the policy network. Input ``observation`` (float32, shape ``[batch, layout size]``, the
  observation after the manifest's normalisation), output ``action`` (float32, ``[batch, 4]``) before the
  manifest's post-processing.
- ``manifest.json``: a :class:`PolicyManifest`: the observation layout it reads (kind, version, names in
  order), the normalisation (per entry, which rating divides it), the action bounds and post-processing,
  the scenario it was trained on (each microgrid's ratings, the protocols), the training library and its
  version, and the sha256 of ``policy.onnx``.

:func:`load_bundle` checks the files (manifest schema, hash) and opens an onnxruntime session;
:meth:`PolicyBundle.policy` gives one agent's :class:`OnnxPolicy` (raw observation in, action out: the
normalisation, the network and the post-processing, the same on a laptop and on a gateway).
:func:`check_compatible` compares a manifest with what a run will feed it (layout, protocols, ratings) and
names the first difference in one line. Gateways install onnxruntime and numpy only (the ``policy`` extra).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from heron_edge import observations as ob
from heron_edge.errors import ActionError, ConfigError

if TYPE_CHECKING:
    from heron_edge.env import MultiAgentMicrogrids

__all__ = ["BUNDLE_FORMAT", "MANIFEST_NAME", "ONNX_NAME", "ActionSpec", "LayoutSpec", "MicrogridRatings",
           "NormalizationSpec", "OnnxPolicy", "PolicyBundle", "PolicyManifest", "ScenarioSpec", "TrainingSpec",
           "check_compatible", "load_bundle", "load_manifest", "manifest_for", "sha256_of", "write_bundle"]

BUNDLE_FORMAT: Final = 1
MANIFEST_NAME: Final = "manifest.json"
ONNX_NAME: Final = "policy.onnx"
INPUT_NAME: Final = "observation"
OUTPUT_NAME: Final = "action"
_MAX_MANIFEST_BYTES = 1 << 20

PostProcess = Literal["clip", "rescale_clip", "tanh"]
"""How the network's output ``y`` becomes the action: ``clip``: ``clip(y, low, high)`` (stable-baselines3);
``rescale_clip``: ``low + (clip(y, -1, 1) + 1) / 2 * (high - low)`` (RLlib's normalised actions); ``tanh``:
``low + (tanh(y) + 1) / 2 * (high - low)`` (a tanh-squashed Gaussian's mode, TorchRL)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LayoutSpec(_Model):
    """The observation the network reads (``heron_edge.observations.ObservationLayout``)."""

    kind: Literal["global", "local"]
    version: int = Field(ge=1)
    names: list[str] = Field(min_length=1, max_length=100_000)

    @classmethod
    def of(cls, layout: ob.ObservationLayout) -> LayoutSpec:
        if layout.kind == "state":
            raise ConfigError("a policy reads an observation layout, not the state")
        return cls(kind=layout.kind, version=layout.version, names=list(layout.names))

    def layout(self) -> ob.ObservationLayout:
        return ob.ObservationLayout(self.kind, tuple(self.names), self.version)


class NormalizationSpec(_Model):
    """``none``: the raw observation; ``per_rating``: each entry divided by the rating named in ``divide_by``
    (aligned with the layout's names; ``heron_edge.observations.feature_scales``)."""

    kind: Literal["none", "per_rating"]
    divide_by: list[ob.ScaleRef]


class ActionSpec(_Model):
    """The action's names, bounds and the post-processing of the network's output (:data:`PostProcess`)."""

    names: list[str]
    low: list[float]
    high: list[float]
    postprocess: PostProcess

    @model_validator(mode="after")
    def _bounds(self) -> ActionSpec:
        if not len(self.names) == len(self.low) == len(self.high) or any(lo > hi for lo, hi in zip(self.low, self.high, strict=False)):
            raise ValueError("names, low and high must have one entry each per action, with low <= high")
        return self


class MicrogridRatings(_Model):
    """One microgrid of the training scenario: name and ratings (MW)."""

    name: str
    battery_p_max_mw: float = Field(gt=0)
    generator_p_max_mw: float = Field(ge=0)

    def ratings(self) -> ob.Ratings:
        return ob.Ratings(self.battery_p_max_mw, self.generator_p_max_mw)


class ScenarioSpec(_Model):
    """What the policy was trained on."""

    name: str
    microgrids: list[MicrogridRatings] = Field(min_length=1)
    protocols: list[Literal["setpoint", "price_signal", "p2p_trading", "consensus"]]
    steps_per_day: int = Field(ge=1)


class TrainingSpec(_Model):
    """Who trained it: library, its version, algorithm, budget (agent steps: environment steps times agents), seed;
    free notes (hyper-parameters, evaluation results)."""

    library: str
    library_version: str
    algorithm: str
    steps: int = Field(ge=0)
    seed: int | None = None
    notes: dict[str, str | float | int | bool | None] = Field(default_factory=dict)


class OnnxSpec(_Model):
    """The network file, its input and output names and its sha256 (hex)."""

    file: str = ONNX_NAME
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input: str = INPUT_NAME
    output: str = OUTPUT_NAME


class PolicyManifest(_Model):
    """``manifest.json`` of a policy bundle (see the module docstring)."""

    format: Literal[1] = BUNDLE_FORMAT
    layout: LayoutSpec
    normalization: NormalizationSpec
    action: ActionSpec
    scenario: ScenarioSpec
    training: TrainingSpec
    onnx: OnnxSpec
    created: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    @model_validator(mode="after")
    def _aligned(self) -> PolicyManifest:
        if len(self.normalization.divide_by) != len(self.layout.names):
            raise ValueError(f"normalization.divide_by has {len(self.normalization.divide_by)} entries, the layout "
                             f"{len(self.layout.names)}")
        if self.normalization.kind == "none" and any(ref != "one" for ref in self.normalization.divide_by):
            raise ValueError("normalization 'none' divides every entry by one")
        return self


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_for(env: MultiAgentMicrogrids, *, training: TrainingSpec, sha256: str,
                 postprocess: PostProcess = "clip") -> PolicyManifest:
    """The manifest of a policy trained on ``env`` (its layout, normalisation, scenario and protocols)."""
    from heron_edge.env import ACTION_HIGH, ACTION_LOW, ACTION_NAMES

    layout = env.layout
    refs: list[ob.ScaleRef] = list(layout.scale_refs()) if env.config.normalize else ["one"] * layout.size
    scenario = env.plant.scenario
    return PolicyManifest(
        layout=LayoutSpec.of(layout),
        normalization=NormalizationSpec(kind="per_rating" if env.config.normalize else "none", divide_by=refs),
        action=ActionSpec(names=list(ACTION_NAMES), low=ACTION_LOW.tolist(), high=ACTION_HIGH.tolist(),
                          postprocess=postprocess),
        scenario=ScenarioSpec(name=scenario.name, protocols=list(env.coordination.protocols),  # type: ignore[arg-type]
                              steps_per_day=scenario.steps_per_day,
                              microgrids=[MicrogridRatings(name=m.name, battery_p_max_mw=m.battery.p_max_mw,
                                                           generator_p_max_mw=m.generator.p_max_mw)
                                          for m in scenario.microgrids]),
        training=training, onnx=OnnxSpec(sha256=sha256))


def write_bundle(directory: str | Path, onnx_file: str | Path, manifest: PolicyManifest) -> Path:
    """Write ``directory/policy.onnx`` (copied from ``onnx_file`` unless it is already there) and
    ``directory/manifest.json`` (with the file's sha256); returns the directory. Checks that the bundle loads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / ONNX_NAME
    source = Path(onnx_file)
    if source.resolve() != target.resolve():
        target.write_bytes(source.read_bytes())
    manifest = manifest.model_copy(update={"onnx": manifest.onnx.model_copy(update={"sha256": sha256_of(target)})})
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return directory


def load_manifest(directory: str | Path) -> PolicyManifest:
    """The bundle's manifest, validated (ConfigError naming the problem: no such folder, not JSON, a bad field, an
    observation layout of another version than :data:`heron_edge.observations.LAYOUT_VERSION`)."""
    path = Path(directory) / MANIFEST_NAME
    if not Path(directory).is_dir():
        raise ConfigError(f"policy bundle {directory}: no such directory")
    try:
        raw = path.read_bytes()[: _MAX_MANIFEST_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"policy bundle {directory}: cannot read {MANIFEST_NAME}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise ConfigError(f"policy bundle {directory}: {MANIFEST_NAME} is larger than {_MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = PolicyManifest.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}"
                             for e in exc.errors(include_url=False))
        raise ConfigError(f"policy bundle {directory}: invalid {MANIFEST_NAME}: {problems}") from None
    if manifest.layout.version != ob.LAYOUT_VERSION:
        raise ConfigError(f"policy bundle {directory} reads observation layout v{manifest.layout.version}; this "
                          f"heron-edge builds v{ob.LAYOUT_VERSION} (see docs/policies.md): train it again")
    return manifest


def check_compatible(manifest: PolicyManifest, *, layout: ob.ObservationLayout, protocols: Sequence[str],
                     ratings: Mapping[str, ob.Ratings], where: str = "this run") -> None:
    """ConfigError naming the first difference between what the bundle was trained on and what ``where`` gives it:
    layout version and kind, observation size and names, protocols; without normalisation, each microgrid's
    ratings must be among the trained ones (the network read MW). With per-rating normalisation any rating fits."""
    m = manifest.layout
    if m.version != layout.version:
        raise ConfigError(f"policy bundle reads observation layout v{m.version}; {where} gives v{layout.version}")
    if m.kind != layout.kind:
        raise ConfigError(f"policy bundle reads {m.kind} observations; {where} gives {layout.kind} ones")
    if len(m.names) != layout.size:
        raise ConfigError(f"policy bundle reads {len(m.names)} observation entries; {where} gives {layout.size} "
                          f"(protocols {list(manifest.scenario.protocols) or 'none'} and "
                          f"{len(manifest.scenario.microgrids)} microgrids in training)")
    for k, (trained, given) in enumerate(zip(m.names, layout.names, strict=True)):
        if trained != given:
            raise ConfigError(f"policy bundle reads {trained!r} at observation entry {k}; {where} gives {given!r}")
    if sorted(manifest.scenario.protocols) != sorted(protocols):
        raise ConfigError(f"policy bundle was trained with protocols {sorted(manifest.scenario.protocols) or 'none'}; "
                          f"{where} runs {sorted(protocols) or 'none'}")
    if manifest.normalization.kind == "none":
        trained_ratings = {mg.ratings() for mg in manifest.scenario.microgrids}
        for name, r in ratings.items():
            if r not in trained_ratings:
                raise ConfigError(f"policy bundle reads unnormalised MW and was trained on ratings "
                                  f"{sorted((x.battery_p_max_mw, x.generator_p_max_mw) for x in trained_ratings)} "
                                  f"(battery, generator MW); {where} gives {name} ({r.battery_p_max_mw}, "
                                  f"{r.generator_p_max_mw})")


class PolicyBundle:
    """A loaded bundle: its manifest and an onnxruntime session (one thread: small networks, small devices)."""

    def __init__(self, directory: Path, manifest: PolicyManifest, session: Any) -> None:
        self.directory = directory
        self.manifest = manifest
        self._session = session
        self._input = manifest.onnx.input
        self._low = np.asarray(manifest.action.low, dtype=np.float32)
        self._high = np.asarray(manifest.action.high, dtype=np.float32)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """The network's output for a batch of (normalised) observations, float32 ``[batch, actions]``."""
        out = self._session.run(None, {self._input: np.ascontiguousarray(inputs, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32)

    def postprocess(self, y: np.ndarray) -> np.ndarray:
        """The manifest's post-processing of network outputs (float32 actions inside the bounds)."""
        low, high = self._low, self._high
        kind = self.manifest.action.postprocess
        if kind == "clip":
            a = np.clip(y, low, high)
        elif kind == "rescale_clip":
            a = low + (np.clip(y, -1.0, 1.0) + 1.0) * 0.5 * (high - low)
        else:
            a = low + (np.tanh(y) + 1.0) * 0.5 * (high - low)
        out: np.ndarray = np.clip(a, low, high).astype(np.float32)
        return out

    def scales(self, own: ob.Ratings, ratings: Mapping[str, ob.Ratings] | None = None) -> np.ndarray | None:
        """The divisors of each observation entry for a microgrid of ratings ``own`` (None: no normalisation)."""
        norm = self.manifest.normalization
        if norm.kind == "none":
            return None
        layout = self.manifest.layout.layout()
        ratings = ratings or {}
        return np.array([(ratings.get(owner, own) if owner is not None else own).scale(ref)
                         for owner, ref in zip(layout.owners(), norm.divide_by, strict=True)])

    def policy(self, own: ob.Ratings, ratings: Mapping[str, ob.Ratings] | None = None, *,
               normalized_input: bool = False) -> OnnxPolicy:
        """One agent's policy: ``own`` ratings (and, for a global layout, every microgrid's). With
        ``normalized_input`` the observations it gets are normalised already (an env with ``normalize``)."""
        return OnnxPolicy(self, None if normalized_input else self.scales(own, ratings))


class OnnxPolicy:
    """One agent's bundle policy: raw observation -> normalisation -> network -> post-processing -> action."""

    def __init__(self, bundle: PolicyBundle, scales: np.ndarray | None) -> None:
        self.bundle = bundle
        self.scales = scales
        self.size = len(bundle.manifest.layout.names)

    def reset(self) -> None:
        """Stateless: nothing to forget."""

    def act(self, observation: np.ndarray) -> np.ndarray:
        """The action (float32, shape (4,)) for one observation of the bundle's layout."""
        obs = np.asarray(observation)
        if obs.shape != (self.size,):
            raise ActionError(f"the policy bundle reads observations of shape ({self.size},), got {obs.shape}")
        x = ob.normalize(obs, self.scales) if self.scales is not None else obs.astype(np.float32)
        action: np.ndarray = self.bundle.postprocess(self.bundle.run(x[None, :]))[0]
        return action


def load_bundle(directory: str | Path) -> PolicyBundle:
    """Read and check a bundle (manifest, the network's sha256, its input and output) and open it with
    onnxruntime; ConfigError naming what is wrong."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    path = directory / manifest.onnx.file
    try:
        digest = sha256_of(path)
    except OSError as exc:
        raise ConfigError(f"policy bundle {directory}: cannot read {manifest.onnx.file}: {exc.strerror or exc}") from None
    if digest != manifest.onnx.sha256:
        raise ConfigError(f"policy bundle {directory}: {manifest.onnx.file} does not match the manifest's sha256 "
                          f"(changed after export?)")
    try:
        import onnxruntime
    except ModuleNotFoundError as exc:
        raise ConfigError("policy bundles run on onnxruntime, which is not installed: pip install "
                          "'heron-edge[policy]'") from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a malformed model
        raise ConfigError(f"policy bundle {directory}: onnxruntime cannot load {manifest.onnx.file}: "
                          f"{' '.join(str(exc).split())[:300]}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [manifest.onnx.input] or manifest.onnx.output not in [o.name for o in outputs]:
        raise ConfigError(f"policy bundle {directory}: the network's input/output are {[i.name for i in inputs]} / "
                          f"{[o.name for o in outputs]}, the manifest says {manifest.onnx.input} / {manifest.onnx.output}")
    width = inputs[0].shape[-1]
    if isinstance(width, int) and width != len(manifest.layout.names):
        raise ConfigError(f"policy bundle {directory}: the network reads {width} entries, the manifest's layout has "
                          f"{len(manifest.layout.names)}")
    return PolicyBundle(directory, manifest, session)
