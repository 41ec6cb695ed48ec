"""Security: TLS and mTLS with certificate rotation, bearer-token and certificate principals, the authorisation
matrix over gRPC and HTTP, admin from loopback only without auth, rate limits.

Certificates are made at test time with ``cryptography``; the server is a real subprocess and the clients are
an unmodified tritonclient (gRPC) and Python's own TLS/HTTP stack.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import socket
import ssl
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import expect_error, infer
from serverproc import ServerProcess
from tritonclient.utils import InferenceServerException

from skewless.server.security.guard import ADMIN, HEALTH, INFERENCE, METADATA, grpc_group, http_group
from skewless.server.security.principals import parse, token_digest

pytestmark = [pytest.mark.slow, pytest.mark.grpc_transports]  # the slow tier: servers of its own per TLS, principal and rate-limit case, certificate rotation

X = {"input": np.random.default_rng(1).random((1, 32), dtype=np.float32)}


# -- certificates --------------------------------------------------------------------------------------------
class Authority:
    def __init__(self, name: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, common_name: str, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
             .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca, other = Authority("test CA"), Authority("other CA")
    files = {"ca": ca.pem, "other_ca": other.pem}
    files["server"], files["server_key"] = ca.issue("localhost", server=True)
    files["next_server"], files["next_server_key"] = other.issue("localhost", server=True)
    files["deployer"], files["deployer_key"] = ca.issue("deployer", server=False)
    files["stranger"], files["stranger_key"] = ca.issue("stranger", server=False)
    files["rogue"], files["rogue_key"] = other.issue("deployer", server=False)  # right name, wrong CA
    out = {}
    for name, data in files.items():
        out[name] = d / f"{name}.pem"
        out[name].write_bytes(data)
    return out


PRINCIPALS = f"""
# principal  groups                   credential
scorer       inference                token:score-secret
dashboard    metadata                 sha256:{token_digest("dash-secret").hex()}
operator     admin,metadata           token:op-secret
deployer     *                        cert
"""


def grpc_client(url: str, pki: dict[str, Path] | None = None, cert: str | None = None) -> grpcclient.InferenceServerClient:
    if pki is None:
        return grpcclient.InferenceServerClient(url)
    return grpcclient.InferenceServerClient(
        url, ssl=True, root_certificates=str(pki["ca"]),
        private_key=str(pki[f"{cert}_key"]) if cert else None,
        certificate_chain=str(pki[cert]) if cert else None)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# -- unit: the file format and the RPC/route groups --------------------------------------------------------
def test_principals_file_format_and_errors():
    tokens, certs = parse(PRINCIPALS)
    assert {p.name for _, p in tokens} == {"scorer", "dashboard", "operator"}
    assert certs["deployer"].groups == {"inference", "metadata", "admin"}
    for bad, says in (("a inference", "expected 'PRINCIPAL GROUPS CREDENTIAL'"),
                      ("a root token:x", "unknown group(s) root"),
                      ("a inference sha256:abc", "64 hex digits"),
                      ("a inference password", "token:SECRET, sha256:HEX or cert"),
                      ("a inference token:", "token:SECRET, sha256:HEX or cert")):
        with pytest.raises(ValueError, match=None) as info:
            parse(f"# comment\n{bad}\n", "p.txt")
        assert says in str(info.value) and "p.txt line 2" in str(info.value)


def test_groups_of_rpcs_and_routes():
    svc = "/inference.GRPCInferenceService/"
    assert grpc_group(svc + "ServerLive") == HEALTH and grpc_group("/grpc.health.v1.Health/Check") == HEALTH
    assert grpc_group(svc + "ModelInfer") == INFERENCE == grpc_group(svc + "ModelStreamInfer")
    assert grpc_group(svc + "ModelMetadata") == METADATA == grpc_group(svc + "RepositoryIndex")
    assert grpc_group(svc + "RepositoryModelLoad") == ADMIN == grpc_group("/skewless.v1.Registry/Rollback")
    assert http_group("GET", "/v2/health/ready") == HEALTH
    assert http_group("POST", "/v2/models/mlp/infer") == INFERENCE
    assert http_group("POST", "/v2/models/mlp/versions/1/infer") == INFERENCE
    # events for windowed aggregates are sent by the same callers as scoring, on both transports
    assert grpc_group("/skewless.v1.Events/Ingest") == INFERENCE == http_group("POST", "/v2/models/m/events")
    assert http_group("POST", "/v2/models/m/versions/2/events") == INFERENCE
    assert http_group("GET", "/v2/models/mlp") == METADATA and http_group("GET", "/metrics") == METADATA
    assert http_group("POST", "/v2/repository/index") == METADATA
    assert http_group("POST", "/v2/repository/models/mlp/load") == ADMIN
    assert http_group("POST", "/v2/logging") == ADMIN


# -- TLS, mTLS and rotation ----------------------------------------------------------------------------------
@pytest.fixture
def live_pki(tmp_path, pki) -> dict[str, Path]:
    """The server's certificate files in a folder of their own, so a test can rotate them."""
    out = dict(pki)
    for name in ("server", "server_key"):
        out[name] = tmp_path / f"{name}.pem"
        out[name].write_bytes(pki[name].read_bytes())
    return out


def test_tls_grpc_and_http_with_rotation(make_repo, live_pki):
    pki = live_pki
    proc = ServerProcess(make_repo("mlp"), "--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"])).start()
    try:
        with grpc_client(proc.grpc_url, pki) as client:
            out = infer(client, "mlp", X).as_numpy("probabilities")
            assert out.shape == (1, 2)
        plain = grpcclient.InferenceServerClient(proc.grpc_url)  # a cleartext client cannot talk to it
        expect_error(lambda: plain.is_server_live(client_timeout=3), "UNAVAILABLE")
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        host, port = proc.rest_url.split(":")
        conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
        conn.request("GET", "/v2/health/ready")
        assert conn.getresponse().status == 200
        conn.close()
        metrics_port = int(proc.http_url.rsplit(":", 1)[1])  # the metrics port is TLS too
        conn = http.client.HTTPSConnection(host, metrics_port, context=ctx, timeout=10)
        conn.request("GET", "/metrics")
        assert b"nv_inference_count" in conn.getresponse().read()

        # Rotate to a certificate of another CA, key first (a half-written pair must not be loaded).
        pki["server_key"].write_bytes(pki["next_server_key"].read_bytes())
        time.sleep(1.2)
        with grpc_client(proc.grpc_url, pki) as client:  # the old pair still serves: key and cert disagree
            assert client.is_server_live(client_timeout=5)
        pki["server"].write_bytes(pki["next_server"].read_bytes())
        time.sleep(1.2)
        new_ctx = ssl.create_default_context(cafile=str(pki["other_ca"]))
        deadline = time.monotonic() + 10
        while True:  # new connections get the new certificate, with no restart
            try:
                conn = http.client.HTTPSConnection(host, int(port), context=new_ctx, timeout=10)
                conn.request("GET", "/v2/health/live")
                assert conn.getresponse().status == 200
                break
            except ssl.SSLError:
                assert time.monotonic() < deadline, "the REST port never served the rotated certificate"
                time.sleep(0.3)
        rotated = dict(pki, ca=pki["other_ca"])
        with grpc_client(proc.grpc_url, rotated) as client:
            assert infer(client, "mlp", X).as_numpy("probabilities").shape == (1, 2)
        with pytest.raises(ssl.SSLError):  # and clients trusting only the old CA now refuse it
            conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
            conn.request("GET", "/v2/health/live")
    finally:
        proc.assert_clean_exit()


def test_mtls_required_and_certificate_principals(make_repo, pki, tmp_path):
    principals = tmp_path / "principals.txt"
    principals.write_text(PRINCIPALS)
    proc = ServerProcess(make_repo("mlp"), "--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"]),
                         "--tls-client-ca", str(pki["ca"]), "--auth-principals", str(principals)).start()
    try:
        with grpc_client(proc.grpc_url, pki, "deployer") as client:  # a certificate principal in every group
            assert infer(client, "mlp", X).as_numpy("probabilities").shape == (1, 2)
            assert client.get_model_repository_index()
        with grpc_client(proc.grpc_url, pki, "stranger") as client:  # a valid certificate naming no one
            expect_error(lambda: client.get_model_metadata("mlp"), "UNAUTHENTICATED", "'stranger' names no principal")
            # a token still works over a certificate that names no one
            assert client.get_model_metadata("mlp", headers=bearer("dash-secret")).name == "mlp"
        with grpc_client(proc.grpc_url, pki) as client:  # no client certificate: the handshake is refused
            expect_error(lambda: client.is_server_live(client_timeout=3), "UNAVAILABLE")
        rogue = dict(pki, deployer=pki["rogue"], deployer_key=pki["rogue_key"])
        with grpc_client(proc.grpc_url, rogue, "deployer") as client:  # right name, untrusted CA
            expect_error(lambda: client.is_server_live(client_timeout=3), "UNAVAILABLE")
        # HTTP with the client certificate
        host, port = proc.rest_url.split(":")
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        ctx.load_cert_chain(pki["deployer"], pki["deployer_key"])
        conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
        conn.request("GET", "/v2/models/mlp")
        assert json.loads(conn.getresponse().read())["name"] == "mlp"
    finally:
        proc.assert_clean_exit()


# -- the authorisation matrix ---------------------------------------------------------------------------------
CALLERS = {"none": None, "wrong": "not-a-token", "scorer": "score-secret", "dashboard": "dash-secret",
           "operator": "op-secret"}
EXPECTED = {  # caller -> (health, inference, metadata, admin)
    "none": ("OK", "UNAUTHENTICATED", "UNAUTHENTICATED", "UNAUTHENTICATED"),
    "wrong": ("OK", "UNAUTHENTICATED", "UNAUTHENTICATED", "UNAUTHENTICATED"),
    "scorer": ("OK", "OK", "PERMISSION_DENIED", "PERMISSION_DENIED"),
    "dashboard": ("OK", "PERMISSION_DENIED", "OK", "PERMISSION_DENIED"),
    "operator": ("OK", "PERMISSION_DENIED", "OK", "OK"),
}
HTTP_CODES = {"OK": 200, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}


@pytest.fixture(scope="module")
def authed(make_repo, tmp_path_factory, grpc_transport):
    principals = tmp_path_factory.mktemp("auth") / "principals.txt"
    principals.write_text(PRINCIPALS)
    proc = ServerProcess(make_repo("mlp"), "--auth-principals", str(principals), "--model-control-mode",
                         "explicit", "--load-model", "*").start()
    yield proc, principals
    proc.assert_clean_exit()


def _grpc_outcome(fn) -> str:
    try:
        fn()
    except InferenceServerException as exc:
        status = exc.status() or ""
        message = exc.message() or ""
        assert "mlp" not in message or status.endswith(("OK", "NOT_FOUND")), message  # no model names leak
        return status.replace("StatusCode.", "")
    return "OK"


def test_authorisation_matrix_grpc(authed):
    proc, _ = authed
    with grpcclient.InferenceServerClient(proc.grpc_url) as client:
        for caller, token in CALLERS.items():
            h = bearer(token) if token else None
            got = (
                _grpc_outcome(lambda h=h: client.is_server_live(headers=h)),
                _grpc_outcome(lambda h=h: infer(client, "mlp", X, headers=h)),
                _grpc_outcome(lambda h=h: client.get_model_metadata("mlp", headers=h)),
                _grpc_outcome(lambda h=h: client.load_model("mlp", headers=h)),
            )
            assert got == EXPECTED[caller], (caller, got)


def _http(url: str, method: str, path: str, token: str | None, body: bytes | None = None) -> tuple[int, dict, bytes]:
    host, port = url.replace("http://", "").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    out = resp.status, dict(resp.getheaders()), resp.read()
    conn.close()
    return out


def test_authorisation_matrix_http(authed):
    proc, _ = authed
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32",
                                   "data": X["input"].ravel().tolist()}]}).encode()
    for caller, token in CALLERS.items():
        got = []
        for method, path, payload in (("GET", "/v2/health/ready", None), ("POST", "/v2/models/mlp/infer", body),
                                      ("GET", "/v2/models/mlp", None),
                                      ("POST", "/v2/repository/models/mlp/load", b"{}")):
            status, headers, text = _http(proc.rest_url, method, path, token, payload)
            got.append(status)
            if status == 401:
                assert headers.get("WWW-Authenticate", "").startswith("Bearer")
            if status in (401, 403):
                assert b"mlp" not in text, text
        assert tuple(got) == tuple(HTTP_CODES[e] for e in EXPECTED[caller]), (caller, got)
    # the metrics port: health open, /metrics (it names models) for metadata callers only
    assert _http(proc.http_url, "GET", "/v2/health/ready", None)[0] == 200
    status, _, text = _http(proc.http_url, "GET", "/metrics", None)
    assert status == 401 and b"mlp" not in text
    assert _http(proc.http_url, "GET", "/metrics", "score-secret")[0] == 403
    status, _, text = _http(proc.http_url, "GET", "/metrics", "dash-secret")
    assert status == 200 and b'model="mlp"' in text


def test_principals_file_reloads_without_restart(authed):
    proc, principals = authed
    with grpcclient.InferenceServerClient(proc.grpc_url) as client:
        infer(client, "mlp", X, headers=bearer("score-secret"))
        original = principals.read_text()
        try:
            principals.write_text(original.replace("token:score-secret", "token:rotated-secret"))
            deadline = time.monotonic() + 5
            while _grpc_outcome(lambda: infer(client, "mlp", X, headers=bearer("score-secret"))) == "OK":
                assert time.monotonic() < deadline, "the revoked token still works"
                time.sleep(0.2)
            infer(client, "mlp", X, headers=bearer("rotated-secret"))
            principals.write_text("this line is not a principal\n")  # a broken file keeps the last good one
            time.sleep(1.2)
            infer(client, "mlp", X, headers=bearer("rotated-secret"))
        finally:
            principals.write_text(original)
        deadline = time.monotonic() + 5
        while _grpc_outcome(lambda: infer(client, "mlp", X, headers=bearer("score-secret"))) != "OK":
            assert time.monotonic() < deadline
            time.sleep(0.2)


# -- no auth configured: admin from loopback only; rate limits ------------------------------------------------
def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if ipaddress.ip_address(addr).is_loopback else addr


def test_admin_refused_from_non_loopback_without_auth(make_repo):
    addr = _non_loopback_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call from")
    proc = ServerProcess(make_repo("mlp"), "--host", "0.0.0.0", "--model-control-mode", "explicit",
                         "--load-model", "*").start()
    try:
        port = proc.grpc_url.rsplit(":", 1)[1]
        with grpcclient.InferenceServerClient(f"{addr}:{port}") as remote:
            infer(remote, "mlp", X)  # inference and metadata: open, as in Triton
            assert remote.get_model_metadata("mlp").name == "mlp"
            expect_error(lambda: remote.unload_model("mlp"), "PERMISSION_DENIED", "loopback only")
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as local:
            local.load_model("mlp")  # the same RPC from this host is accepted
        rest_port = proc.rest_url.rsplit(":", 1)[1]
        status, _, text = _http(f"{addr}:{rest_port}", "POST", "/v2/repository/models/mlp/unload", None, b"{}")
        assert status == 403 and b"loopback only" in text
    finally:
        proc.assert_clean_exit()


def test_rate_limit_per_principal(make_repo, tmp_path):
    principals = tmp_path / "principals.txt"
    principals.write_text(PRINCIPALS)
    proc = ServerProcess(make_repo("mlp"), "--auth-principals", str(principals), "--rate-limit", "5").start()
    try:
        with grpcclient.InferenceServerClient(proc.grpc_url) as client:
            outcomes = [_grpc_outcome(lambda: infer(client, "mlp", X, headers=bearer("score-secret")))
                        for _ in range(20)]
            assert outcomes[:5] == ["OK"] * 5 and outcomes.count("RESOURCE_EXHAUSTED") >= 10, outcomes
            # another principal has a bucket of its own
            assert _grpc_outcome(lambda: client.get_model_metadata("mlp", headers=bearer("dash-secret"))) == "OK"
            time.sleep(0.5)  # refills at 5/s
            assert _grpc_outcome(lambda: infer(client, "mlp", X, headers=bearer("score-secret"))) == "OK"
        status, _, text = _http(proc.rest_url, "GET", "/v2/models/mlp", "dash-secret")
        assert status == 200
    finally:
        proc.assert_clean_exit()


def test_bad_security_flags_fail_fast(make_repo, tmp_path):
    import subprocess
    import sys

    repo = make_repo("mlp")
    bad = tmp_path / "bad.txt"
    bad.write_text("x nope token:y\n")
    for args, says in ((["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", "k"], "no such file"),
                       (["--tls-client-ca", str(bad)], "--tls-cert and --tls-key go together"),
                       (["--auth-principals", str(bad)], "unknown group(s) nope"),
                       (["--rate-limit", "0"], "positive")):
        r = subprocess.run([sys.executable, "-m", "skewless.server.frontend.cli", "serve", "--model-repository",
                            str(repo), "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and says in r.stderr, (args, r.stderr[-500:])


def test_grpc_channel_without_tls_gets_no_reply_from_tls_port(make_repo, pki):
    """A plaintext gRPC channel to the TLS port fails at connect (UNAVAILABLE), never reaches a handler."""
    proc = ServerProcess(make_repo("mlp"), "--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"])).start()
    try:
        channel = grpc.insecure_channel(proc.grpc_url)
        with pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=2)
        channel.close()
    finally:
        proc.assert_clean_exit()


# -- model repository safety ----------------------------------------------------------------------------------
def test_model_paths_never_escape_the_repository(make_repo, tmp_path):
    """default_model_filename as an absolute or '..' path (config.pbtxt or RepositoryModelLoad's JSON), a
    symlinked model folder, version folder or model file pointing outside: all refused, the server unharmed."""
    import shutil

    repo = make_repo("mlp")
    outside = tmp_path / "outside"
    shutil.copytree(repo / "mlp", outside / "mlp")  # a perfectly good model, just not in the repository
    (repo / "linked_model").symlink_to(outside / "mlp", target_is_directory=True)
    (repo / "linked_version" / "1").parent.mkdir()
    (repo / "linked_version" / "1").symlink_to(outside / "mlp" / "1", target_is_directory=True)
    (repo / "linked_file" / "1").mkdir(parents=True)
    (repo / "linked_file" / "1" / "model.onnx").symlink_to(outside / "mlp" / "1" / "model.onnx")
    (repo / "dotdot" / "1").mkdir(parents=True)
    (repo / "dotdot" / "config.pbtxt").write_text('default_model_filename: "../../../outside/mlp/1/model.onnx"\n')
    proc = ServerProcess(repo, "--model-control-mode", "explicit").start()
    try:
        with grpcclient.InferenceServerClient(proc.grpc_url) as client:
            absolute = json.dumps({"default_model_filename": str(outside / "mlp" / "1" / "model.onnx")})
            expect_error(lambda: client.load_model("mlp", config=absolute), "INVALID_ARGUMENT",
                         "must be a file name inside the version folder")
            expect_error(lambda: client.load_model("mlp", config=json.dumps(
                {"default_model_filename": "../1/model.onnx"})), "INVALID_ARGUMENT", "not a path")
            expect_error(lambda: client.load_model("dotdot"), "INVALID_ARGUMENT", "not a path")
            expect_error(lambda: client.load_model("linked_model"), "INVALID_ARGUMENT", "resolves outside")
            expect_error(lambda: client.load_model("linked_file"), "INVALID_ARGUMENT", "resolves outside")
            expect_error(lambda: client.load_model("linked_version"), "INVALID_ARGUMENT", "no version")
            client.load_model("mlp")  # the repository's own model still loads and serves
            assert infer(client, "mlp", X).as_numpy("probabilities").shape == (1, 2)
            index = {m.name: m for m in client.get_model_repository_index().models}
            assert "resolves outside" in index["linked_file"].reason
    finally:
        proc.assert_clean_exit()


def test_streams_are_guarded_too(authed):
    """ModelStreamInfer (an async-generator handler) is checked before its first message is read."""
    import queue

    proc, _ = authed
    for token, want in ((None, "UNAUTHENTICATED"), ("dash-secret", "PERMISSION_DENIED"), ("score-secret", None)):
        results: queue.Queue = queue.Queue()
        with grpcclient.InferenceServerClient(proc.grpc_url) as client:
            client.start_stream(lambda result, error, q=results: q.put((result, error)),
                                headers=bearer(token) if token else None)
            inp = grpcclient.InferInput("input", [1, 32], "FP32")
            inp.set_data_from_numpy(X["input"])
            try:
                client.async_stream_infer("mlp", [inp])
            except InferenceServerException as exc:
                # The guard refuses a stream before reading its first message, so the refusal can arrive before
                # the client sends: tritonclient then refuses to enqueue, and the reason is in the callback.
                assert want is not None and "no longer in valid state" in str(exc), (token, exc)
            result, error = results.get(timeout=10)
            client.stop_stream()
        if want is None:
            assert error is None and result.as_numpy("probabilities").shape == (1, 2)
        else:
            assert error is not None and want in str(error.status()), (token, error)
