"""Facts about one call of the candidate, as the workers report them to the trusted parent.

``RuntimeFacts`` come from the candidate's own process: informative, never trusted alone.
``CallCheck`` comes from the reference worker, which compared the candidate's outputs with
its own on the device; only this summary crosses, never the tensors.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kfoundry.schema import Finding, MismatchDetail, PrecisionCheck, State


class RuntimeFacts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    aliases: list[str] = Field(default_factory=list)
    new_threads: int = 0
    new_children: int = 0
    flags_changed: dict[str, list[str]] = Field(default_factory=dict)
    patched: list[str] = Field(default_factory=list)
    compute_ops: dict[str, int] = Field(default_factory=dict)
    traced: bool = False


class CallCheck(BaseModel):
    """The reference worker's judgement of one call."""

    model_config = ConfigDict(extra="forbid")

    call: int
    family: str = "standard"
    state: State
    mismatch: MismatchDetail | None = None
    findings: list[Finding] = Field(default_factory=list)
    precision_checks: list[PrecisionCheck] = Field(default_factory=list)
    #: the candidate wrote into the input tensors it was handed
    input_mutated: bool = False
    #: index of an output that is constant where the reference's varies
    constant_output: int | None = None
    #: per output, a hash of the candidate's bytes and of the reference's (replay detection across trials)
    fingerprints: list[str] = Field(default_factory=list)
    expected_fingerprints: list[str] = Field(default_factory=list)
    #: an output changed after the call returned, while the candidate was frozen (work outlived forward)
    late_write: list[int] = Field(default_factory=list)
    #: the reference's own outputs are non-finite (a stress family that is dropped)
    reference_nonfinite: bool = False
    #: the reference raised on this call's inputs ("Type: message"); only stress families may, and they are dropped
    reference_error: str = ""
    oracle_error: str = ""
    #: dtype of the reference's first output (reported tolerances follow it)
    output_dtype: str | None = None
