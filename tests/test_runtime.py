"""The sklearn model runtime image, tested as it runs: real image, real containers, real HTTP.

`scripts/build-images` builds reconciler/sklearn-runtime:1 and trains models/churn/1 and /2 (it
is cached: about a second when nothing changed). Each test talks to containers started from
that image with a model version bind-mounted read-only at /mnt/models, as the reconciler runs
them, on a random port of 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

# The image build in this module's fixtures (minutes from nothing) has its own limit, 1800 s:
# the per-test limit covers the test itself.
pytestmark = [pytest.mark.engine, pytest.mark.timeout(300, func_only=True)]

PROJECT = Path(__file__).resolve().parent.parent
IMAGE = "reconciler/sklearn-runtime:1"
MODELS = PROJECT / "models" / "churn"
# Every container of this session carries the label with the session's own value, so teardown
# removes exactly these (never another session's).
LABEL = "reconciler-test.runtime"
SESSION = uuid.uuid4().hex[:10]

# The sample request of SAP AI Core's documentation ("seed"), and the model's feature order.
SEED_RECORD = {
    "region": 3, "tenure": 37, "age": 53, "address": 13, "income": 48, "employ": 10,
    "gender": 0, "equip": 0,
}  # fmt: skip
FEATURES = list(SEED_RECORD)
# A new customer renting equipment: the synthetic data makes them likely to churn.
NEW_CUSTOMER = {
    "region": 1, "tenure": 2, "age": 24, "address": 1, "income": 25, "employ": 0,
    "gender": 1, "equip": 1,
}  # fmt: skip


def row(record: dict[str, Any]) -> list[Any]:
    return [record[f] for f in FEATURES]


# --- HTTP --------------------------------------------------------------------------------------


def call(
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    content_type: str = "application/json",
    timeout: float = 10,
) -> tuple[int, Any]:
    """One request; returns (status, parsed JSON body). Every answer of the server is JSON."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": content_type} if data is not None else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    try:
        return status, json.loads(text) if text else None
    except ValueError as exc:
        raise AssertionError(f"{method} {url} answered {status} with non-JSON {text!r}") from exc


# --- containers --------------------------------------------------------------------------------


@dataclass
class Server:
    container: str
    url: str
    startup_seconds: float

    def get(self, path: str) -> tuple[int, Any]:
        return call("GET", self.url + path)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        return call("POST", self.url + path, body, **kwargs)


class Runtime:
    """Starts containers of the runtime image and removes them all at the end."""

    def __init__(self, client: docker.APIClient) -> None:
        self.client = client
        self.started: list[str] = []

    def create(
        self,
        model_dir: Path | None,
        env: dict[str, str] | None = None,
        host_config: dict[str, Any] | None = None,
        **kw: Any,
    ) -> str:
        if host_config is None:
            binds = {str(model_dir): {"bind": "/mnt/models", "mode": "ro"}} if model_dir else None
            host_config = self.client.create_host_config(
                binds=binds, port_bindings={8080: ("127.0.0.1", None)}
            )
        container = self.client.create_container(
            IMAGE,
            name=f"runtime-test-{SESSION}-{len(self.started)}",
            labels={LABEL: SESSION},
            environment=env or {},
            ports=[8080],
            host_config=host_config,
            **kw,
        )["Id"]
        self.started.append(container)
        self.client.start(container)
        return container

    def logs(self, container: str) -> str:
        return self.client.logs(container).decode(errors="replace")

    def serve(self, model_dir: Path, env: dict[str, str] | None = None) -> Server:
        started = time.monotonic()
        container = self.create(model_dir, {"STORAGE_URI": f"file:{model_dir}", **(env or {})})
        port = self.client.port(container, 8080)[0]["HostPort"]
        url = f"http://127.0.0.1:{port}"
        deadline = started + 60
        while True:
            state = self.client.inspect_container(container)["State"]
            if not state["Running"]:
                raise AssertionError(
                    f"runtime exited with {state['ExitCode']} before it was ready:\n"
                    + self.logs(container)
                )
            try:
                if call("GET", url + "/v2/health/ready", timeout=2)[0] == 200:
                    return Server(container, url, time.monotonic() - started)
            except (OSError, http.client.HTTPException):
                pass  # not listening yet (docker-proxy accepts, then drops the connection)
            if time.monotonic() > deadline:
                raise AssertionError(f"runtime not ready after 60s:\n{self.logs(container)}")
            time.sleep(0.1)

    def wait_exit(self, container: str, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while True:
            state = self.client.inspect_container(container)["State"]
            if not state["Running"] and state["Status"] != "created":
                return int(state["ExitCode"])
            if time.monotonic() > deadline:
                raise AssertionError(f"container still running after {timeout}s")
            time.sleep(0.1)

    def cleanup(self) -> None:
        for container in self.client.containers(all=True, filters={"label": f"{LABEL}={SESSION}"}):
            self.client.remove_container(container["Id"], force=True)


@pytest.fixture(scope="session")
def runtime() -> Iterator[Runtime]:
    for script in ("ensure-docker", "build-images"):
        done = subprocess.run(
            [PROJECT / "scripts" / script], capture_output=True, text=True, timeout=1800
        )
        if done.returncode != 0:
            pytest.fail(f"scripts/{script} failed:\n{done.stdout}{done.stderr}")
    rt = Runtime(docker.APIClient(version="auto"))
    yield rt
    rt.cleanup()


@pytest.fixture(scope="module")
def v1(runtime: Runtime) -> Server:
    return runtime.serve(MODELS / "1")


@pytest.fixture(scope="module")
def v2(runtime: Runtime) -> Server:
    return runtime.serve(MODELS / "2")


def predict_v1(server: Server, body: Any) -> dict[str, Any]:
    status, answer = server.post("/v1/models/churn:predict", body)
    assert status == 200, answer
    return answer


def churn_probability(server: Server, record: dict[str, Any]) -> float:
    return predict_v1(server, {"instances": [record]})["probabilities"][0][1]


# --- V1 ----------------------------------------------------------------------------------------


def test_v1_lists_the_model_and_says_it_is_ready(v1: Server) -> None:
    assert v1.get("/v1/models") == (200, {"models": ["churn"]})
    assert v1.get("/v1/models/churn") == (200, {"name": "churn", "ready": True})


def test_v1_instances_as_records(v1: Server) -> None:
    answer = predict_v1(v1, {"instances": [SEED_RECORD, NEW_CUSTOMER]})
    assert set(answer) == {"predictions", "probabilities"}
    assert answer["predictions"] == [0, 1]
    for label, probabilities in zip(answer["predictions"], answer["probabilities"], strict=True):
        assert len(probabilities) == 2
        assert sum(probabilities) == pytest.approx(1.0)
        assert label == probabilities.index(max(probabilities))


def test_v1_instances_as_rows_in_feature_order_answer_the_same(v1: Server) -> None:
    records = predict_v1(v1, {"instances": [SEED_RECORD, NEW_CUSTOMER]})
    rows = predict_v1(v1, {"instances": [row(SEED_RECORD), row(NEW_CUSTOMER)]})
    assert rows == records


def test_v1_flat_record_of_the_ai_core_docs_is_one_instance(v1: Server) -> None:
    answer = predict_v1(v1, SEED_RECORD)
    assert answer == predict_v1(v1, {"instances": [SEED_RECORD]})
    assert len(answer["predictions"]) == 1
    # Fields the model does not use (other columns of the data set) are ignored.
    assert predict_v1(v1, {**SEED_RECORD, "ed": 4, "custcat": 2}) == answer


def test_v1_inputs_columnar_answers_with_outputs(v1: Server) -> None:
    columns = {f: [SEED_RECORD[f], NEW_CUSTOMER[f]] for f in FEATURES}
    answer = predict_v1(v1, {"inputs": columns})
    expected = predict_v1(v1, {"instances": [SEED_RECORD, NEW_CUSTOMER]})
    assert answer == {
        "outputs": expected["predictions"],
        "probabilities": expected["probabilities"],
    }
    assert predict_v1(v1, {"inputs": [row(SEED_RECORD)]})["outputs"] == [0]


def test_v1_body_sent_with_curl_default_content_type_is_read_as_json(v1: Server) -> None:
    # `curl -d '{...}'` sends application/x-www-form-urlencoded.
    raw = json.dumps(SEED_RECORD).encode()
    status, answer = v1.post(
        "/v1/models/churn:predict", raw=raw, content_type="application/x-www-form-urlencoded"
    )
    assert (status, answer) == (200, predict_v1(v1, SEED_RECORD))


# --- V2 (Open Inference Protocol) ---------------------------------------------------------------


def test_v2_health_and_server_metadata(v1: Server) -> None:
    assert v1.get("/v2/health/live") == (200, {"live": True})
    assert v1.get("/v2/health/ready") == (200, {"ready": True})
    status, metadata = v1.get("/v2")
    assert status == 200
    assert metadata["name"] == "kserve"
    assert metadata["version"].startswith("0.16.")


def test_v2_model_metadata_lists_features_and_outputs(v1: Server) -> None:
    status, metadata = v1.get("/v2/models/churn")
    assert status == 200
    assert metadata["name"] == "churn"
    assert metadata["versions"] == ["1"]
    assert [i["name"] for i in metadata["inputs"]] == FEATURES
    assert {i["datatype"] for i in metadata["inputs"]} == {"FP64"}
    assert metadata["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]},
    ]
    assert v1.get("/v2/models/churn/ready") == (200, {"name": "churn", "ready": True})
    assert v1.get("/v2/models/churn/versions/1") == (200, metadata)
    assert v1.get("/v2/models/churn/versions/1/ready") == (200, {"name": "churn", "ready": True})


def test_v2_infer_np_tensor_echoes_the_id(v1: Server) -> None:
    body = {
        "id": "request-42",
        "parameters": {"content_type": "np"},
        "inputs": [
            {
                "name": "customers",
                "shape": [2, 8],
                "datatype": "FP64",
                "data": [row(SEED_RECORD), row(NEW_CUSTOMER)],
            }
        ],
    }
    status, answer = v1.post("/v2/models/churn/infer", body)
    assert status == 200, answer
    assert answer["id"] == "request-42"
    assert (answer["model_name"], answer["model_version"]) == ("churn", "1")
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["predict"]["shape"] == [2]
    assert outputs["predict"]["datatype"] == "INT64"
    assert outputs["predict_proba"]["shape"] == [2, 2]
    assert outputs["predict_proba"]["datatype"] == "FP64"
    expected = predict_v1(v1, {"instances": [SEED_RECORD, NEW_CUSTOMER]})
    assert outputs["predict"]["data"] == expected["predictions"]
    flat = [p for pair in expected["probabilities"] for p in pair]
    assert outputs["predict_proba"]["data"] == pytest.approx(flat)


def test_v2_infer_pd_one_input_per_column_with_a_str_bytes_column(v1: Server) -> None:
    records = [SEED_RECORD, NEW_CUSTOMER]
    inputs = [
        {"name": f, "shape": [2], "datatype": "INT64", "data": [r[f] for r in records]}
        for f in FEATURES
    ]
    # MLServer-style: numbers as strings in a BYTES input with the "str" content type.
    inputs[FEATURES.index("income")] = {
        "name": "income",
        "shape": [2],
        "datatype": "BYTES",
        "parameters": {"content_type": "str"},
        "data": [str(r["income"]) for r in records],
    }
    body = {"id": "pd-1", "parameters": {"content_type": "pd"}, "inputs": inputs}
    status, answer = v1.post("/v2/models/churn/infer", body)
    assert status == 200, answer
    assert answer["id"] == "pd-1"
    predict = next(o for o in answer["outputs"] if o["name"] == "predict")
    assert predict["data"] == predict_v1(v1, {"instances": records})["predictions"]


def test_v2_infer_accepts_mlserver_style_parameters_with_headers(v1: Server) -> None:
    """The request shape of AI Core's V2 documentation (seed 002): `parameters` carry
    `headers: {}` and extra properties at request, input and output level."""
    extras = {"headers": {}, "ANY_ADDITIONAL_PROPERTY": "anything"}
    body = {
        "id": "seed-002",
        "parameters": {"content_type": "pd", **extras},
        "inputs": [
            {
                "name": f,
                "shape": [1],
                "datatype": "INT64",
                "parameters": {"content_type": "np", **extras},
                "data": [SEED_RECORD[f]],
            }
            for f in FEATURES
        ],
        "outputs": [{"name": "predict", "parameters": {"content_type": "np", **extras}}],
    }
    status, answer = v1.post("/v2/models/churn/infer", body)
    assert status == 200, answer
    assert answer["id"] == "seed-002"
    assert [o["name"] for o in answer["outputs"]] == ["predict"]
    assert answer["outputs"][0]["data"] == predict_v1(v1, SEED_RECORD)["predictions"]


def test_v2_infer_on_the_versioned_path_with_requested_outputs(v1: Server) -> None:
    body = {
        "inputs": [{"name": "x", "shape": [8], "datatype": "FP64", "data": row(SEED_RECORD)}],
        "outputs": [{"name": "predict_proba"}],
    }
    status, answer = v1.post("/v2/models/churn/versions/1/infer", body)
    assert status == 200, answer
    assert [o["name"] for o in answer["outputs"]] == ["predict_proba"]
    assert answer["outputs"][0]["data"][1] == pytest.approx(churn_probability(v1, SEED_RECORD))
    assert answer["id"]  # made up when the request has none: the protocol's id is required
    status, answer = v1.post("/v2/models/churn/versions/2/infer", body)
    assert status == 404
    assert "no version '2'" in answer["error"]


def test_version_2_answers_with_other_probabilities_than_version_1(v1: Server, v2: Server) -> None:
    assert v2.get("/v2/models/churn")[1]["versions"] == ["2"]
    for record in (SEED_RECORD, NEW_CUSTOMER):
        assert abs(churn_probability(v1, record) - churn_probability(v2, record)) > 0.01


# --- errors ------------------------------------------------------------------------------------

V1 = "/v1/models/churn:predict"
V2 = "/v2/models/churn/infer"


def tensor(shape: list[int], data: list[Any], datatype: str = "FP64") -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}


BAD_PAYLOADS = [
    pytest.param(V1, {"instances": [{"region": 3}]}, ["missing features", "tenure", "equip"], id="v1-missing-features"),
    pytest.param(V1, {"tenure": 37, "tenur": 1}, ["missing features: region", "not features of this model: tenur"], id="v1-flat-record-typo"),
    pytest.param(V1, {"instances": [{**SEED_RECORD, "tenure": "37 months"}]}, ["'tenure' must be a number", '"37 months"'], id="v1-string-for-number"),
    pytest.param(V1, {"instances": [{**SEED_RECORD, "equip": None}]}, ["'equip' must be a number, got null"], id="v1-null"),
    pytest.param(V1, {"instances": [{**SEED_RECORD, "gender": True}]}, ["got boolean true"], id="v1-boolean"),
    pytest.param(V1, {"instances": [[3, 37, 53]]}, ["has 3 values; expected 8"], id="v1-short-row"),
    pytest.param(V1, {"instances": ["3,37,53"]}, ["instance 0 must be an object"], id="v1-instance-is-a-string"),
    pytest.param(V1, {"instances": 5}, ["instances", "list"], id="v1-instances-not-a-list"),
    pytest.param(V1, {"instances": []}, ["empty"], id="v1-no-instances"),
    pytest.param(V1, 42, ["must be a JSON object"], id="v1-scalar-body"),
    pytest.param(V1, b"region=3&tenure=37", ["JSON"], id="v1-not-json"),
    pytest.param(V1, {"inputs": {**{f: [1, 2] for f in FEATURES}, "age": [1]}}, ["equal length", "age: 1"], id="v1-ragged-columns"),
    pytest.param(V1, {"inputs": "x"}, ['"inputs" must be'], id="v1-inputs-string"),
    pytest.param(V2, tensor([1, 7], list(range(7))), ["shape [1, 7]", "[N, 8]"], id="v2-wrong-width"),
    pytest.param(V2, tensor([2, 8], list(range(8))), ["shape [2, 8] (16 values) but carries 8"], id="v2-shape-data-mismatch"),
    pytest.param(V2, tensor([1, 8], [*range(7), "x"]), ["must be a number", '"x"'], id="v2-string-in-fp64"),
    pytest.param(V2, tensor([1, 8], [*range(7), 8.5], "INT64"), ["INT64", "8.5"], id="v2-fraction-in-int64"),
    pytest.param(V2, tensor([1, 8], [*map(str, range(7)), "eight"], "BYTES"), ['"eight"'], id="v2-bytes-not-a-number"),
    pytest.param(V2, tensor([1, 8], list(range(8)), "COMPLEX"), ["datatype 'COMPLEX'"], id="v2-unknown-datatype"),
    pytest.param(V2, {"parameters": {"content_type": "pd"}, "inputs": [{"name": "tenure", "shape": [1], "datatype": "FP64", "data": [1]}]}, ["missing features: region, age"], id="v2-pd-missing-columns"),
    pytest.param(V2, {"parameters": {"content_type": "base64"}, **tensor([1, 8], list(range(8)))}, ["unsupported request content_type 'base64'"], id="v2-unknown-content-type"),
    pytest.param(V2, {"id": "1"}, ["inputs: Field required"], id="v2-no-inputs-field"),
    pytest.param(V2, {"inputs": []}, ["no inputs"], id="v2-empty-inputs"),
    pytest.param(V2, {**tensor([1, 8], list(range(8))), "outputs": [{"name": "label"}]}, ["'label'"], id="v2-unknown-output"),
    pytest.param(V2, {"inputs": [{"name": "x", "shape": "1x8", "datatype": "FP64", "data": []}]}, ["inputs.0.shape"], id="v2-shape-not-a-list"),
    pytest.param(V2, b"{not json", ["not valid JSON"], id="v2-not-json"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "fragments"), BAD_PAYLOADS)
def test_bad_payload_gets_400_naming_the_problem(
    v1: Server, path: str, body: Any, fragments: list[str]
) -> None:
    if isinstance(body, bytes):
        status, answer = v1.post(path, raw=body)
    else:
        status, answer = v1.post(path, body)
    assert status == 400, answer
    assert set(answer) == {"error"}
    for fragment in fragments:
        assert fragment in answer["error"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models/nope"),
        ("POST", "/v1/models/nope:predict"),
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v2/models/nope/versions/1/infer"),
    ],
)
def test_unknown_model_is_404(v1: Server, method: str, path: str) -> None:
    body = tensor([1, 8], list(range(8))) if method == "POST" else None
    status, answer = call(method, v1.url + path, body)
    assert status == 404
    assert "nope" in answer["error"]


def test_unknown_path_is_404_with_an_error_body(v1: Server) -> None:
    assert v1.get("/v3/models") == (404, {"error": "Not Found: GET /v3/models"})


def test_model_cannot_be_unloaded_over_http(v1: Server) -> None:
    status, answer = v1.post("/v2/repository/models/churn/unload")
    assert status == 501
    assert "fixed model" in answer["error"]
    assert v1.get("/v2/models/churn/ready") == (200, {"name": "churn", "ready": True})


# --- the container's life ------------------------------------------------------------------------


def test_starts_in_seconds_and_is_ready_only_after_loading(runtime: Runtime, v1: Server) -> None:
    # The behaviour ("starts in seconds"), bounded generously: a loaded machine is slower, and
    # the serve helper itself gives up at 60 s.
    assert v1.startup_seconds < 20
    logs = runtime.logs(v1.container)
    loaded = logs.index("loaded model 'churn' version 1 from /mnt/models/model.joblib")
    assert loaded < logs.index("Uvicorn running on http://0.0.0.0:8080")
    assert "STORAGE_URI=file:" in logs[loaded:]


@pytest.mark.parametrize("mount", ["empty folder", "no mount"])
def test_without_a_model_the_container_exits_with_a_clear_message(
    runtime: Runtime, tmp_path: Path, mount: str
) -> None:
    tmp_path.chmod(0o755)  # readable by the server's user: only the model is missing
    container = runtime.create(
        tmp_path if mount == "empty folder" else None, {"STORAGE_URI": "file:models/churn/9"}
    )
    assert runtime.wait_exit(container) != 0
    logs = runtime.logs(container)
    assert "error: no model in /mnt/models (STORAGE_URI=file:models/churn/9)" in logs
    assert "Traceback" not in logs


def test_a_model_folder_the_server_cannot_read_is_named(runtime: Runtime, tmp_path: Path) -> None:
    # The server is not root: a model folder private to its owner cannot be read.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "model.joblib").write_bytes((MODELS / "1" / "model.joblib").read_bytes())
    container = runtime.create(private, {"STORAGE_URI": "file:private"})
    assert runtime.wait_exit(container) != 0
    logs = runtime.logs(container)
    assert "error: cannot read /mnt/models (STORAGE_URI=file:private): permission denied" in logs
    assert "Traceback" not in logs


def test_a_corrupt_model_file_is_refused_with_its_reason(runtime: Runtime, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "model.joblib").write_bytes(b"this is not a pickle")
    (tmp_path / "model.joblib").chmod(0o644)
    container = runtime.create(tmp_path, {"STORAGE_URI": "file:broken"})
    assert runtime.wait_exit(container) != 0
    logs = runtime.logs(container)
    assert "error: cannot load /mnt/models/model.joblib (STORAGE_URI=file:broken)" in logs
    assert "Traceback" not in logs


def test_a_bad_port_setting_is_refused(runtime: Runtime) -> None:
    container = runtime.create(MODELS / "1", {"PORT": "80a"})
    assert runtime.wait_exit(container) != 0
    assert "error: PORT='80a' is not a port number" in runtime.logs(container)


def test_serves_under_model_name_and_port_from_the_environment(runtime: Runtime) -> None:
    container = runtime.create(MODELS / "1", {"MODEL_NAME": "churn-eu", "PORT": "9000"})
    # The fixture published 8080; this one listens on 9000: ask from inside the container.
    deadline = time.monotonic() + 60
    probe = (
        "import urllib.request as u; "
        "print(u.urlopen('http://127.0.0.1:9000/v1/models/churn-eu').read().decode())"
    )
    while True:
        exec_id = runtime.client.exec_create(container, ["python", "-c", probe])["Id"]
        output = runtime.client.exec_start(exec_id).decode()
        if runtime.client.exec_inspect(exec_id)["ExitCode"] == 0:
            break
        assert time.monotonic() < deadline, output + runtime.logs(container)
        time.sleep(0.2)
    assert json.loads(output) == {"name": "churn-eu", "ready": True}


def test_stops_promptly_on_sigterm(runtime: Runtime) -> None:
    server = runtime.serve(MODELS / "1")
    runtime.client.stop(server.container, timeout=20)
    # Exit code 0, not 137: it ended on SIGTERM within the 20 s Docker gives it, not killed.
    state = runtime.client.inspect_container(server.container)["State"]
    assert state["ExitCode"] == 0, runtime.logs(server.container)


def test_image_runs_as_non_root_and_exposes_8080(runtime: Runtime) -> None:
    config = runtime.client.inspect_image(IMAGE)["Config"]
    assert config["User"] == "10001:10001"
    assert "8080/tcp" in config["ExposedPorts"]


# --- the churn models ----------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_training_is_deterministic(runtime: Runtime, tmp_path: Path) -> None:
    """Training again in the image gives byte-identical model files to models/churn."""
    out = tmp_path / "churn"
    out.mkdir()
    container = runtime.create(
        None,
        command=["python", "/app/train_churn.py", "--out", "/out"],
        user=f"{os.getuid()}:{os.getgid()}",
        host_config=runtime.client.create_host_config(
            binds={str(out): {"bind": "/out", "mode": "rw"}}, network_mode="none"
        ),
    )
    assert runtime.wait_exit(container, timeout=120) == 0, runtime.logs(container)
    for version in ("1", "2"):
        for name in ("model.joblib", "metadata.json"):
            assert sha256(out / version / name) == sha256(MODELS / version / name), name
    metadata = json.loads((MODELS / "2" / "metadata.json").read_text())
    assert metadata["version"] == "2"
    assert metadata["features"] == FEATURES
    assert metadata["dataset"]["kind"].startswith("synthetic")


def test_serves_any_sklearn_model_without_metadata_or_feature_names(
    runtime: Runtime, tmp_path: Path
) -> None:
    """A plain estimator fitted on a NumPy array: features are x0..x2, the version is "1"."""
    tmp_path.chmod(0o755)
    fit = (
        "import joblib, numpy as np; from sklearn.linear_model import LogisticRegression; "
        "x = np.array([[0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0]] * 5, dtype=float); "
        "y = np.array([0, 1, 0, 1] * 5); "
        "joblib.dump(LogisticRegression().fit(x, y), '/out/model.pkl')"
    )
    trainer = runtime.create(
        None,
        command=["python", "-c", fit],
        user=f"{os.getuid()}:{os.getgid()}",
        host_config=runtime.client.create_host_config(
            binds={str(tmp_path): {"bind": "/out", "mode": "rw"}}, network_mode="none"
        ),
    )
    assert runtime.wait_exit(trainer, timeout=120) == 0, runtime.logs(trainer)
    (tmp_path / "model.pkl").chmod(0o644)
    server = runtime.serve(tmp_path, {"MODEL_NAME": "plain"})
    status, metadata = server.get("/v2/models/plain")
    assert status == 200
    assert [i["name"] for i in metadata["inputs"]] == ["x0", "x1", "x2"]
    assert metadata["versions"] == ["1"]
    status, answer = server.post("/v1/models/plain:predict", {"instances": [[0, 0, 1], [1, 1, 0]]})
    assert status == 200, answer
    assert answer["predictions"] == [0, 1]
    status, answer = server.post("/v1/models/plain:predict", {"x0": 1, "x1": 1})
    assert status == 400
    assert "missing features: x2" in answer["error"]
