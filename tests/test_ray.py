"""Scale out on Ray (issue 19), on one local Ray instance (2 CPUs) started once for this module.

``predict --engine ray`` over dev images gives the local engine's rows (same numbers to 1e-6), with
a corrupt file as an error row; a job whose driver is killed midway completes only the rest when run
again; ``evaluate --engine ray`` writes the local report; the Ray Serve deployment answers the REST
contract with the JSON of the app's own REST server and forms batches of concurrent requests.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from copy import copy
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from ganorigin.cli import TEST_WEIGHTS_WARNING, main
from ganorigin.training import find_images, predict_paths

from app_server import free_port
from uvicorn_server import ThreadedServer

ROOT = Path(__file__).resolve().parents[1]
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "GANORIGIN_REST_MAX_INFLIGHT": "16"}


@pytest.fixture(scope="module")
def ray_address(weights_env):
    """A local Ray instance (2 CPUs, no dashboard) whose workers see the test weights; stopped after."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as env:
        for name, value in {**weights_env, **RAY_ENV}.items():
            env.setenv(name, value)
        context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield context.address_info["gcs_address"]
        finally:
            from ray import serve

            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="module")
def inputs(dev_sample, tmp_path_factory) -> Path:
    """A folder of dev images (one per class and format) and a corrupt PNG."""
    folder = tmp_path_factory.mktemp("inputs")
    for path in dev_sample[:4]:
        shutil.copy(path, folder / f"{path.parent.name}_{path.name}")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 10)
    return folder


@pytest.fixture(scope="module")
def local_rows(model, inputs) -> dict:
    return {row["path"]: row for row in predict_paths(model, find_images([inputs]), progress=False)}


def assert_same_rows(rows: list, expected: dict) -> None:
    assert sorted(row["path"] for row in rows) == sorted(expected)
    for row in rows:
        want = expected[row["path"]]
        assert list(row) == list(want)
        for column, value in want.items():
            if isinstance(value, float):
                assert math.isclose(row[column], value, abs_tol=1e-6), (row["path"], column)
            else:
                assert row[column] == value, (row["path"], column)


def test_ray_engine_gives_the_local_rows_and_an_error_row(ray_address, inputs, model, local_rows, tmp_path, capsys):
    out = tmp_path / "rows"
    status = main(["predict", str(inputs), "--engine", "ray", "--format", "parquet", "--out", str(out),
                   "--batch-size", "2", "--commfor-threshold", "0", "--no-progress"])
    rows = pq.read_table(sorted(out.glob("*.parquet"))).to_pylist()
    local = copy(model)  # the same model, Community Forensics' threshold at 0 as the command's
    local.commfor_threshold = 0.0
    expected = {row["path"]: row for row in predict_paths(local, find_images([inputs]), progress=False)}
    assert any(expected[path]["verdict"] != row["verdict"] for path, row in local_rows.items()), (
        "the threshold changes some verdicts")
    assert_same_rows(rows, expected)
    corrupt = next(row for row in rows if row["path"].endswith("corrupt.png"))
    assert corrupt["error"].startswith(str(inputs / "corrupt.png")) and corrupt["fake_probability"] is None
    assert status == 1  # one input could not be read, as with the local engine
    err = capsys.readouterr().err
    assert f"{len(local_rows) - 1} analysed, 1 could not be read, 0 already in the output" in err
    assert TEST_WEIGHTS_WARNING in err  # the test weights say what they are, as on the local engine
    again = main(["predict", str(inputs), "--engine", "ray", "--format", "parquet", "--out", str(out),
                  "--batch-size", "2", "--commfor-threshold", "0", "--no-progress"])
    assert again == 1, "the output still holds a row that could not be read: the job's status stays the same"
    assert (f"0 analysed, 0 could not be read, {len(local_rows)} already in the output (1 of them could not be "
            "read)") in capsys.readouterr().err


def test_a_video_given_to_the_ray_engine_is_refused_with_the_way_to_analyse_it(inputs, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    assert main(["predict", str(inputs), str(clip), "--engine", "ray", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"videos run on the local engine (without --engine ray): {clip}" in err and "Traceback" not in err


def test_a_plan_that_leaves_no_cpu_to_decode_is_refused(ray_address, inputs, capsys):
    assert main(["predict", str(inputs), "--engine", "ray", "--actors", "2", "--cpus-per-actor", "1", "--no-progress"]) == 2
    assert "2 actors x 1 CPUs leave no CPU for decoding on a cluster of 2 CPUs" in capsys.readouterr().err
    for flags, message in {("--actors", "0"): "--actors must be at least 1; got 0.",
                           ("--actors", "-1"): "--actors must be at least 1; got -1.",
                           ("--cpus-per-actor", "0"): "--cpus-per-actor must be greater than 0; got 0.",
                           ("--cpus-per-actor", "-1"): "--cpus-per-actor must be greater than 0; got -1."}.items():
        assert main(["predict", str(inputs), "--engine", "ray", *flags, "--no-progress"]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_a_cluster_address_where_no_ray_runs_is_one_line(inputs, weights_env):
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):  # a cluster's GCS (Ray alone would wait
        # minutes), and a Ray client address
        run = subprocess.run([sys.executable, "-m", "ganorigin", "predict", str(inputs), "--engine", "ray",
                              "--address", address, "--no-progress"], cwd=ROOT, env={**os.environ, **weights_env,
                              **RAY_ENV}, capture_output=True, text=True, timeout=300)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert f"No Ray cluster answers at --address {address}" in run.stderr and "ray start --head" in run.stderr


def test_killed_job_completes_only_the_rest(ray_address, inputs, local_rows, tmp_path, weights_env):
    """The driver is killed (SIGKILL) once some rows are written; the re-run scores only the others."""
    out = tmp_path / "rows.jsonl"
    command = [sys.executable, "-m", "ganorigin", "predict", str(inputs), "--engine", "ray", "--address", ray_address,
               "--format", "jsonl", "--out", str(out), "--batch-size", "1", "--no-progress"]
    env = {**os.environ, **weights_env, **RAY_ENV, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out.is_file() and out.read_bytes().count(b"\n") >= 1):
            assert job.poll() is None and time.monotonic() < deadline, "the job ended before writing a row"
            time.sleep(0.05)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    first = [line for line in out.read_text().splitlines() if line.endswith("}")]
    assert 1 <= len(first) < len(local_rows)

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert_same_rows(rows, local_rows)  # every input exactly once
    unreadable = int(not any('corrupt.png"' in line for line in first))  # the corrupt input, if the rerun had it
    assert f"{len(local_rows) - len(first) - unreadable} analysed, {unreadable} could not be read" in rerun.stderr
    assert f"{len(first)} already in the output" in rerun.stderr
    noise = [line for line in rerun.stderr.splitlines() if " INFO " in line or "Progress bars disabled" in line]
    assert not noise, f"Ray's notes on the command's stderr: {noise}"


def test_evaluate_on_ray_writes_the_local_report(ray_address, model, dev_images, tmp_path):
    from ganorigin.training import evaluate

    data = tmp_path / "data"
    for cls in ("real", "stylegan2", "other_gan"):
        (data / cls).mkdir(parents=True)
        for path in dev_images[cls][:1]:
            shutil.copy(path, data / cls / path.name)
    local = evaluate(model, data, tmp_path / "local", progress=False)
    assert main(["evaluate", str(data), "--engine", "ray", "--out", str(tmp_path / "ray"), "--no-progress"]) == 0
    on_ray = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert on_ray["per_class"] == local["per_class"] and on_ray["failed"] == local["failed"]
    assert on_ray["detection"]["n_fake"] == local["detection"]["n_fake"] == 2
    assert math.isclose(on_ray["detection"]["roc_auc"], local["detection"]["roc_auc"], abs_tol=1e-9)
    assert on_ray["attribution"]["confusion"] == local["attribution"]["confusion"]
    assert (tmp_path / "ray" / "predictions.csv").read_text().count("\n") == 4


def test_extract_on_ray_writes_the_local_shards_and_resumes(ray_address, sources, dev_images, tmp_path, capsys):
    """``--limit`` stops the Ray job after its first batch; the re-run encodes only the rest, and the
    shards equal the local engine's (keys, digests, codes to 1e-6) and record the same e4e weights, so
    either engine resumes the other's; the corrupt file is reported and the status is 1."""
    import numpy as np

    from ganorigin.factory import load_encoder
    from ganorigin.hub import resolve_file
    from ganorigin.training import extract_features, load_latents

    data = tmp_path / "data"
    for cls in ("progan", "stylegan2"):
        (data / cls).mkdir(parents=True)
        shutil.copy(dev_images[cls][0], data / cls / dev_images[cls][0].name)
    (data / "progan" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    encoder = load_encoder(resolve_file("e4e.ffhq_encode", sources))
    local = extract_features(data, tmp_path / "local", encoder, augment=1, batch_size=2, progress=False)
    args = ["extract", str(data), "--out", str(tmp_path / "ray"), "--augment", "1", "--batch-size", "2",
            "--engine", "ray", "--no-progress"]
    stopped = main([*args, "--limit", "2"])  # stopped early, as asked: 0 unless the corrupt file came first
    assert stopped == (1 if "could not read" in capsys.readouterr().err else 0)
    first = load_latents(tmp_path / "ray")
    assert 2 <= len(first.keys) < 4
    capsys.readouterr()
    assert main(args) == 1  # complete, but one file could not be read
    assert capsys.readouterr().err.count("could not read") == 1
    ours, theirs = load_latents(tmp_path / "ray"), load_latents(tmp_path / "local")
    assert ours.keys.tolist() == theirs.keys.tolist() and len(ours.keys) == 4 == local.encoded
    assert ours.sources.tolist() == theirs.sources.tolist()
    assert np.abs(ours.features - theirs.features).max() <= 1e-6
    assert len(list((tmp_path / "ray").glob("shard-*.npz"))) >= 2  # the first run's shard was kept
    again = extract_features(data, tmp_path / "ray", encoder, augment=1, batch_size=2, progress=False)
    assert again.encoded == 0 and again.already_done == 4 and len(again.failed) == 2  # the corrupt file's copies


@pytest.fixture(scope="module")
def serve_url(ray_address):
    from ray import serve

    from ganorigin.scale.serve import GANOriginDeployment

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deployment = GANOriginDeployment.options(user_config={"max_batch_size": 8, "batch_wait_s": 0.5})
    serve.run(deployment.bind(), name="ganorigin", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while httpx.get(url + "/health", timeout=10).json()["status"] != "ready":
        assert time.monotonic() < deadline, "the Serve replica did not load the weights"
        time.sleep(0.5)
    yield url
    serve.delete("ganorigin")


@pytest.fixture(scope="module")
def rest_url(model):
    """The app's own REST server (uvicorn, real HTTP) on the same model."""
    from ganorigin.serving.rest import create_rest_app
    from ganorigin.serving.service import ModelService

    service = ModelService(loader=lambda: model).start()
    assert service.wait(60) == "ready"
    with ThreadedServer(create_rest_app(service)) as server:
        yield server.url


def _post(url: str, path: Path, **form) -> httpx.Response:
    return httpx.post(url + "/predict", files={"image": (path.name, path.read_bytes())}, data=form, timeout=120)


def test_serve_answers_the_rest_contract(serve_url, rest_url, inputs):
    images = sorted(inputs.glob("*"))
    for path in images[:2]:
        for form in ({}, {"threshold": "0.3"}):
            served, local = _post(serve_url, path, **form), _post(rest_url, path, **form)
            assert (served.status_code, served.json()) == (local.status_code, local.json()), path.name
    corrupt = _post(serve_url, inputs / "corrupt.png")
    assert corrupt.status_code == 422 and corrupt.json() == _post(rest_url, inputs / "corrupt.png").json()
    bad = _post(serve_url, images[0], threshold="2")
    assert (bad.status_code, bad.json()) == (422, _post(rest_url, images[0], threshold="2").json())
    health = httpx.get(serve_url + "/health", timeout=120).json()
    local_health = httpx.get(rest_url + "/health", timeout=120).json()
    assert health.keys() == local_health.keys() and health["status"] == "ready" and health["weights_loaded"]
    assert health["weights"] == local_health["weights"] and health["threshold"] == local_health["threshold"]


def test_serve_batches_concurrent_requests(serve_url, rest_url, inputs):
    from ray import serve

    images = [p for p in sorted(inputs.glob("*")) if p.name != "corrupt.png"] * 2
    expected = {p.name: _post(rest_url, p).json() for p in set(images)}
    with ThreadPoolExecutor(len(images)) as pool:
        answers = list(pool.map(lambda p: _post(serve_url, p), images))
    assert [a.status_code for a in answers] == [200] * len(images)
    assert [a.json() for a in answers] == [expected[p.name] for p in images]
    sizes = serve.get_app_handle("ganorigin").batch_sizes.remote().result()
    assert max(sizes) > 1, sizes  # concurrent requests shared a forward pass
    print(f"batch sizes formed: {sizes}")



def test_uris_are_listed_and_read_through_pyarrow_and_fsspec(inputs):
    """``file://`` goes through pyarrow's filesystem, ``memory://`` through fsspec's; folders are listed
    recursively, ``.txt`` lists resolve against their folder, and each file's bytes come back whole."""
    import fsspec

    from ganorigin.errors import InvalidImageError
    from ganorigin.scale.inputs import list_inputs, read_input

    local = sorted(p for p in inputs.iterdir())
    assert list_inputs([f"file://{inputs}"]) == [f"file://{p}" for p in local]
    assert read_input(f"file://{local[0]}") == local[0].read_bytes()

    memory = fsspec.filesystem("memory")
    for path in local[:2]:
        memory.pipe(f"/faces/sub/{path.name}", path.read_bytes())
    memory.pipe("/faces/list.txt", f"sub/{local[0].name}\n# a comment\n".encode())
    assert list_inputs(["memory://faces/sub"]) == [f"memory:///faces/sub/{p.name}" for p in local[:2]]
    assert list_inputs(["memory://faces/list.txt"]) == [f"memory://faces/sub/{local[0].name}"]
    assert read_input(f"memory://faces/sub/{local[1].name}") == local[1].read_bytes()
    with pytest.raises(InvalidImageError, match="No image file named 'gone.png'"):
        read_input("memory://faces/gone.png")


def test_serve_config_is_valid_and_names_the_deployment():
    """``serve run serve/config.yaml`` would accept the file: Serve's own schema, the import path, batching."""
    import importlib

    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve" / "config.yaml").read_text()))
    app = config.applications[0]
    from ray import serve

    from ganorigin.scale.serve import GANOriginDeployment

    module, _, name = app.import_path.partition(":")
    assert isinstance(getattr(importlib.import_module(module), name), serve.Application)
    assert [d.name for d in app.deployments] == [GANOriginDeployment.name]
    assert app.deployments[0].ray_actor_options.num_gpus == 0, "as shipped it must run where there is no GPU"
    assert set(app.deployments[0].user_config) == {"max_batch_size", "batch_wait_s"}
