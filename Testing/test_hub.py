"""Model downloads: allow_patterns, the hub cache (offline hit / miss), --model-dir, sha256, gated repos,
network failure and token hygiene. No network: a hub cache laid out in tmp_path, and a local fake hub
server speaking the hub's HTTP API for the real download path."""
import dataclasses
import hashlib
import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("huggingface_hub")

from nnunet_fixtures import lay_out_hub_cache  # noqa: E402

from KneePipelineLib import hub  # noqa: E402
from KneePipelineLib.errors import ModelGatedError, ModelInvalidError, ModelMissingError  # noqa: E402
from KneePipelineLib.registry import get_model  # noqa: E402

FULL = "models/Dataset500_KneeMRI/nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres/"
LOW = "models/Dataset500_KneeMRI/nnUNetTrainer__nnUNetResEncUNetMPlans__3d_lowres/"
CAS = "models/Dataset500_KneeMRI/nnUNetTrainer__nnUNetResEncUNetMPlans__3d_cascade_fullres/"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SECRET = "hf_NeverPrintThisToken0123456789"


def _repo_files(tmp_path):
    """A fake copy of aagatti/nnunet_knee (tiny stand-in files at the published paths)."""
    src = tmp_path / "src"
    files = {}
    for base in (FULL, LOW, CAS):
        for rel in ("dataset.json", "plans.json", "model_config.json", "fold_1/checkpoint_best.pth",
                    "fold_1/checkpoint_final.pth", "fold_2/checkpoint_best.pth"):
            p = src / (base + rel)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(("content of " + base + rel).encode())
            files[base + rel] = p
    p = src / "test_data/test_image.nii.gz"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"big test image")
    files["test_data/test_image.nii.gz"] = p
    return files


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_TOKEN", "KNEEPIPELINE_CACHE", "HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)


def _collect():
    events = []
    return events, lambda f, m="": events.append((float(f), str(m)))


# -- which files ------------------------------------------------------------------------------------
def test_allow_patterns_select_only_the_needed_configuration_fold_and_checkpoint():
    pats = hub.allow_patterns(get_model("nnunet_fullres"))
    assert set(pats) == {FULL + "dataset.json", FULL + "plans.json", FULL + "fold_1/checkpoint_best.pth",
                         FULL + "model_config.json"}
    pats = hub.allow_patterns(get_model("nnunet_cascade"), folds=[1, 2], checkpoint="final")
    assert LOW + "fold_2/checkpoint_final.pth" in pats and CAS + "fold_1/checkpoint_final.pth" in pats
    assert not any("best" in p or "3d_fullres/" in p for p in pats)
    assert hub.allow_patterns(get_model("dosma_sagittal")) == ["sagittal_best_model.h5"]


# -- the cache, offline -----------------------------------------------------------------------------
def test_offline_cache_hit_returns_the_model_root(tmp_path, monkeypatch):
    files = _repo_files(tmp_path)
    cache = tmp_path / "cache"
    snap = lay_out_hub_cache(cache, "aagatti/nnunet_knee", {k: v for k, v in files.items() if k.startswith(FULL)},
                             commit=COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the environment alone switches offline mode on
    events, cb = _collect()
    root = hub.ensure_model(get_model("nnunet_fullres"), cache_dir=str(cache), progress=cb)
    assert root == snap / "models/Dataset500_KneeMRI"
    assert (root / "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres/fold_1/checkpoint_best.pth").is_file()
    assert events[-1][0] == 1.0
    state = hub.model_state(get_model("nnunet_fullres"), cache_dir=str(cache))
    assert state == {"downloaded": True, "verified": None, "path": str(root), "revision": COMMIT,
                     "pinned_revision": None, "cached_revisions": []}
    assert hub.snapshot_revision(root) == COMMIT
    assert hub.model_state(get_model("nnunet_cascade"), cache_dir=str(cache))["downloaded"] is False


def test_default_cache_dir_precedence(tmp_path, monkeypatch):
    assert hub.default_cache_dir() == Path("~/.cache/kneepipeline/hub").expanduser()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub.default_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("KNEEPIPELINE_CACHE", str(tmp_path / "kp"))
    assert hub.default_cache_dir() == tmp_path / "kp"


def test_offline_miss_and_partial_cache_are_clear_errors(tmp_path):
    files = _repo_files(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(ModelMissingError) as err:
        hub.ensure_model(get_model("nnunet_fullres"), cache_dir=str(cache), offline=True)
    assert "offline" in err.value.message and "--download nnunet_fullres" in err.value.hint
    partial = {k: v for k, v in files.items() if k.startswith(FULL) and "checkpoint_best" not in k}
    lay_out_hub_cache(cache, "aagatti/nnunet_knee", partial, commit=COMMIT)
    with pytest.raises(ModelMissingError) as err:
        hub.ensure_model(get_model("nnunet_fullres"), cache_dir=str(cache), offline=True)
    assert "fold_1/checkpoint_best.pth" in err.value.message


def test_sha256_mismatch_is_model_invalid(tmp_path):
    files = _repo_files(tmp_path)
    cache = tmp_path / "cache"
    lay_out_hub_cache(cache, "aagatti/nnunet_knee", {k: v for k, v in files.items() if k.startswith(FULL)},
                      commit=COMMIT)
    base = get_model("nnunet_fullres")
    ck = FULL + "fold_1/checkpoint_best.pth"
    good = hashlib.sha256(files[ck].read_bytes()).hexdigest()
    entry = dataclasses.replace(base, source=dataclasses.replace(base.source, sha256={ck: good}))
    assert hub.ensure_model(entry, cache_dir=str(cache), offline=True).is_dir()
    assert hub.model_state(entry, cache_dir=str(cache))["verified"] is True
    bad = dataclasses.replace(base, source=dataclasses.replace(base.source, sha256={ck: "0" * 64}))
    with pytest.raises(ModelInvalidError) as err:
        hub.ensure_model(bad, cache_dir=str(cache), offline=True)
    assert "checkpoint_best.pth" in err.value.message
    assert hub.model_state(bad, cache_dir=str(cache))["verified"] is False


# -- --model-dir ------------------------------------------------------------------------------------
def test_model_dir_layouts(tmp_path):
    files = _repo_files(tmp_path)
    entry = get_model("nnunet_fullres")
    src = tmp_path / "src"
    # the repository root, the Dataset folder and the trainer folder itself are all accepted
    want = (src / "models/Dataset500_KneeMRI").resolve()
    assert hub.ensure_model(entry, model_dir=str(src)) == want
    assert hub.ensure_model(entry, model_dir=str(src / "models/Dataset500_KneeMRI")) == want
    assert hub.ensure_model(entry, model_dir=str(src / FULL)) == want
    (src / FULL / "fold_1/checkpoint_best.pth").unlink()
    with pytest.raises(ModelMissingError) as err:
        hub.ensure_model(entry, model_dir=str(src / "models"))
    assert "fold_1/checkpoint_best.pth" in err.value.message and err.value.details["missing"]
    with pytest.raises(ModelMissingError):
        hub.ensure_model(entry, model_dir=str(tmp_path / "does-not-exist"))
    assert hub.model_state(entry, model_dir=str(src))["downloaded"] is False


# -- a fake hub server (the hub's HTTP API, enough for snapshot_download) ----------------------------
class FakeHub:
    def __init__(self, files, gated=False):
        self.files = {k: Path(v).read_bytes() for k, v in files.items()}
        self.gated = gated
        self.requested = []
        self.auth = []
        hubself = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body=b"", headers=None, head=False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _handle(self, head=False):
                hubself.auth.append(self.headers.get("Authorization"))
                path = unquote(urlparse(self.path).path)
                if hubself.gated:
                    return self._send(403, b'{"error":"gated"}', {"X-Error-Code": "GatedRepo",
                                                                 "Content-Type": "application/json"}, head)
                repo = "/api/models/aagatti/nnunet_knee"
                if path.startswith(repo + "/revision/"):
                    body = json.dumps({"id": "aagatti/nnunet_knee", "sha": COMMIT,
                                       "siblings": [{"rfilename": f} for f in hubself.files]}).encode()
                    return self._send(200, body, {"Content-Type": "application/json"}, head)
                if path.startswith(repo + "/tree/"):
                    body = json.dumps([{"type": "file", "path": f, "size": len(b),
                                        "oid": hashlib.sha1(b).hexdigest()} for f, b in hubself.files.items()]).encode()
                    return self._send(200, body, {"Content-Type": "application/json"}, head)
                prefix = "/aagatti/nnunet_knee/resolve/"
                if path.startswith(prefix):
                    rel = path[len(prefix):].split("/", 1)[1]
                    if rel not in hubself.files:
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                    data = hubself.files[rel]
                    if not head:
                        hubself.requested.append(rel)
                    return self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": '"%s"' % hashlib.sha1(data).hexdigest(),
                                                  "Content-Type": "application/octet-stream"}, head)
                return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)

            def do_GET(self):
                self._handle()

            def do_HEAD(self):
                self._handle(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint(monkeypatch):
    import huggingface_hub.constants as c

    def use(url):
        monkeypatch.setattr(c, "ENDPOINT", url)
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    return use


def test_download_fetches_only_allowed_files_and_never_reports_the_token(tmp_path, endpoint, caplog):
    files = _repo_files(tmp_path)
    cache = tmp_path / "cache"
    events, cb = _collect()
    caplog.set_level(logging.DEBUG)
    with FakeHub(files) as fake:
        endpoint(fake.url)
        root = hub.ensure_model(get_model("nnunet_fullres"), cache_dir=str(cache), token=SECRET, progress=cb)
    assert sorted(fake.requested) == sorted([FULL + "dataset.json", FULL + "plans.json", FULL + "model_config.json",
                                             FULL + "fold_1/checkpoint_best.pth"])
    assert (root / "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres/fold_1/checkpoint_best.pth").read_bytes() == \
        files[FULL + "fold_1/checkpoint_best.pth"].read_bytes()
    assert hub.snapshot_revision(root) == COMMIT
    assert any(m.startswith("downloading nnunet_fullres") for _, m in events)
    assert ("Bearer " + SECRET) in fake.auth  # the token was used ...
    text = json.dumps(events) + caplog.text + json.dumps(hub.model_state(get_model("nnunet_fullres"), str(cache)))
    assert SECRET not in text  # ... and never reported
    # afterwards the same model is available offline
    assert hub.ensure_model(get_model("nnunet_fullres"), cache_dir=str(cache), offline=True) == root
    # the resolved commit is recorded in the cache and in what a run's manifest gets
    from KneePipelineLib.modelcache import read_record, record_path

    rec = read_record(str(cache), "nnunet_fullres")
    assert rec["revision"] == COMMIT and rec["requested_revision"] == "main" and rec["source"] == "hub"
    ck = "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres/fold_1/checkpoint_best.pth"
    assert rec["files"][ck] == hashlib.sha256(files[FULL + "fold_1/checkpoint_best.pth"].read_bytes()).hexdigest()
    prov = hub.provenance(get_model("nnunet_fullres"), root, cache_dir=str(cache))
    assert prov["source"] == "hub" and prov["revision"] == COMMIT and prov["sha256"] == rec["files"]
    assert SECRET not in record_path(str(cache), "nnunet_fullres").read_text()


def test_a_pinned_revision_is_downloaded_and_reported(tmp_path, endpoint):
    base = get_model("nnunet_fullres")
    entry = dataclasses.replace(base, source=dataclasses.replace(base.source, revision=COMMIT))
    cache = tmp_path / "cache"
    with FakeHub(_repo_files(tmp_path)) as fake:
        endpoint(fake.url)
        root = hub.ensure_model(entry, cache_dir=str(cache))
    assert hub.snapshot_revision(root) == COMMIT
    state = hub.model_state(entry, cache_dir=str(cache))
    assert state["revision"] == state["pinned_revision"] == COMMIT and state["downloaded"] is True
    assert hub.ensure_model(entry, cache_dir=str(cache), offline=True) == root


def test_gated_repo_without_access_is_model_gated(tmp_path, endpoint, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with FakeHub(_repo_files(tmp_path), gated=True) as fake:
        endpoint(fake.url)
        with pytest.raises(ModelGatedError) as err:
            hub.ensure_model(get_model("nnunet_fullres"), cache_dir=str(tmp_path / "cache"))
    assert SECRET not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__


def test_unreachable_hub_is_model_missing_with_a_hint(tmp_path, endpoint):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connection refused
    endpoint("http://127.0.0.1:%d" % port)
    with pytest.raises(ModelMissingError) as err:
        hub.ensure_model(get_model("nnunet_fullres"), cache_dir=str(tmp_path / "cache"))
    assert "unreachable" in err.value.message and "--model-dir" in err.value.hint


# -- the `models` and `doctor` commands --------------------------------------------------------------
def test_models_command_lists_every_entry_with_its_local_state(tmp_path, capsys):
    from KneePipelineLib.cli import main
    from KneePipelineLib.registry import list_models

    files = _repo_files(tmp_path)
    cache = tmp_path / "cache"
    snap = lay_out_hub_cache(cache, "aagatti/nnunet_knee", {k: v for k, v in files.items() if k.startswith(FULL)},
                             commit=COMMIT)
    assert main(["models", "--json", "--cache-dir", str(cache)]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {m.id for m in list_models()}
    assert rows["nnunet_fullres"]["downloaded"] is True
    assert rows["nnunet_fullres"]["path"] == str(snap / "models/Dataset500_KneeMRI")
    assert rows["nnunet_cascade"]["downloaded"] is False and rows["nsm_bone_cartilage"]["gated"] is True
    # offline download of what is cached succeeds; of what is not, fails with the model_missing exit code
    assert main(["models", "--download", "nnunet_fullres", "--offline", "--cache-dir", str(cache)]) == 0
    capsys.readouterr()
    assert main(["models", "--download", "nnunet_cascade", "--offline", "--cache-dir", str(cache)]) == 20


def test_doctor_reports_python_torch_and_devices(capsys):
    from KneePipelineLib.cli import main

    assert main(["--quiet-progress", "doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["python"] == sys.version.split()[0]
    assert rep["device_auto"] in ("cpu", "cuda", "mps")
    assert "nnunet_fullres" in rep["models"] and "torch" in rep["packages"]
