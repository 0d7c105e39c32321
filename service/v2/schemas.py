"""Request and answer shapes of the v2 protocol (validation and OpenAPI documentation).

Tensor `data` stays untyped here: `codec` checks it against the tensor's datatype and shape,
which a schema cannot express. Parameter values are what the protocol allows (bool, number,
string); unknown parameters are accepted and ignored, as the protocol asks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

ParameterValue = bool | int | float | str
Parameters = dict[str, ParameterValue]
Dimension = Annotated[StrictInt, Field(ge=0)]


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_In):
    """One input tensor: data inline (`data`) or in the binary section (`binary_data_size`)."""

    name: StrictStr
    shape: list[Dimension]
    datatype: StrictStr
    parameters: Parameters = Field(default_factory=dict)
    data: Any = None


class RequestOutput(_In):
    """One requested output, with `binary_data` and `classification` parameters."""

    name: StrictStr
    parameters: Parameters = Field(default_factory=dict)


class InferenceRequest(_In):
    """The JSON header of `POST /v2/models/{name}/infer`."""

    id: StrictStr | None = None
    parameters: Parameters = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


# --------------------------------------------------------------------------- answers


class ErrorResponse(_Out):
    """Every error on /v2."""

    error: str = Field(description="One line for humans.")


class ServerMetadata(_Out):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(_Out):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks the dynamic batch dimension.")


class ModelMetadata(_Out):
    name: str = Field(description="`<dataset>.<model>`.")
    versions: list[str] = Field(description="Loaded versions (only the one asked for, if any).")
    platform: Literal["onnxruntime_onnx"]
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class LiveResponse(_Out):
    live: bool


class ReadyResponse(_Out):
    ready: bool


class ModelReadyResponse(_Out):
    name: str
    ready: bool


class ResponseOutput(_Out):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, ParameterValue] | None = Field(
        default=None, description="`binary_data_size` when the data is in the binary section."
    )
    data: list[Any] | None = Field(default=None, description="Row-major, flattened.")


class InferenceResponse(_Out):
    """The JSON part of an inference answer (followed by the binary section, if any)."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class RepositoryIndexRequest(_In):
    ready: bool = Field(default=False, description="Only models that are ready.")


class RepositoryEntry(_Out):
    name: str
    version: str | None = None
    state: str = Field(description="`READY`, `UNAVAILABLE` (failed to load) or `LOADING`.")
    reason: str = ""
