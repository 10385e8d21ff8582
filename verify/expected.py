"""The reference worker's extra outputs: the float64 oracle, an honest run at the policy, rechecks of timed calls."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from kfoundry.verify import precision as numerics
from kfoundry.runner.wire import encode_tensors

if TYPE_CHECKING:
    from kfoundry.verify.harness import Harness


def as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Expected:
    """Sends ``expected`` messages keyed ``trial:<i>`` or ``seed:<s>``, of kind oracle, honest or reference."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self._oracle: torch.nn.Module | None = None
        self._honest: torch.nn.Module | None = None
        self._failed = False

    def send_oracles(self, key: str, model: torch.nn.Module, inputs: list[Any]) -> None:
        """The float64 oracle's outputs for ``inputs`` and, under a relaxed policy, an honest run at that precision."""
        if self._failed:
            return
        try:
            if self._oracle is None:
                self._oracle = numerics.oracle_model(model)
            with torch.no_grad():
                runs = {"oracle": as_list(self._oracle(*numerics.oracle_inputs(inputs)))}
                if self.harness.policy.relaxed:
                    if self._honest is None:
                        self._honest = numerics.rounded_model(model, self.harness.policy)
                    with numerics.numerics(self.harness.policy):
                        runs["honest"] = as_list(self._honest(*numerics.rounded_inputs(inputs, self.harness.policy)))
            sync(self.harness.device)
        except Exception as exc:  # noqa: BLE001 - ops without float64 kernels leave the oracle out, reported
            self._failed = True
            self.harness.channel.send({"op": "oracle_failed", "message": f"{type(exc).__name__}: {str(exc)[:300]}"})
            return
        for kind, outputs in runs.items():
            entries, blob = encode_tensors(outputs)
            self.harness.channel.send({"op": "expected", "key": key, "kind": kind, "outputs": entries}, blob)

    def send_rechecks(self, problem: ModuleType, model: torch.nn.Module) -> None:
        """Expected outputs for the inputs of the candidate's sampled timed calls (seeds chosen by the server)."""
        for seed in [int(s) for s in self.harness.job.get("recheck_seeds", [])]:
            inputs = self.harness.make_inputs(problem, seed)
            with torch.no_grad():
                outputs = as_list(model(*inputs))
            sync(self.harness.device)
            entries, blob = encode_tensors(outputs)
            self.harness.channel.send({"op": "expected", "key": f"seed:{seed}", "kind": "reference", "outputs": entries}, blob)
            if self.harness.policy.relaxed:
                self.send_oracles(f"seed:{seed}", model, inputs)

