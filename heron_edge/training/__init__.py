"""Training: ``heron-edge train`` (stable-baselines3 PPO, the default recipe), RLlib and TorchRL adapters, and the
export every trainer shares (``export``: a torch actor -> a policy bundle). Needs the ``train`` extra (torch,
stable-baselines3, onnx); RLlib and TorchRL are optional on top. Nothing here is imported by a gateway."""
