#!/usr/bin/env python3
"""The Triton backend against a real tritonserver; scripts/triton-check.sh installs the pinned
Python packages, builds the binaries and runs this. Exits non-zero on the first failure.

  1. a synthetic category and a model fitted on it (`patchcore synth`, `patchcore fit`);
  2. a model repository (triton/model_repository/patchcore/config.pbtxt and the model) and a
     tritonserver on 127.0.0.1 with free HTTP, gRPC and metrics ports;
  3. every test image (RGB, one gray, one of another size) through HTTP and gRPC: SCORE,
     NORMALIZED and ANOMALOUS equal `patchcore predict --batch 1`'s score, normalized and label
     (scores to 1e-5 relative), ANOMALY_MAP equals the map the engine gives in-process through
     the C ABI (patchcore_predict, the values `predict --out` colours) to 1e-5;
  4. 8 concurrent clients x 50 requests, one in ten a 0x0 image: every good answer right, every
     bad one an error naming IMAGE, and the server's statistics show batches larger than 1;
  5. bad requests (wrong datatype, 0x0 image, 4 channels, no input): errors naming what is
     wrong, and the server stays ready and still answers correctly;
  6. with --perf: latency and throughput through Triton against the engine in-process;
  7. a model whose file is truncated, loaded on request: the load fails with the engine's
     message, and the good model still answers;
  8. SIGTERM: the server unloads the model and exits 0 within 60 s.
"""

import argparse
import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from ctypes import POINTER, byref, c_bool, c_char_p, c_float, c_size_t, c_uint8, c_uint32, c_void_p
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = "patchcore"
BROKEN = "broken"
TOL = 1e-5
VERDICT = ["SCORE", "NORMALIZED", "ANOMALOUS"]
ALL_OUTPUTS = VERDICT + ["ANOMALY_MAP"]


def step(title):
    print(f"\n== {title} ==", flush=True)


def fail(message):
    print(f"triton-check: FAILED: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


# ---------------------------------------------------------------- the engine in-process (C ABI)


class PatchcoreImage(ctypes.Structure):
    _fields_ = [
        ("pixels", POINTER(c_uint8)),
        ("width", c_uint32),
        ("height", c_uint32),
        ("stride_bytes", c_size_t),
        ("channels", c_uint32),
    ]


class PatchcoreResult(ctypes.Structure):
    _fields_ = [("score", c_float), ("normalized", c_float), ("is_anomalous", c_bool)]


class Engine:
    """libpatchcore.so through ctypes: the PNG decoder and the in-process reference."""

    def __init__(self, library, model):
        self.lib = ctypes.CDLL(str(library))
        self.lib.patchcore_last_error.restype = c_char_p
        self.lib.patchcore_load.argtypes = [c_char_p, c_char_p, POINTER(c_void_p)]
        self.lib.patchcore_image_load.argtypes = [c_char_p, POINTER(PatchcoreImage)]
        self.lib.patchcore_image_free.argtypes = [POINTER(PatchcoreImage)]
        self.lib.patchcore_predict.argtypes = [
            c_void_p, POINTER(c_uint8), c_uint32, c_uint32, c_size_t, c_uint32,
            POINTER(PatchcoreResult), POINTER(c_float), c_size_t,
        ]
        self.lib.patchcore_free.argtypes = [c_void_p]
        self.handle = c_void_p()
        self.check(self.lib.patchcore_load(str(model).encode(), b"cpu", byref(self.handle)), "patchcore_load")

    def check(self, status, call):
        if status != 0:
            fail(f"{call}: {self.lib.patchcore_last_error().decode()}")

    def decode(self, path):
        image = PatchcoreImage()
        self.check(self.lib.patchcore_image_load(str(path).encode(), byref(image)), f"patchcore_image_load {path}")
        h, w = image.height, image.width
        flat = np.ctypeslib.as_array(image.pixels, shape=(h * image.stride_bytes,))
        pixels = flat.reshape(h, image.stride_bytes)[:, : w * 3].reshape(h, w, 3).copy()
        self.check(self.lib.patchcore_image_free(byref(image)), "patchcore_image_free")
        return pixels

    def predict(self, pixels, with_map=True):
        pixels = np.ascontiguousarray(pixels)
        h, w, c = pixels.shape
        result = PatchcoreResult()
        heat = np.empty((h, w), np.float32) if with_map else None
        status = self.lib.patchcore_predict(
            self.handle, pixels.ctypes.data_as(POINTER(c_uint8)), w, h, w * c, c, byref(result),
            heat.ctypes.data_as(POINTER(c_float)) if with_map else None, h * w if with_map else 0,
        )
        self.check(status, "patchcore_predict")
        return result, heat


def write_png(path, pixels):
    """An 8-bit gray or RGB PNG (no filter), for the images `patchcore predict` reads."""
    h, w, c = pixels.shape
    raw = b"".join(b"\0" + pixels[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, {1: 0, 3: 2}[c], 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


# ---------------------------------------------------------------- the server


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root, repository, backends, log):
        self.ports = {name: free_port() for name in ("http", "grpc", "metrics")}
        libs = root / "nvidia_pytriton.libs"
        env = dict(os.environ, LD_LIBRARY_PATH=f"{libs}:{os.environ.get('LD_LIBRARY_PATH', '')}")
        command = [
            str(root / "pytriton/tritonserver/bin/tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1", f"--http-port={self.ports['http']}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.ports['grpc']}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.ports['metrics']}",
            "--allow-gpu-metrics=false",
            # Explicit control: the server starts with the good model only; the broken one is
            # loaded on request, so its failure is an answer instead of a failed start.
            "--model-control-mode=explicit", f"--load-model={MODEL}",
            "--exit-timeout-secs=30",
        ]
        self.log = log
        self.process = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
        self.http_url = f"127.0.0.1:{self.ports['http']}"
        self.grpc_url = f"127.0.0.1:{self.ports['grpc']}"
        self.clients = []

    def http(self):
        """A new HTTP client (one per thread: they are not thread-safe), closed before the shutdown."""
        self.clients.append(httpclient.InferenceServerClient(self.http_url))
        return self.clients[-1]

    def grpc(self):
        self.clients.append(grpcclient.InferenceServerClient(self.grpc_url))
        return self.clients[-1]

    def close_clients(self):
        # Open keep-alive connections would hold the server's shutdown until its exit timeout.
        for client in self.clients:
            client.close()
        self.clients.clear()

    def log_tail(self, lines=40):
        return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout=180):
        client = self.http()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                fail(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if client.is_server_ready() and client.is_model_ready(MODEL):
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        fail(f"tritonserver not ready after {timeout} s:\n{self.log_tail()}")

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------- requests


def http_infer(client, pixels, outputs=ALL_OUTPUTS, datatype="UINT8"):
    image = httpclient.InferInput("IMAGE", [1, *pixels.shape], datatype)
    image.set_data_from_numpy(pixels[None])
    wanted = [httpclient.InferRequestedOutput(name) for name in outputs]
    result = client.infer(MODEL, [image], outputs=wanted)
    return {name: result.as_numpy(name) for name in outputs}


def grpc_infer(client, pixels, outputs=ALL_OUTPUTS):
    image = grpcclient.InferInput("IMAGE", [1, *pixels.shape], "UINT8")
    image.set_data_from_numpy(pixels[None])
    wanted = [grpcclient.InferRequestedOutput(name) for name in outputs]
    result = client.infer(MODEL, [image], outputs=wanted)
    return {name: result.as_numpy(name) for name in outputs}


def mismatch(got, case):
    """Why an answer differs from the references (None when it matches)."""
    cli, heat = case["cli"], case["map"]
    score, normalized = float(got["SCORE"][0, 0]), float(got["NORMALIZED"][0, 0])
    if abs(score - cli["score"]) > TOL * max(1.0, abs(cli["score"])):
        return f"SCORE {score!r} vs patchcore predict {cli['score']!r}"
    if abs(normalized - cli["normalized"]) > TOL:
        return f"NORMALIZED {normalized!r} vs patchcore predict {cli['normalized']!r}"
    if bool(got["ANOMALOUS"][0, 0]) != (cli["label"] == "anomalous"):
        return f"ANOMALOUS {bool(got['ANOMALOUS'][0, 0])} vs patchcore predict {cli['label']}"
    if "ANOMALY_MAP" in got:
        answer = got["ANOMALY_MAP"]
        if answer.shape != (1, *heat.shape):
            return f"ANOMALY_MAP shape {answer.shape}, expected {(1, *heat.shape)}"
        worst = float(np.abs(answer[0] - heat).max())
        if worst > TOL:
            return f"ANOMALY_MAP differs from the in-process map by {worst:.3g}"
    return None


def expect_error(call, needle, what):
    try:
        call()
    except InferenceServerException as e:
        message = str(e)
        if needle not in message:
            fail(f"{what}: the error {message!r} does not name {needle!r}")
        print(f"{what}: refused: {message}")
        return
    fail(f"{what}: answered instead of refused")


# ---------------------------------------------------------------- the checks


def prepare(args, work):
    step("a synthetic category and a model fitted on it")
    data = work / "data"
    subprocess.run([args.patchcore, "synth", "--out", data, "--category", "woven", "--size", str(args.size), "--seed", "3"], check=True)
    category = data / "woven"
    model = work / "model.patchcore"
    subprocess.run(
        [args.patchcore, "fit", "--train", category / "train/good", "--val", category / "test", "--out", model, "--size", str(args.size)],
        check=True,
    )
    engine = Engine(args.library, model)
    paths = sorted(p for p in (category / "test").rglob("*.png"))
    # One gray image and one of another size, as PNG files the CLI reads too.
    extra = work / "extra"
    extra.mkdir()
    first, defect = engine.decode(paths[0]), engine.decode(paths[-1])
    gray = np.round(first.astype(np.float32).mean(axis=2)).astype(np.uint8)[:, :, None]
    write_png(extra / "gray.png", gray)
    h, w = defect.shape[:2]
    write_png(extra / "crop.png", np.ascontiguousarray(defect[h // 16 : h * 13 // 16, w // 32 : w * 31 // 32]))
    cases = [{"path": p, "pixels": engine.decode(p)} for p in paths]
    cases += [{"path": extra / "gray.png", "pixels": gray}, {"path": extra / "crop.png", "pixels": engine.decode(extra / "crop.png")}]
    listed = subprocess.run(
        [args.patchcore, "predict", "--model", model, "--batch", "1", *[c["path"] for c in cases]],
        check=True, capture_output=True, text=True,
    ).stdout.splitlines()
    for case, line in zip(cases, listed):
        case["cli"] = json.loads(line)
        if Path(case["cli"]["path"]) != case["path"]:
            fail(f"patchcore predict's lines are out of order at {case['path']}")
        case["map"] = engine.predict(case["pixels"])[1]
    print(f"{len(cases)} images: {len(paths)} test PNGs, a gray one, a {cases[-1]['pixels'].shape[1]}x{cases[-1]['pixels'].shape[0]} crop")
    return model, engine, cases


def repository(args, work, model):
    """The model, and BROKEN: the same config over a truncated model file."""
    config = Path(args.config).read_text()
    for name, content in ((MODEL, model.read_bytes()), (BROKEN, model.read_bytes()[:1000])):
        folder = work / "repository" / name
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(config.replace(f'name: "{MODEL}"', f'name: "{name}"'))
        (folder / "1/model.patchcore").write_bytes(content)
    backends = work / "backends" / MODEL
    backends.mkdir(parents=True)
    (backends / "libtriton_patchcore.so").write_bytes(Path(args.backend).read_bytes())
    return work / "repository", work / "backends"


def check_equal(server, cases):
    step("HTTP and gRPC answers against patchcore predict and the in-process map")
    http = server.http()
    grpc = server.grpc()
    for case in cases:
        for protocol, answer in (("HTTP", http_infer(http, case["pixels"])), ("gRPC", grpc_infer(grpc, case["pixels"]))):
            why = mismatch(answer, case)
            if why:
                fail(f"{protocol} {case['path'].name}: {why}")
    labels = sorted({c["cli"]["label"] for c in cases})
    print(f"{len(cases)} images x HTTP and gRPC: scores, normalized, labels ({', '.join(labels)}) and maps equal")


def check_concurrent(server, cases, clients=8, per_client=50):
    step(f"{clients} concurrent clients x {per_client} requests, dynamic batching")
    failures, answered, refused = [], [0], [0]
    lock = threading.Lock()
    empty = np.zeros((0, 0, 3), np.uint8)

    def run(t):
        client = server.http()
        for i in range(per_client):
            if i % 10 == 9:
                try:
                    http_infer(client, empty, VERDICT)
                    why = "a 0x0 image was answered"
                except InferenceServerException as e:
                    why = None if "IMAGE is 0x0" in str(e) else f"0x0 image: {e}"
                with lock:
                    refused[0] += why is None
                    failures.extend([why] if why else [])
                continue
            case = cases[(t * per_client + i) % len(cases)]
            outputs = ALL_OUTPUTS if i % 2 else VERDICT
            why = mismatch(http_infer(client, case["pixels"], outputs), case)
            with lock:
                answered[0] += why is None
                failures.extend([f"client {t} request {i} {case['path'].name}: {why}"] if why else [])

    threads = [threading.Thread(target=run, args=(t,)) for t in range(clients)]
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.time() - start
    if failures:
        fail(f"{len(failures)} wrong answers, the first: {failures[0]}")
    print(f"{answered[0]} answers right and {refused[0]} 0x0 images refused in {seconds:.1f} s")
    stats = server.http().get_inference_statistics(MODEL)
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["model_stats"][0]["batch_stats"]}
    print("engine batches (images: count):", ", ".join(f"{k}: {v}" for k, v in sorted(batches.items())))
    if max(batches) < 2:
        fail("the server's statistics show no batch larger than 1")


def check_bad_requests(server, cases):
    step("bad requests: errors, and the server stays ready")
    http = server.http()
    grpc = server.grpc()
    floats = np.zeros((8, 8, 3), np.float32)
    expect_error(lambda: http_infer(http, floats, VERDICT, datatype="FP32"), "FP32", "wrong datatype (FP32)")
    expect_error(lambda: http_infer(http, np.zeros((0, 0, 3), np.uint8), VERDICT), "IMAGE is 0x0", "0x0 image (HTTP)")
    expect_error(lambda: grpc_infer(grpc, np.zeros((0, 0, 3), np.uint8), VERDICT), "IMAGE is 0x0", "0x0 image (gRPC)")
    expect_error(lambda: http_infer(http, np.zeros((8, 8, 4), np.uint8), VERDICT), "4 channels", "4 channels")
    expect_error(lambda: http.infer(MODEL, []), "input", "no input")
    if not (http.is_server_ready() and http.is_model_ready(MODEL)):
        fail("the server is not ready after the bad requests")
    why = mismatch(http_infer(http, cases[0]["pixels"]), cases[0])
    if why:
        fail(f"after the bad requests: {why}")
    print("still ready, and the next request is answered right")


def check_broken_model(server, cases):
    step("a model whose file is truncated, loaded on request")
    http = server.http()
    expect_error(lambda: http.load_model(BROKEN), f"model '{BROKEN}': ", "load")
    # Last before the shutdown: a model that failed to load keeps the server's strict readiness
    # false, while the good model goes on answering.
    why = mismatch(http_infer(http, cases[-1]["pixels"]), cases[-1])
    if not http.is_model_ready(MODEL) or why:
        fail(f"{MODEL} after the failed load: ready {http.is_model_ready(MODEL)}, {why}")
    print(f"{MODEL} still ready and answering right")


def check_shutdown(server):
    step("shutdown (SIGTERM)")
    server.close_clients()
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        fail(f"tritonserver still running 60 s after SIGTERM:\n{server.log_tail()}")
    log = Path(server.log).read_text(errors="replace")
    if code != 0:
        fail(f"tritonserver exited with {code}:\n{server.log_tail()}")
    if f"successfully unloaded '{MODEL}'" not in log:
        fail(f"the log does not show the model unloaded:\n{server.log_tail()}")
    # Triton counts down what is still alive ("Timeout N: Found K live models ..."); its last
    # word must be that nothing is.
    if "Found 0 live models and 0 in-flight non-inference requests" not in log:
        fail(f"the server did not report every model and request gone:\n{server.log_tail()}")
    if "panicked" in log:
        fail(f"the server log shows a panic:\n{server.log_tail()}")
    print("model unloaded, 0 live models and requests left, exit code 0, no panic in the log")


# ---------------------------------------------------------------- performance


def percentiles(seconds):
    ms = np.array(seconds) * 1e3
    return f"{np.percentile(ms, 50):7.2f} {np.percentile(ms, 99):7.2f}"


def measure_perf(server, engine, cases, requests=200, clients=8):
    step(f"performance: one {cases[0]['pixels'].shape[1]}x{cases[0]['pixels'].shape[0]} image, SCORE/NORMALIZED/ANOMALOUS only")
    pixels = cases[0]["pixels"]
    rows = []

    def sequential(name, call):
        for _ in range(10):
            call()
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        rows.append((name, 1, len(times) / sum(times), percentiles(times)))

    sequential("in-process (C ABI patchcore_predict)", lambda: engine.predict(pixels, with_map=False))
    http = server.http()
    grpc = server.grpc()
    sequential("Triton HTTP", lambda: http_infer(http, pixels, VERDICT))
    sequential("Triton gRPC", lambda: grpc_infer(grpc, pixels, VERDICT))

    times, lock = [], threading.Lock()

    def run():
        client = server.http()
        for _ in range(requests // clients):
            start = time.perf_counter()
            http_infer(client, pixels, VERDICT)
            with lock:
                times.append(time.perf_counter() - start)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows.append((f"Triton HTTP, dynamic batching", clients, len(times) / (time.perf_counter() - start), percentiles(times)))
    print(f"| path | clients | images/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for name, n, rate, pct in rows:
        p50, p99 = pct.split()
        print(f"| {name} | {n} | {rate:.1f} | {p50} | {p99} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patchcore", required=True, help="the patchcore binary")
    parser.add_argument("--library", required=True, help="libpatchcore.so (the C ABI)")
    parser.add_argument("--backend", required=True, help="libtriton_patchcore.so")
    parser.add_argument("--config", required=True, help="the config.pbtxt to serve with")
    parser.add_argument("--triton", required=True, help="the folder nvidia-pytriton was installed into")
    parser.add_argument("--size", type=int, default=64, help="image side of the category and the model (default 64)")
    parser.add_argument("--perf", action="store_true", help="also measure latency and throughput")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="patchcore-triton-check.") as tmp:
        work = Path(tmp)
        model, engine, cases = prepare(args, work)
        repo, backends = repository(args, work, model)
        step("tritonserver")
        server = Server(Path(args.triton), repo, backends, work / "tritonserver.log")
        try:
            server.wait_ready()
            print(f"ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics 127.0.0.1:{server.ports['metrics']}")
            for line in Path(server.log).read_text(errors="replace").splitlines():
                if "patchcore backend" in line or "runs on" in line:
                    print("log:", line.split("] ", 1)[-1])
            check_equal(server, cases)
            check_bad_requests(server, cases)
            check_concurrent(server, cases)
            if args.perf:
                measure_perf(server, engine, cases)
            check_broken_model(server, cases)
            check_shutdown(server)
        finally:
            server.stop()
    print("\ntriton-check: all checks passed")


if __name__ == "__main__":
    main()
