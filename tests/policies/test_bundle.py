"""Policy bundles: export from torch, load with onnxruntime, the same actions; manifests checked and compared."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from heron_edge import MultiAgentMicrogrids
from heron_edge import observations as ob
from heron_edge.errors import ActionError, ConfigError
from heron_edge.policies import make_policies
from heron_edge.policies.bundle import (
    MANIFEST_NAME,
    ONNX_NAME,
    TrainingSpec,
    check_compatible,
    load_bundle,
    load_manifest,
)

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def actor(n_inputs: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_inputs, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    from heron_edge.training.export import export_bundle

    env = MultiAgentMicrogrids({"observation": "local", "normalize": True, "protocol": "setpoint", "max_episode_steps": 4})
    net = actor(env.layout.size)
    directory = tmp_path_factory.mktemp("bundle")
    export_bundle(net, env, directory, training=TrainingSpec(library="torch", library_version=torch.__version__,
                                                              algorithm="none", steps=0))
    env.close()
    return directory, net


def test_onnx_round_trip_equals_the_torch_policy(exported) -> None:
    directory, net = exported
    bundle = load_bundle(directory)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, len(bundle.manifest.layout.names))).astype(np.float32) * 3
    with torch.no_grad():
        expected = net(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(bundle.run(x), expected, atol=1e-5, rtol=0)
    m = bundle.manifest
    assert m.layout.kind == "local" and m.normalization.kind == "per_rating" and m.scenario.protocols == ["setpoint"]
    assert m.action.postprocess == "clip" and m.onnx.sha256 == __import__("hashlib").sha256((directory / ONNX_NAME).read_bytes()).hexdigest()


def test_the_bundle_policy_normalises_raw_observations_like_the_env(exported) -> None:
    """Raw env observations through OnnxPolicy = the normalised env's observations through the network."""
    directory, net = exported
    raw = MultiAgentMicrogrids({"observation": "local", "protocol": "setpoint", "max_episode_steps": 4})
    normalised = MultiAgentMicrogrids({"observation": "local", "normalize": True, "protocol": "setpoint",
                                       "max_episode_steps": 4})
    policies = make_policies(directory, raw)
    obs_raw, _ = raw.reset(seed=2)
    obs_norm, _ = normalised.reset(seed=2)
    for _ in range(3):
        actions = {a: policies[a].act(obs_raw[a]) for a in raw.agents}
        for a in raw.agents:
            with torch.no_grad():
                y = net(torch.as_tensor(obs_norm[a][None])).numpy()[0]
            np.testing.assert_allclose(actions[a], np.clip(y, [-1, 0, 0, 0], [1, 1, 1, 1]), atol=1e-5)
            assert raw.action_space(a).contains(actions[a])
        obs_raw, *_ = raw.step(actions)
        obs_norm, *_ = normalised.step(actions)
    with pytest.raises(ActionError, match="shape"):
        policies["mg1"].act(np.zeros(3, np.float32))


def test_mismatches_are_refused_in_one_line(exported, tmp_path) -> None:
    directory, _ = exported
    manifest = load_manifest(directory)
    ratings = {"mg1": ob.Ratings(0.5, 0.66)}
    with pytest.raises(ConfigError, match="trained with protocols \\['setpoint'\\]; here runs none"):
        check_compatible(manifest, layout=ob.local_layout(("setpoint_mw",)), protocols=[], ratings=ratings, where="here")
    with pytest.raises(ConfigError, match="reads 26 observation entries; here gives 25"):
        check_compatible(manifest, layout=ob.local_layout(), protocols=["setpoint"], ratings=ratings, where="here")
    with pytest.raises(ConfigError, match="reads 'setpoint_mw' at observation entry 25; here gives 'dispatch_mw'"):
        check_compatible(manifest, layout=ob.local_layout(("dispatch_mw",)), protocols=["setpoint"],
                         ratings=ratings, where="here")
    with pytest.raises(ConfigError, match="reads local observations; here gives global"):
        check_compatible(manifest, layout=ob.ObservationLayout("global", manifest.layout.names), protocols=["setpoint"],
                         ratings=ratings, where="here")
    check_compatible(manifest, layout=ob.local_layout(("setpoint_mw",)), protocols=["setpoint"],
                     ratings={"big": ob.Ratings(5.0, 0.0)}, where="here")  # normalised per rating: any size fits
    raw = manifest.model_copy(update={"normalization": manifest.normalization.model_copy(
        update={"kind": "none", "divide_by": ["one"] * 26})})
    with pytest.raises(ConfigError, match="reads unnormalised MW"):
        check_compatible(raw, layout=ob.local_layout(("setpoint_mw",)), protocols=["setpoint"],
                         ratings={"big": ob.Ratings(5.0, 0.0)}, where="here")
    # a changed network, a broken manifest, no folder
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / MANIFEST_NAME).write_text((directory / MANIFEST_NAME).read_text())
    (copy / ONNX_NAME).write_bytes((directory / ONNX_NAME).read_bytes() + b"\0")
    with pytest.raises(ConfigError, match="does not match the manifest's sha256"):
        load_bundle(copy)
    data = json.loads((directory / MANIFEST_NAME).read_text())
    data["action"]["postprocess"] = "magic"
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="invalid manifest.json: action.postprocess"):
        load_bundle(copy)
    with pytest.raises(ConfigError, match="no such directory"):
        load_bundle(tmp_path / "nothing")
    data = json.loads((directory / MANIFEST_NAME).read_text())
    data["layout"]["version"] = 1  # a bundle trained on the layout whose size grew with the site
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ConfigError) as refused:
        load_bundle(copy)
    assert "\n" not in str(refused.value)
    assert str(refused.value).endswith("reads observation layout v1; this heron-edge builds v2 (see docs/policies.md): "
                                       "train it again")


def test_postprocessing_kinds(exported) -> None:
    from heron_edge.policies.bundle import PolicyBundle

    manifest = load_manifest(exported[0])
    y = np.array([[-3.0, 0.5, 2.0, -0.5], [0.0, 0.0, 0.0, 0.0]], np.float32)
    expected = {"clip": [[-1, 0.5, 1, 0], [0, 0, 0, 0]],
                "rescale_clip": [[-1, 0.75, 1, 0.25], [0, 0.5, 0.5, 0.5]],
                "tanh": [[np.tanh(-3.0), (np.tanh(0.5) + 1) / 2, (np.tanh(2.0) + 1) / 2, (np.tanh(-0.5) + 1) / 2],
                         [0, 0.5, 0.5, 0.5]]}
    for kind, want in expected.items():
        m = manifest.model_copy(update={"action": manifest.action.model_copy(update={"postprocess": kind})})
        np.testing.assert_allclose(PolicyBundle(Path("."), m, None).postprocess(y), want, atol=1e-6)
