"""Git-files downloads (the B-score models from the reference pipeline's repository at a pinned commit) and
model provenance. No network: a local HTTP server on 127.0.0.1 stands in for raw.githubusercontent.com and
serves the real published model.json files (../shared/data/bscore). Covered: the right URL and bytes, the
record in the cache, sha256 mismatch refused (nothing kept), interrupted downloads resumed or restarted,
offline use of the cache, --model-dir, first use from the NSM step, and pinned hub revisions."""
import dataclasses
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from KneePipelineLib import gitfiles, hub  # noqa: E402
from KneePipelineLib.errors import ModelInvalidError, ModelMissingError  # noqa: E402
from KneePipelineLib.modelcache import read_record  # noqa: E402
from KneePipelineLib.registry import BSCORE_COMMIT, GitFilesSource, get_model  # noqa: E402

BC = "bscore_bone_cartilage"
BC_FOLDER = "NSM_Orig_BScore_Bone_Cartilage_April_17_2025"
BC_URL_PATH = "/anoopai/KneePipeline/%s/BSCORE_MODELS/%s/model.json" % (BSCORE_COMMIT, BC_FOLDER)


class FakeGitHost:
    """raw.githubusercontent.com stand-in: ``GET /<owner>/<repo>/<commit>/<path>`` with ``Range: bytes=N-``.
    ``cut``: how many next answers stop after half their body (an interrupted connection);
    ``honour_range``: False answers every request in full (200)."""

    def __init__(self, files, cut=0, honour_range=True):
        self.files, self.cut, self.honour_range = dict(files), cut, honour_range
        self.requests = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                host.requests.append((self.path, rng))
                data = host.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(rng[len("bytes="):].split("-")[0]) if rng and host.honour_range else 0
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if host.cut > 0:
                    host.cut -= 1
                    body = body[: len(body) // 2]
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_TOKEN", "KNEEPIPELINE_CACHE", "HF_HOME", "HF_HUB_CACHE", gitfiles.ENDPOINT_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(gitfiles, "RETRY_PAUSE_S", 0.0)


@pytest.fixture
def published(bscore_dir):
    """The real published model.json, keyed by its raw-file URL path."""
    return {BC_URL_PATH: (bscore_dir / BC_FOLDER / "model.json").read_bytes()}


def _host(monkeypatch, fake):
    monkeypatch.setenv(gitfiles.ENDPOINT_ENV, fake.url)
    return fake


def _cached(cache: Path) -> Path:
    return cache / "git--anoopai--KneePipeline" / BSCORE_COMMIT / "BSCORE_MODELS" / BC_FOLDER / "model.json"


def test_registry_pins_a_commit_and_records_every_sha256():
    src = get_model(BC).source
    assert src.kind == "git_files" and src.pinned and len(src.revision) == 40
    assert src.url(src.allow_patterns[0]) == "https://raw.githubusercontent.com" + BC_URL_PATH
    with pytest.raises(ValueError):
        GitFilesSource("o/r", "main", ("a.json",), sha256={"a.json": "0" * 64})
    with pytest.raises(ValueError):
        GitFilesSource("o/r", "a" * 40, ("a.json",))


def test_models_download_fetches_the_pinned_file_records_it_then_works_offline(tmp_path, monkeypatch, published,
                                                                               capsys):
    from KneePipelineLib.cli import main
    from KneePipelineLib.shape.bscore import load_bscore_model

    cache = tmp_path / "cache"
    with _host(monkeypatch, FakeGitHost(published)) as fake:
        assert main(["--quiet-progress", "models", "--download", BC, "--cache-dir", str(cache)]) == 0
        assert fake.requests == [(BC_URL_PATH, None)]
        root = hub.ensure_model(get_model(BC), cache_dir=str(cache))  # a cache hit: no second request
        assert len(fake.requests) == 1
    capsys.readouterr()
    assert _cached(cache).read_bytes() == published[BC_URL_PATH]
    assert root == _cached(cache).parent and not list(root.glob("*.incomplete"))
    assert load_bscore_model(root).registry_id == BC
    rec = read_record(str(cache), BC)
    assert rec["source"] == "git_files" and rec["revision"] == BSCORE_COMMIT
    assert rec["files"] == {"model.json": get_model(BC).config["sha256"]}
    # the server is gone: offline (flag or environment) uses the cache
    assert hub.ensure_model(get_model(BC), cache_dir=str(cache), offline=True) == root
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.ensure_model(get_model(BC), cache_dir=str(cache)) == root
    state = hub.model_state(get_model(BC), cache_dir=str(cache))
    assert state["verified"] is True and state["revision"] == BSCORE_COMMIT == state["pinned_revision"]


def test_sha256_mismatch_is_refused_and_nothing_is_kept(tmp_path, monkeypatch, published, capsys):
    from KneePipelineLib.cli import main

    good = published[BC_URL_PATH]
    tampered = good.replace(b'"std_healthy": ', b'"std_healthy": 1', 1) if b'"std_healthy": ' in good else good + b" "
    assert tampered != good  # still a valid-looking model.json: only the sha256 tells
    cache = tmp_path / "cache"
    with _host(monkeypatch, FakeGitHost({BC_URL_PATH: tampered})):
        with pytest.raises(ModelInvalidError) as err:
            hub.ensure_model(get_model(BC), cache_dir=str(cache))
        assert main(["--quiet-progress", "models", "--download", BC, "--cache-dir", str(cache)]) == 22
    capsys.readouterr()
    assert err.value.category == "model_invalid" and "model.json" in err.value.message
    assert "not the published file" in err.value.message and "--model-dir" in err.value.hint
    assert not [p for p in cache.rglob("*") if p.is_file() and "model.json" in p.name]


@pytest.mark.parametrize("honour_range", [True, False])
def test_interrupted_download_resumes_or_restarts(tmp_path, monkeypatch, published, honour_range):
    cache = tmp_path / "cache"
    data = published[BC_URL_PATH]
    with _host(monkeypatch, FakeGitHost(published, cut=1, honour_range=honour_range)) as fake:
        root = hub.ensure_model(get_model(BC), cache_dir=str(cache))
    assert (root / "model.json").read_bytes() == data
    assert [r for _, r in fake.requests] == [None, "bytes=%d-" % (len(data) // 2)]  # the second try resumes
    assert not list(root.glob("*.incomplete"))


def test_stale_partial_bytes_are_discarded_and_the_download_restarted(tmp_path, monkeypatch, published):
    cache = tmp_path / "cache"
    part = _cached(cache).with_name("model.json.incomplete")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 100)  # left by an earlier run of another file version
    events = []
    with _host(monkeypatch, FakeGitHost(published)) as fake:
        root = hub.ensure_model(get_model(BC), cache_dir=str(cache), progress=lambda f, m="": events.append((f, m)))
    assert (root / "model.json").read_bytes() == published[BC_URL_PATH]
    assert [r for _, r in fake.requests] == ["bytes=100-", None]
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # the same progress protocol as hub downloads
    assert any(m.startswith("downloading BSCORE_MODELS/") and "@" + BSCORE_COMMIT[:12] in m for _, m in events)


def test_a_download_that_keeps_failing_leaves_no_file_and_resumes_next_time(tmp_path, monkeypatch, published):
    cache = tmp_path / "cache"
    with _host(monkeypatch, FakeGitHost(published, cut=gitfiles.ATTEMPTS)) as fake:
        with pytest.raises(ModelMissingError) as err:
            hub.ensure_model(get_model(BC), cache_dir=str(cache))
        assert "interrupted" in err.value.message and "again" in err.value.hint
        assert not _cached(cache).exists()                       # never a half file under the real name
        part = _cached(cache).with_name("model.json.incomplete")
        kept = part.stat().st_size
        assert kept > 0
        n = len(fake.requests)
        root = hub.ensure_model(get_model(BC), cache_dir=str(cache))
        assert fake.requests[n:] == [(BC_URL_PATH, "bytes=%d-" % kept)]
    assert (root / "model.json").read_bytes() == published[BC_URL_PATH]


def test_offline_miss_unreachable_host_and_corrupt_cache(tmp_path, monkeypatch, published, capsys):
    from KneePipelineLib.cli import main

    cache = tmp_path / "cache"
    with pytest.raises(ModelMissingError) as err:
        hub.ensure_model(get_model(BC), cache_dir=str(cache), offline=True)
    assert "offline" in err.value.message and "--download %s" % BC in err.value.hint
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    monkeypatch.setenv(gitfiles.ENDPOINT_ENV, "http://127.0.0.1:%d" % port)
    with pytest.raises(ModelMissingError) as err:
        hub.ensure_model(get_model(BC), cache_dir=str(cache))
    assert "unreachable" in err.value.message and "HTTPS_PROXY" in err.value.hint
    assert main(["--quiet-progress", "models", "--download", BC, "--cache-dir", str(cache)]) == 20
    capsys.readouterr()
    # a damaged cached copy: refused offline, replaced online
    with _host(monkeypatch, FakeGitHost(published)):
        root = hub.ensure_model(get_model(BC), cache_dir=str(cache))
        (root / "model.json").write_bytes(b"{}")
        with pytest.raises(ModelInvalidError):
            hub.ensure_model(get_model(BC), cache_dir=str(cache), offline=True)
        assert (hub.ensure_model(get_model(BC), cache_dir=str(cache)) / "model.json").read_bytes() == \
            published[BC_URL_PATH]


def test_model_dir_holds_the_published_folders(bscore_dir, tmp_path):
    from KneePipelineLib.modelfiles import provenance

    entry = get_model(BC)
    root = hub.ensure_model(entry, model_dir=str(bscore_dir), cache_dir=str(tmp_path))
    assert root == (bscore_dir / BC_FOLDER).resolve()
    prov = provenance(entry, root, cache_dir=str(tmp_path))
    assert prov["source"] == "local" and prov["revision"] is None and prov["verified"] is True
    assert prov["pinned_revision"] == BSCORE_COMMIT and prov["sha256"] == {"model.json": entry.config["sha256"]}
    with pytest.raises(ModelMissingError):
        hub.ensure_model(entry, model_dir=str(tmp_path))


def test_nsm_step_fetches_its_bscore_model_on_first_use(tmp_path, monkeypatch, published):
    from KneePipelineLib.options import RunOptions
    from KneePipelineLib.shape import bscore as B
    from KneePipelineLib.steps.nsm import resolve_bscore_dir

    monkeypatch.setattr(B, "default_search_dirs", lambda: [tmp_path / "no-copies-on-disk"])
    monkeypatch.setenv("KNEEPIPELINE_CACHE", str(tmp_path / "cache"))
    opts = RunOptions(out_dir=str(tmp_path / "out"), nsm="bone_cartilage")
    with pytest.raises(ModelMissingError):  # offline with an empty cache: the step warns and skips the B-score
        resolve_bscore_dir("nsm_bone_cartilage", dataclasses.replace(opts, offline=True))
    with _host(monkeypatch, FakeGitHost(published)) as fake:
        folder = resolve_bscore_dir("nsm_bone_cartilage", opts)
    assert folder == _cached(tmp_path / "cache").parent and len(fake.requests) == 1
    assert B.load_bscore_model(folder).registry_id == BC
    assert resolve_bscore_dir("nsm_bone_cartilage", dataclasses.replace(opts, offline=True)) == folder


# -- hub revisions ---------------------------------------------------------------------------------------
def test_pinned_hub_revision_differing_from_the_cached_one_is_reported(tmp_path):
    from nnunet_fixtures import lay_out_hub_cache

    from KneePipelineLib.commands.models import _revision_text

    cached, pinned = "c" * 40, "d" * 40
    src = tmp_path / "sagittal_best_model.h5"
    src.write_bytes(b"weights")
    cache = tmp_path / "cache"
    lay_out_hub_cache(cache, "aagatti/dosma_bones", {"sagittal_best_model.h5": src}, commit=cached)
    base = get_model("dosma_sagittal")
    assert hub.ensure_model(base, cache_dir=str(cache), offline=True).name == cached  # "main" follows the branch
    entry = dataclasses.replace(base, source=dataclasses.replace(base.source, revision=pinned))
    with pytest.raises(ModelMissingError) as err:
        hub.ensure_model(entry, cache_dir=str(cache), offline=True)
    assert cached[:12] in err.value.message and pinned[:12] in err.value.message
    state = hub.model_state(entry, cache_dir=str(cache))
    assert state["downloaded"] is False and state["cached_revisions"] == [cached]
    assert state["pinned_revision"] == pinned and "!=pin" in _revision_text(state)
    rec = read_record(str(cache), "dosma_sagittal")
    assert rec["revision"] == cached and rec["requested_revision"] == "main"
    # "main" moved on: the next resolution records the new commit and the one it replaced
    lay_out_hub_cache(cache, "aagatti/dosma_bones", {"sagittal_best_model.h5": src}, commit="e" * 40)
    assert hub.ensure_model(base, cache_dir=str(cache), offline=True).name == "e" * 40
    rec = read_record(str(cache), "dosma_sagittal")
    assert rec["revision"] == "e" * 40 and rec["previous_revision"] == cached


def test_recording_models_gives_each_used_models_source_revision_and_sha256(tmp_path, monkeypatch, published):
    from KneePipelineLib.modelfiles import recording_models, used_provenance

    cache = tmp_path / "cache"
    with _host(monkeypatch, FakeGitHost(published)):
        with recording_models() as used:
            hub.ensure_model(get_model(BC), cache_dir=str(cache))
            hub.ensure_model(get_model(BC), cache_dir=str(cache))
    hub.ensure_model(get_model(BC), cache_dir=str(cache), offline=True)  # outside the block: not recorded
    (prov,) = used_provenance(used, str(cache))
    assert prov["id"] == BC and prov["source"] == "git_files" and prov["repo_id"] == "anoopai/KneePipeline"
    assert prov["revision"] == BSCORE_COMMIT and prov["verified"] is True
    assert json.loads(json.dumps(prov)) == prov  # goes into manifest.json as is
