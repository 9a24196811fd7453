"""gpu_orchestrator: keeps a fleet of GPU pods sized to the comfy-worker queue.

``python -m gpu_orchestrator [--dry-run] [--once]`` runs the control loop (:mod:`.loop`); the policy is a pure
function (:mod:`.policy`) that the simulator (:mod:`.simulate`) runs too; pods come from a
:class:`~gpu_orchestrator.provider.Provider` (RunPod v2 in :mod:`.runpod`).
"""
