"""A scikit-learn model behind KServe's V1 and Open Inference Protocol (V2) endpoints.

The kserve SDK routes requests and renders errors; this module turns request bodies into a
feature matrix and predictions into responses. Every problem with a request becomes kserve's
`InvalidInput` (HTTP 400, `{"error": "..."}`) with a message that names the instance, input or
feature at fault, so no user input can reach scikit-learn unchecked and cause a 500.

Accepted forms (N rows, F features, in the order of `features`):

V1 `POST /v1/models/NAME:predict` -> {"predictions": labels, "probabilities": [[p0, p1], ...]}
  {"instances": [{feature: value, ...}, ...]}   records (extra keys are ignored)
  {"instances": [[v1, ..., vF], ...]}           rows in feature order
  {feature: value, ...}                         one flat record (AI Core's sample request)
  [record or row, ...]                          a bare list of instances
  {"inputs": {feature: [N values], ...}}        columnar -> {"outputs": ..., "probabilities": ...}
  {"inputs": [record or row, ...]}              row form of "inputs" -> {"outputs": ...}

V2 `POST /v2/models/NAME/infer` -> outputs `predict` [N] and `predict_proba` [N, classes]
  parameters.content_type "np" (or one input not named after a feature): one tensor [N, F] or [F]
  parameters.content_type "pd" (or inputs named after features): one input per feature, [N]
  BYTES inputs (content_type "str" or none) hold numbers as strings and are parsed.
"""

from __future__ import annotations

import json
import math
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
import pandas as pd
import sklearn
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput
from kserve.logging import logger

# Tried in this order, as KServe's own sklearn server does.
MODEL_FILES = ("model.joblib", "model.pkl", "model.pickle")
METADATA_FILE = "metadata.json"

NUMERIC_DATATYPES = {
    "BOOL": False,  # refused below: a churn feature is a number, not a truth value
    "INT8": True, "INT16": True, "INT32": True, "INT64": True,
    "UINT8": True, "UINT16": True, "UINT32": True, "UINT64": True,
    "FP16": True, "FP32": True, "FP64": True,
}  # fmt: skip
CONTENT_TYPES = ("np", "pd")


class ModelLoadError(Exception):
    """The model folder holds no loadable model; the server exits with this message."""


def find_model_file(model_dir: Path) -> Path | None:
    for name in MODEL_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    return None


def _describe(value: Any) -> str:
    """A short, quoted description of a JSON value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"string {json.dumps(text)}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bytes):
        return "bytes"
    return f"{type(value).__name__} {value!r}"


def _number(value: Any, where: str) -> float:
    # bool is an int in Python and a distinct JSON type: refuse it rather than guess 0/1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where} must be a number, got {_describe(value)}")
    try:
        number = float(value)
    except OverflowError as exc:
        raise InvalidInput(f"{where} is out of range: {value!r}") from exc
    if not math.isfinite(number):
        raise InvalidInput(f"{where} must be a finite number, got {value!r}")
    return number


def _parse_number(text: Any, where: str) -> float:
    """A number sent as a string (BYTES tensors with content_type "str")."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{where} is not UTF-8 text") from exc
    if not isinstance(text, str):
        raise InvalidInput(f"{where} must be a string holding a number, got {_describe(text)}")
    try:
        number = float(text.strip())
    except ValueError as exc:
        raise InvalidInput(f"{where} must be a number, got {_describe(text)}") from exc
    if not math.isfinite(number):
        raise InvalidInput(f"{where} must be a finite number, got {_describe(text)}")
    return number


def _flatten(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


@dataclass
class Prediction:
    labels: np.ndarray
    probabilities: np.ndarray | None


class SklearnModel(Model):
    """One scikit-learn estimator (usually a Pipeline) loaded from a model folder."""

    def __init__(self, name: str, model_dir: Path, storage_uri: str = "") -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.storage_uri = storage_uri
        self.estimator: Any = None
        self.features: list[str] = []
        self.named_columns = False
        self.version = "1"
        self.metadata: dict[str, Any] = {}

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> bool:
        started = time.monotonic()
        path = find_model_file(self.model_dir)
        if path is None:
            raise ModelLoadError(
                f"no model in {self.model_dir} (STORAGE_URI={self.storage_uri or 'unset'}): "
                f"expected one of {', '.join(MODEL_FILES)}"
            )
        self.metadata = self._read_metadata()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.estimator = joblib.load(path)
            except PermissionError as exc:
                raise ModelLoadError(
                    f"cannot read {path} (STORAGE_URI={self.storage_uri or 'unset'}): permission "
                    "denied; make the model files readable by all (chmod -R a+rX)"
                ) from exc
            except Exception as exc:  # a pickle can fail in any way; all mean "not loadable"
                raise ModelLoadError(
                    f"cannot load {path} (STORAGE_URI={self.storage_uri or 'unset'}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        for warning in caught:
            # Mostly InconsistentVersionWarning: the pickle came from another scikit-learn.
            logger.warning("while loading %s: %s", path, warning.message)
        if not hasattr(self.estimator, "predict"):
            raise ModelLoadError(
                f"{path} holds a {type(self.estimator).__name__}, not a scikit-learn estimator"
            )
        self.features, self.named_columns = self._feature_names(path)
        # A model folder without metadata is version "1", the only version it can have.
        self.version = str(self.metadata.get("version", "1"))
        self.ready = True
        steps = getattr(self.estimator, "steps", None) or [("", self.estimator)]
        kind = " + ".join(type(step).__name__ for _, step in steps)
        logger.info(
            "loaded model %r version %s from %s in %.2fs: %s, %d features (%s), "
            "scikit-learn %s (trained with %s); STORAGE_URI=%s",
            self.name,
            self.version,
            path,
            time.monotonic() - started,
            kind,
            len(self.features),
            ", ".join(self.features),
            sklearn.__version__,
            self.metadata.get("sklearn_version", "unknown"),
            self.storage_uri or "unset",
        )
        return self.ready

    def _read_metadata(self) -> dict[str, Any]:
        path = self.model_dir / METADATA_FILE
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelLoadError(f"{path} must hold a JSON object")
        return data

    def _feature_names(self, path: Path) -> tuple[list[str], bool]:
        fitted = getattr(self.estimator, "feature_names_in_", None)
        listed = self.metadata.get("features")
        if fitted is not None:
            names = [str(n) for n in fitted]
            if listed is not None and list(listed) != names:
                raise ModelLoadError(
                    f"{self.model_dir / METADATA_FILE} lists features {listed}, "
                    f"but the model in {path} was fitted on {names}"
                )
            return names, True
        if listed is not None:
            if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
                raise ModelLoadError(f"{self.model_dir / METADATA_FILE}: features must be names")
            return list(listed), False
        count = getattr(self.estimator, "n_features_in_", None)
        if count is None:
            raise ModelLoadError(
                f"{path}: the model has no feature names and no n_features_in_; "
                f'list them as "features" in {METADATA_FILE}'
            )
        return [f"x{i}" for i in range(int(count))], False

    # -- metadata for GET /v2/models/NAME ----------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": f, "datatype": "FP64", "shape": [-1]} for f in self.features]

    def get_output_types(self) -> list[dict[str, Any]]:
        outputs = [{"name": "predict", "datatype": self._label_datatype(), "shape": [-1]}]
        if hasattr(self.estimator, "predict_proba"):
            classes = len(getattr(self.estimator, "classes_", [])) or -1
            outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": [-1, classes]})
        return outputs

    def _label_datatype(self) -> str:
        classes = np.asarray(getattr(self.estimator, "classes_", np.array([0])))
        return _datatype(classes)

    # -- inference -------------------------------------------------------------------------

    def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        if isinstance(payload, InferRequest):
            return self._predict_v2(payload)
        return self._predict_v1(payload)

    def explain(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        raise NotImplementedError("this runtime serves no explainer")

    def _predict_v1(self, body: Any) -> dict[str, Any]:
        matrix, key = self.decode_v1(body)
        result = self._run(matrix)
        response: dict[str, Any] = {key: result.labels.tolist()}
        if result.probabilities is not None:
            response["probabilities"] = result.probabilities.tolist()
        return response

    def _predict_v2(self, request: InferRequest) -> InferResponse:
        result = self._run(self.decode_v2(request))
        outputs = [
            InferOutput(
                name="predict",
                shape=list(result.labels.shape),
                datatype=_datatype(result.labels),
                data=result.labels,
            )
        ]
        if result.probabilities is not None:
            outputs.append(
                InferOutput(
                    name="predict_proba",
                    shape=list(result.probabilities.shape),
                    datatype="FP64",
                    data=result.probabilities,
                )
            )
        return InferResponse(
            # The protocol echoes the request's id; one is made up when the client sent none.
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            model_version=self.version,
            infer_outputs=outputs,
            requested_outputs=request.request_outputs,
            use_binary_outputs=request.use_binary_outputs,
        )

    def _run(self, matrix: np.ndarray) -> Prediction:
        frame: Any = pd.DataFrame(matrix, columns=self.features) if self.named_columns else matrix
        labels = np.asarray(self.estimator.predict(frame))
        probabilities = None
        if hasattr(self.estimator, "predict_proba"):
            probabilities = np.asarray(self.estimator.predict_proba(frame), dtype=np.float64)
        return Prediction(labels, probabilities)

    # -- V1 decoding -----------------------------------------------------------------------

    def decode_v1(self, body: Any) -> tuple[np.ndarray, str]:
        """The feature matrix of a V1 body, and the response key ("predictions" or "outputs")."""
        if isinstance(body, bytes | bytearray):
            # kserve hands over the raw body when the Content-Type is not exactly JSON (curl -d
            # sends application/x-www-form-urlencoded): try JSON anyway.
            try:
                body = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"request body is not JSON: {exc}") from exc
        if isinstance(body, list):
            return self._rows(body, "instance"), "predictions"
        if not isinstance(body, dict):
            raise InvalidInput(
                'request body must be a JSON object: {"instances": [...]}, '
                f'{{"inputs": ...}} or one record of features; got {_describe(body)}'
            )
        if "instances" in body:
            instances = body["instances"]
            if not isinstance(instances, list):
                raise InvalidInput(f'"instances" must be a list, got {_describe(instances)}')
            return self._rows(instances, "instance"), "predictions"
        if "inputs" in body:
            inputs = body["inputs"]
            if isinstance(inputs, list):
                return self._rows(inputs, "input"), "outputs"
            if isinstance(inputs, dict):
                return self._columns(inputs), "outputs"
            raise InvalidInput(
                f'"inputs" must be an object of columns or a list of rows, got {_describe(inputs)}'
            )
        return self._rows([body], "record"), "predictions"

    def _rows(self, rows: list[Any], what: str) -> np.ndarray:
        if not rows:
            raise InvalidInput(f"no {what}s to predict: the list is empty")
        matrix = np.empty((len(rows), len(self.features)), dtype=np.float64)
        for i, row in enumerate(rows):
            label = what if what == "record" else f"{what} {i}"
            if isinstance(row, dict):
                self._check_names(row.keys(), label)
                for j, feature in enumerate(self.features):
                    matrix[i, j] = _number(row[feature], f"{label}: feature {feature!r}")
            elif isinstance(row, list):
                if len(row) != len(self.features):
                    raise InvalidInput(
                        f"{label} has {len(row)} values; expected {len(self.features)} in "
                        f"feature order ({', '.join(self.features)})"
                    )
                for j, value in enumerate(row):
                    matrix[i, j] = _number(value, f"{label}: value {j} ({self.features[j]!r})")
            else:
                raise InvalidInput(
                    f"{label} must be an object of features or a list of "
                    f"{len(self.features)} values, got {_describe(row)}"
                )
        return matrix

    def _columns(self, columns: dict[str, Any]) -> np.ndarray:
        self._check_names(columns.keys(), '"inputs"')
        values = [columns[f] for f in self.features]
        if all(not isinstance(v, list) for v in values):
            return self._rows([columns], "record")  # {"inputs": {feature: scalar}}: one record
        lengths = {
            f: len(v) if isinstance(v, list) else None
            for f, v in zip(self.features, values, strict=True)
        }
        if None in lengths.values() or len(set(lengths.values())) != 1:
            shown = ", ".join(f"{f}: {'scalar' if n is None else n}" for f, n in lengths.items())
            raise InvalidInput(f'"inputs" columns must be lists of equal length; got {shown}')
        rows = next(iter(lengths.values()))
        if not rows:
            raise InvalidInput('no rows to predict: the "inputs" columns are empty')
        matrix = np.empty((rows, len(self.features)), dtype=np.float64)
        for j, (feature, column) in enumerate(zip(self.features, values, strict=True)):
            for i, value in enumerate(column):
                matrix[i, j] = _number(value, f'"inputs" column {feature!r}, row {i}')
        return matrix

    def _check_names(self, names: Any, where: str) -> None:
        present = set(names)
        missing = [f for f in self.features if f not in present]
        if missing:
            unknown = sorted(str(n) for n in present - set(self.features))
            hint = f" (not features of this model: {', '.join(unknown)})" if unknown else ""
            raise InvalidInput(f"{where}: missing features: {', '.join(missing)}{hint}")

    # -- V2 decoding -----------------------------------------------------------------------

    def decode_v2(self, request: InferRequest) -> np.ndarray:
        parameters = request.parameters or {}
        content_type = parameters.get("content_type")
        if content_type is not None and content_type not in CONTENT_TYPES:
            raise InvalidInput(
                f'unsupported request content_type {content_type!r}: use "np" (one tensor '
                f'[N, {len(self.features)}]) or "pd" (one input per feature)'
            )
        inputs = request.inputs
        if not inputs:
            raise InvalidInput("the request has no inputs")
        names = [i.name for i in inputs]
        if len(set(names)) != len(names):
            raise InvalidInput(f"input names must be unique, got {', '.join(names)}")
        tensor_form = content_type == "np" or (
            content_type is None and len(inputs) == 1 and inputs[0].name not in self.features
        )
        if tensor_form:
            return self._tensor(inputs)
        return self._frame(inputs)

    def _tensor(self, inputs: Sequence[Any]) -> np.ndarray:
        width = len(self.features)
        if len(inputs) != 1:
            raise InvalidInput(
                f'content_type "np" takes one input tensor [N, {width}], got {len(inputs)} inputs'
            )
        tensor = inputs[0]
        values = self._values(tensor)
        shape = list(tensor.shape)
        if len(shape) == 1 and shape[0] == width:
            shape = [1, width]  # one row sent as a vector
        if len(shape) != 2 or shape[1] != width or shape[0] < 1:
            raise InvalidInput(
                f"input {tensor.name!r} has shape {list(tensor.shape)}; expected [N, {width}] "
                f"with features in order ({', '.join(self.features)})"
            )
        return values.reshape(shape)

    def _frame(self, inputs: Sequence[Any]) -> np.ndarray:
        by_name = {i.name: i for i in inputs}
        self._check_names(by_name.keys(), "inputs")
        columns = []
        for feature in self.features:
            column = by_name[feature]
            shape = list(column.shape)
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
                raise InvalidInput(
                    f"input {feature!r} has shape {shape}; each feature input is a column [N]"
                )
            columns.append(self._values(column))
        lengths = {len(c) for c in columns}
        if len(lengths) != 1:
            shown = ", ".join(f"{f}: {len(c)}" for f, c in zip(self.features, columns, strict=True))
            raise InvalidInput(f"feature inputs must have the same length; got {shown}")
        if not lengths.pop():
            raise InvalidInput("no rows to predict: the inputs are empty")
        return np.column_stack(columns)

    def _values(self, tensor: Any) -> np.ndarray:
        """The tensor's data as float64, checked against its datatype and shape."""
        where = f"input {tensor.name!r}"
        datatype = tensor.datatype
        shape = list(tensor.shape)
        if any(not isinstance(d, int) or d < 0 for d in shape):
            raise InvalidInput(f"{where} has an invalid shape {shape}")
        expected = math.prod(shape)
        if tensor.data is None and getattr(tensor, "_raw_data", None) is not None:
            # The binary extension: kserve decodes the bytes according to the datatype.
            try:
                values = np.asarray(tensor.as_numpy(), dtype=np.float64).reshape(-1)
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"{where}: cannot decode binary data: {exc}") from exc
        elif datatype == "BYTES":
            content = (tensor.parameters or {}).get("content_type", "str")
            if content != "str":
                raise InvalidInput(
                    f'{where}: BYTES inputs take content_type "str", got {content!r}'
                )
            texts = enumerate(_flatten(tensor.data))
            values = np.array(
                [_parse_number(v, f"{where} value {k}") for k, v in texts], dtype=np.float64
            )
        elif NUMERIC_DATATYPES.get(datatype):
            integral = datatype.startswith(("INT", "UINT"))
            parsed = []
            for k, value in enumerate(_flatten(tensor.data)):
                number = _number(value, f"{where} ({datatype}) value {k}")
                if integral and not number.is_integer():
                    raise InvalidInput(f"{where} is {datatype} but value {k} is {value!r}")
                if datatype.startswith("UINT") and number < 0:
                    raise InvalidInput(f"{where} is {datatype} but value {k} is {value!r}")
                parsed.append(number)
            values = np.array(parsed, dtype=np.float64)
        else:
            raise InvalidInput(
                f"{where} has datatype {datatype!r}; use a numeric datatype (FP64, FP32, "
                "INT64, ...) or BYTES holding numbers as strings"
            )
        if values.size != expected:
            raise InvalidInput(
                f"{where} has shape {shape} ({expected} values) but carries {values.size} values"
            )
        return values


def _datatype(array: np.ndarray) -> str:
    kind = array.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return f"{'U' if kind == 'u' else ''}INT{array.dtype.itemsize * 8}"
    if kind == "f":
        return f"FP{array.dtype.itemsize * 8}"
    return "BYTES"
