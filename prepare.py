"""Locked half of the experiment: data, tokenizer, dataloader, checkpoint format and the metric.

The agent edits train.py and never this file. Everything that decides what a result means lives here: which text the
model is scored on, how it is tokenized, and how val_bpb is computed. The harness runs this file's evaluation in a
separate process (`python prepare.py evaluate ...`) on the checkpoint train.py saved, so train.py cannot print or patch
the number that is recorded.

Usage:
    python prepare.py                         # prepare the default source (offline, no download)
    python prepare.py --source climbmix --num-shards 10 --workers 8
    python prepare.py evaluate --checkpoint PATH --train-file PATH

Environment:
    AUTORESEARCH_DATA         offline (default) | climbmix
    AUTORESEARCH_CACHE        cache folder (default ~/.cache/autoresearch)
    AUTORESEARCH_TIME_BUDGET  training seconds (default: 300 on CUDA, 120 on MPS, 60 on CPU)
    AUTORESEARCH_CHECKPOINT   set by the harness: train.py saves there and does not evaluate itself
Small-size overrides (tests, quick demos; recorded in the cache and the fingerprint, so they never mix with defaults):
    AUTORESEARCH_CORPUS_BYTES, AUTORESEARCH_VOCAB_SIZE, AUTORESEARCH_SEQ_LEN, AUTORESEARCH_EVAL_TOKENS,
    AUTORESEARCH_DATA_URL (climbmix base URL)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import os
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# ---- Constants ----

CACHE_FORMAT = 3                       # bump when the cache layout changes (3: held-out split balanced by bytes)
EVAL_BATCH = 8                         # windows per forward pass in the evaluation; the model is exported at this shape
PROBE_BATCHES = 4                      # scored batches re-run with a changed future to check causality
TRUSTED_OP_NAMESPACES = ("aten",)      # operators an exported model may call (pure tensor math)
DEFAULT_BUDGETS = {"cuda": 300.0, "mps": 120.0, "cpu": 60.0}  # training seconds per device type
SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|reserved|>"]  # reserved at the top of the vocabulary
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"""
                 r"""\s+(?!\S)|\s+""")  # GPT-4-style pre-split: words, 1-3 digit groups, punctuation, whitespace
CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_VAL_SHARD = 6542               # pinned validation shard, never trained on
OFFLINE_VAL_PERCENT = 10                # share of stdlib bytes held out: half validation, half hidden holdout
EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "ensurepip"}


@dataclasses.dataclass(frozen=True)
class SourceSettings:
    """What fixes a data source's results: two runs are comparable only when all of these match."""

    source: str
    vocab_size: int      # including the reserved special tokens
    seq_len: int         # context length the evaluation uses (train.py trains at this length)
    eval_tokens: int     # validation tokens scored by the evaluation
    corpus_bytes: int    # offline: cap on the corpus size; climbmix: cap on tokenizer training text
    num_shards: int = 0  # climbmix training shards


SOURCE_DEFAULTS = {
    # 8 MB of stdlib text; 4k vocab and 256-token context suit a model trained for a minute on two CPU cores.
    # 2**15 eval tokens (about 110 kB of text) keep the evaluator to seconds on two CPU cores.
    "offline": SourceSettings("offline", vocab_size=4096, seq_len=256, eval_tokens=2**15, corpus_bytes=8_000_000),
    # The original's scale: 8192 vocab, 2048 context, 40 * 2**19 eval tokens, tokenizer trained on 2e9 characters.
    "climbmix": SourceSettings("climbmix", vocab_size=8192, seq_len=2048, eval_tokens=40 * 2**19,
                               corpus_bytes=2_000_000_000, num_shards=10),
}


class PrepareError(RuntimeError):
    """A problem the user fixes (bad flag, missing cache, failed download); printed as one line."""


# ---- Settings from the environment ----

def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PrepareError(f"{name}={raw!r} is not an integer; unset it or give a whole number") from None
    if value < minimum:
        raise PrepareError(f"{name}={value} is below the minimum {minimum}; unset it or raise it")
    return value


def data_source() -> str:
    """The data source named by AUTORESEARCH_DATA (offline by default)."""
    name = os.environ.get("AUTORESEARCH_DATA", "offline") or "offline"
    if name not in SOURCE_DEFAULTS:
        raise PrepareError(f"AUTORESEARCH_DATA={name!r} is not a known source; use one of {sorted(SOURCE_DEFAULTS)}")
    return name


def source_settings(source: str | None = None, num_shards: int | None = None) -> SourceSettings:
    """Defaults of the source with any AUTORESEARCH_* size overrides applied."""
    base = SOURCE_DEFAULTS[source or data_source()]
    return dataclasses.replace(
        base,
        vocab_size=_env_int("AUTORESEARCH_VOCAB_SIZE", base.vocab_size, minimum=256 + len(SPECIAL_TOKENS) + 1),
        seq_len=_env_int("AUTORESEARCH_SEQ_LEN", base.seq_len, minimum=8),
        eval_tokens=_env_int("AUTORESEARCH_EVAL_TOKENS", base.eval_tokens, minimum=8),
        corpus_bytes=_env_int("AUTORESEARCH_CORPUS_BYTES", base.corpus_bytes, minimum=1000),
        num_shards=base.num_shards if num_shards is None else num_shards,
    )


def cache_dir() -> Path:
    """Root of the cache (AUTORESEARCH_CACHE or ~/.cache/autoresearch)."""
    return Path(os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch").expanduser()


def source_dir(source: str | None = None) -> Path:
    return cache_dir() / (source or data_source())


def time_budget(device_type: str = "cpu") -> float:
    """Training seconds allowed: AUTORESEARCH_TIME_BUDGET from the harness, else the default for the device."""
    raw = os.environ.get("AUTORESEARCH_TIME_BUDGET")
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise PrepareError(f"AUTORESEARCH_TIME_BUDGET={raw!r} is not a number of seconds") from None
        if not math.isfinite(value) or value <= 0:
            raise PrepareError(f"AUTORESEARCH_TIME_BUDGET={raw!r} must be a positive number of seconds")
        return value
    return DEFAULT_BUDGETS.get(device_type, DEFAULT_BUDGETS["cpu"])


def checkpoint_path() -> Path | None:
    """Where the harness wants the checkpoint, or None when train.py runs by hand."""
    raw = os.environ.get("AUTORESEARCH_CHECKPOINT")
    return Path(raw) if raw else None


def _progress(label: str, done: float, total: float, unit: str = "") -> None:
    """One-line progress on stderr: redrawn in place on a terminal, a line per call otherwise."""
    pct = 100.0 * done / total if total else 100.0
    line = f"{label}: {pct:5.1f}% ({done:,.0f}/{total:,.0f}{unit})"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line + ("\n" if done >= total else ""))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


# ---- Offline corpus: the running Python's standard library ----

def _path_hash(relpath: str) -> int:
    return int(hashlib.sha256(relpath.encode()).hexdigest()[:12], 16)


def offline_corpus(corpus_bytes: int, salt: str = "") -> tuple[list[str], list[str], list[str]]:
    """(train, validation, holdout documents) from the standard library's .py files.

    Why this text: it is real, varied English prose (docstrings, pydoc_data/topics.py) mixed with code, several MB,
    and present wherever Python runs, so the default experiment needs no download. Files are walked in sorted order,
    taken in the order of a hash of their relative path (a fixed shuffle that mixes packages) until corpus_bytes is
    reached (empty files and exact copies skipped).

    Which files are held out is decided by a hash of the secret `salt` and each path, and by bytes, not by file count:
    files are visited in salted-hash order and each goes to whichever of validation and holdout holds fewer bytes,
    until both hold at least half of OFFLINE_VAL_PERCENT of the corpus. Counting files instead would leave the
    split's size to chance (a small corpus could score 45 tokens of validation against one large holdout file).
    The salt matters because the sandbox must show the standard library to run Python at all: without it, train.py
    could recompute which files are scored and train on exactly those. The salt is kept beside the cache
    (`split_salt`), which no training sandbox sees. Every split keeps the fixed walk order.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    relpaths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith("config-"))
        for name in sorted(filenames):
            if name.endswith(".py"):
                relpaths.append((Path(dirpath) / name).relative_to(root).as_posix())
    relpaths.sort(key=lambda p: (_path_hash(p), p))
    docs: list[tuple[str, str]] = []
    total = 0
    seen: set[str] = set()
    for rel in relpaths:
        try:
            text = (root / rel).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        size = len(text.encode("utf-8"))
        if not text.strip() or text in seen or total + size > corpus_bytes:
            continue  # empty __init__ files and copies would blur the train/validation split
        seen.add(text)
        total += size
        docs.append((rel, text))
    half_target = total * OFFLINE_VAL_PERCENT / 200
    held: dict[str, str] = {}  # path -> "val" | "holdout"
    held_bytes = {"val": 0, "holdout": 0}
    for rel, text in sorted(docs, key=lambda d: (_path_hash(salt + d[0]), d[0]))[:-1]:  # the last stays for training
        if min(held_bytes.values()) >= half_target:
            break
        split = "val" if held_bytes["val"] <= held_bytes["holdout"] else "holdout"
        held[rel] = split
        held_bytes[split] += len(text.encode("utf-8"))
    train = [text for rel, text in docs if rel not in held]
    val = [text for rel, text in docs if held.get(rel) == "val"]
    holdout = [text for rel, text in docs if held.get(rel) == "holdout"]
    if not train or not val or not holdout:
        raise PrepareError(f"the standard library at {root} gave too little text ({total} bytes) for a corpus")
    return train, val, holdout


# ---- Climbmix download (parallel, retries with backoff, temp-then-rename, integrity check) ----

def climbmix_url() -> str:
    return (os.environ.get("AUTORESEARCH_DATA_URL") or CLIMBMIX_URL).rstrip("/")


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def check_parquet(path: Path, expected_sha256: str | None = None) -> None:
    """Raise PrepareError unless path is a complete, readable parquet file with a text column (and the given sha256)."""
    import pyarrow.parquet as pq

    if expected_sha256 is not None:
        digest = _sha256_file(path)
        if digest != expected_sha256:
            raise PrepareError(f"{path.name}: sha256 {digest[:12]}.. != expected {expected_sha256[:12]}..")
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(-4, os.SEEK_END) if path.stat().st_size >= 8 else None
        tail = f.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise PrepareError(f"{path.name}: not a complete parquet file (missing PAR1 magic)")
    try:
        table = pq.read_table(path, columns=["text"])
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise PrepareError(f"{path.name}: parquet file is damaged ({exc})") from None
    if table.num_rows == 0:
        raise PrepareError(f"{path.name}: parquet file has no rows")


def _advertised_sha256(headers: Any) -> str | None:
    """The sha256 a Hugging Face-style server advertises for an LFS file (X-Linked-Etag or ETag), if any."""
    for key in ("X-Linked-Etag", "ETag"):
        value = (headers.get(key) or "").strip().strip('"').removeprefix("W/").strip('"')
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
            return value
    return None


def download_file(url: str, dest: Path, *, retries: int = 5, backoff: float = 2.0, timeout: float = 60.0,
                  sleep: Callable[[float], None] = time.sleep) -> Path:
    """Download url to dest: resume a partial .tmp with a Range request, verify, then rename into place.

    A failed request or a file that fails the integrity check is retried after backoff * 2**attempt seconds;
    a corrupt download is discarded, an interrupted one is resumed from where it stopped.
    """
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    last_error = "no attempt made"
    for attempt in range(retries):
        try:
            offset = tmp.stat().st_size if tmp.exists() else 0
            request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                resumed = offset > 0 and response.status == 206
                expected_sha = _advertised_sha256(response.headers)
                length = response.headers.get("Content-Length")
                expected_total = (offset if resumed else 0) + int(length) if length else None
                with open(tmp, "ab" if resumed else "wb") as f:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
            size = tmp.stat().st_size
            if expected_total is not None and size != expected_total:
                raise ConnectionError(f"got {size} of {expected_total} bytes")
            try:
                check_parquet(tmp, expected_sha)
            except PrepareError:
                tmp.unlink(missing_ok=True)  # corrupt: start over rather than resume a bad prefix
                raise
            os.replace(tmp, dest)
            return dest
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
            if exc.code == 416:  # our partial file is longer than the remote one: start over
                tmp.unlink(missing_ok=True)
            elif exc.code in (403, 404):
                break
        except (OSError, ConnectionError, PrepareError) as exc:
            last_error = str(exc) or type(exc).__name__
        log.warning("download %s failed (attempt %d/%d): %s", url, attempt + 1, retries, last_error)
        if attempt + 1 < retries:
            sleep(backoff * 2**attempt)
    raise PrepareError(f"could not download {url} after {retries} attempts ({last_error}); check the network "
                       f"or AUTORESEARCH_DATA_URL, then run `python prepare.py --source climbmix` again")


def download_shards(indices: list[int], data_dir: Path, *, workers: int = 8, **kwargs: Any) -> list[Path]:
    """Download the given climbmix shards in parallel; returns their paths in the order given."""
    base = climbmix_url()
    done = 0
    paths: dict[int, Path] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(download_file, f"{base}/{shard_name(i)}", data_dir / shard_name(i), **kwargs): i
                   for i in indices}
        for future in concurrent.futures.as_completed(futures):
            paths[futures[future]] = future.result()
            done += 1
            _progress("download", done, len(indices), " shards")
    return [paths[i] for i in indices]


def _parquet_texts(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [t for t in pq.read_table(path, columns=["text"]).column("text").to_pylist() if t]


# ---- Tokenizer ----

class Tokenizer:
    """Byte-pair encoding (tiktoken at run time) with reserved special tokens and per-token byte counts."""

    def __init__(self, pattern: str, mergeable_ranks: dict[bytes, int]) -> None:
        import tiktoken

        first_special = len(mergeable_ranks)
        self.special_tokens = {name: first_special + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.encoding = tiktoken.Encoding("autoresearch", pat_str=pattern, mergeable_ranks=mergeable_ranks,
                                          special_tokens=self.special_tokens)
        self.pattern = pattern
        self.mergeable_ranks = mergeable_ranks
        self.vocab_size = first_special + len(SPECIAL_TOKENS)
        self.bos_token_id = self.special_tokens["<|bos|>"]

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int) -> Tokenizer:
        """Train BPE with rustbpe on texts; vocab_size includes the special tokens."""
        import rustbpe

        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(texts, vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
        return cls(trainer.get_pattern(), {bytes(k): v for k, v in trainer.get_mergeable_ranks()})

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def token_bytes(self) -> np.ndarray:
        """Exact UTF-8 byte length of each token id (0 for special tokens): the metric's denominator."""
        counts = np.zeros(self.vocab_size, dtype=np.int32)
        for token, rank in self.mergeable_ranks.items():
            counts[rank] = len(token)
        return counts

    def save(self, path: Path) -> None:
        ranks = sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])
        data = {"pattern": self.pattern, "special_tokens": SPECIAL_TOKENS, "ranks": [t.hex() for t, _ in ranks]}
        _atomic_write(path, json.dumps(data).encode())

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        data = json.loads(path.read_text())
        return cls(data["pattern"], {bytes.fromhex(h): i for i, h in enumerate(data["ranks"])})

    # Names an original-style train.py calls.
    @classmethod
    def from_directory(cls) -> Tokenizer:
        return cls.load(source_dir() / "tokenizer.json")

    def get_vocab_size(self) -> int:
        return self.vocab_size

    def get_bos_token_id(self) -> int:
        return self.bos_token_id


# ---- Preparing the cache ----

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _token_stream(tokenizer: Tokenizer, docs: list[str], label: str) -> np.ndarray:
    """Documents tokenized and joined into one uint16 stream, each document preceded by BOS."""
    parts: list[np.ndarray] = []
    step = 256
    for start in range(0, len(docs), step):
        for ids in tokenizer.encode_batch(docs[start:start + step]):
            parts.append(np.asarray([tokenizer.bos_token_id] + ids, dtype=np.uint16))
        _progress(f"tokenize {label}", min(start + step, len(docs)), len(docs), " docs")
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def _settings_match(meta_path: Path, settings: SourceSettings, ignore: tuple[str, ...] = ()) -> bool:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    recorded = {k: v for k, v in (meta.get("settings") or {}).items() if k not in ignore}
    wanted = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ignore}
    return meta.get("cache_format") == CACHE_FORMAT and recorded == wanted


def prepare(settings: SourceSettings, *, workers: int = 8, download_kwargs: dict[str, Any] | None = None) -> Path:
    """Build (once) the cache for a source: tokenizer, token streams, byte counts and a fingerprint in meta.json."""
    out = source_dir(settings.source)
    meta_path = out / "meta.json"
    if _settings_match(meta_path, settings):
        print(f"already prepared: {out} (fingerprint {json.loads(meta_path.read_text())['fingerprint'][:16]})")
        return out
    out.mkdir(parents=True, exist_ok=True)
    corpus_hash = hashlib.sha256()
    salt_path = out / "split_salt"
    if not salt_path.exists():
        _atomic_write(salt_path, os.urandom(16).hex().encode())
    salt = salt_path.read_text().strip()
    if settings.source == "offline":
        train_docs, val_docs, holdout_docs = offline_corpus(settings.corpus_bytes, salt)
        for doc in train_docs + val_docs + holdout_docs:
            corpus_hash.update(doc.encode())
        tokenizer_texts: list[str] = train_docs
    else:
        indices = list(range(settings.num_shards))
        paths = download_shards(indices + [CLIMBMIX_VAL_SHARD], out / "data", workers=workers,
                                **(download_kwargs or {}))
        for path in paths:
            corpus_hash.update(_sha256_file(path).encode())
        train_docs = [t for p in paths[:-1] for t in _parquet_texts(p)]
        held = _parquet_texts(paths[-1])
        order = sorted(range(len(held)), key=lambda i: _path_hash(f"{salt}{i}"))
        val_docs = [held[i] for i in sorted(order[0::2])]
        holdout_docs = [held[i] for i in sorted(order[1::2])]
        tokenizer_texts, total = [], 0
        for doc in train_docs:
            if total >= settings.corpus_bytes:
                break
            tokenizer_texts.append(doc)
            total += len(doc)
    started = time.time()
    tokenizer = Tokenizer.train(iter(tokenizer_texts), settings.vocab_size)
    log.info("tokenizer trained in %.1fs", time.time() - started)
    print(f"tokenizer: {tokenizer.vocab_size} tokens trained in {time.time() - started:.1f}s", file=sys.stderr)
    tokenizer.save(out / "tokenizer.json")
    np.save(out / "token_bytes.npy", tokenizer.token_bytes())
    train_tokens = _token_stream(tokenizer, train_docs, "train")
    val_tokens = _token_stream(tokenizer, val_docs, "val")
    holdout_tokens = _token_stream(tokenizer, holdout_docs, "holdout")
    _atomic_write(out / "train.bin", train_tokens.tobytes())
    _atomic_write(out / "val.bin", val_tokens.tobytes())
    _atomic_write(out / "holdout.bin", holdout_tokens.tobytes())
    files = {name: _sha256_file(out / name)
             for name in ("tokenizer.json", "token_bytes.npy", "val.bin", "holdout.bin")}
    fingerprint = hashlib.sha256(json.dumps({"corpus": corpus_hash.hexdigest(), "files": files,
                                             "settings": dataclasses.asdict(settings)}, sort_keys=True).encode())
    meta = {"cache_format": CACHE_FORMAT, "settings": dataclasses.asdict(settings), "files": files,
            "corpus_sha256": corpus_hash.hexdigest(), "fingerprint": fingerprint.hexdigest(),
            "train_tokens": int(train_tokens.size), "val_tokens": int(val_tokens.size),
            "holdout_tokens": int(holdout_tokens.size),
            "train_bytes": (out / "train.bin").stat().st_size}
    _atomic_write(meta_path, json.dumps(meta, indent=2).encode())
    print(f"prepared {out}: {train_tokens.size:,} train / {val_tokens.size:,} val tokens, "
          f"fingerprint {meta['fingerprint'][:16]}")
    return out


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A verified cache: what the dataloader and the evaluation read (only the parts that were asked for)."""

    root: Path
    settings: SourceSettings
    fingerprint: str
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    token_bytes: np.ndarray
    holdout_tokens: np.ndarray


_PARTS = {"train": ("train.bin",), "eval": ("val.bin", "holdout.bin", "token_bytes.npy"),
          "all": ("train.bin", "val.bin", "holdout.bin", "token_bytes.npy")}
_EMPTY = np.zeros(0, dtype=np.uint16)


def load_prepared(source: str | None = None, *, verify: bool = True, part: str = "all") -> Prepared:
    """Open the cache of the current source; refuse when it is missing or its files do not match meta.json.

    `part` says what is needed: "train" (what a sandboxed train.py can see: meta.json and train.bin), "eval" (what
    the sandboxed evaluation can see: validation, holdout and byte counts) or "all" (a hand run).
    """
    settings = source_settings(source)
    root = source_dir(settings.source)
    hint = f"run `python prepare.py --source {settings.source}` (with the same AUTORESEARCH_* variables)"
    meta_path = root / "meta.json"
    if not meta_path.exists():
        raise PrepareError(f"no prepared data for source {settings.source!r} in {root}; {hint}")
    # The number of training shards is the preparer's choice; the fingerprint still tells the data apart.
    if not _settings_match(meta_path, settings, ignore=("num_shards",)):
        raise PrepareError(f"the cache in {root} was prepared with other settings than {settings}; {hint}")
    meta = json.loads(meta_path.read_text())
    settings = SourceSettings(**meta["settings"])
    wanted = _PARTS[part]
    if verify:
        for name, digest in meta["files"].items():
            if name not in wanted:
                continue
            path = root / name
            actual = _sha256_file(path) if path.exists() else "missing"
            if actual != digest:
                raise PrepareError(f"{path} does not match the recorded fingerprint "
                                   f"({actual[:12]} != {digest[:12]}); {hint}")
        train_path = root / "train.bin"
        if "train.bin" in wanted and (not train_path.exists() or train_path.stat().st_size != meta["train_bytes"]):
            raise PrepareError(f"{train_path} is missing or has the wrong size; {hint}")
    has = lambda name: name in wanted  # noqa: E731
    return Prepared(root, settings, meta["fingerprint"],
                    np.memmap(root / "train.bin", dtype=np.uint16, mode="r") if has("train.bin") else _EMPTY,
                    np.fromfile(root / "val.bin", dtype=np.uint16) if has("val.bin") else _EMPTY,
                    np.load(root / "token_bytes.npy", allow_pickle=False) if has("token_bytes.npy") else _EMPTY,
                    np.fromfile(root / "holdout.bin", dtype=np.uint16) if has("holdout.bin") else _EMPTY)


def run_seed(default: int) -> int:
    """The seed of this run: AUTORESEARCH_SEED from the harness (a fresh one per run), else train.py's default."""
    raw = os.environ.get("AUTORESEARCH_SEED")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise PrepareError(f"AUTORESEARCH_SEED={raw!r} is not an integer") from None


def training_clock() -> Callable[[], float]:
    """The clock the budget is measured on, the same one the harness enforces.

    With AUTORESEARCH_CLOCK=cpu (the CPU profile) it is this process's CPU time divided by the threads it may use,
    so a machine busy with other work slows the run down without changing how much training it gets. Otherwise it
    is a monotonic wall clock.
    """
    if os.environ.get("AUTORESEARCH_CLOCK") == "cpu":
        threads = cpu_threads()
        return lambda: time.process_time() / threads
    return time.perf_counter


def cpu_threads() -> int:
    """CPU threads this run may use: AUTORESEARCH_CPU_THREADS from the harness, else the CPUs it may run on."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, _env_int("AUTORESEARCH_CPU_THREADS", available))


# ---- Dataloader ----

def train_batches(prepared: Prepared, batch_size: int, seq_len: int, seed: int = 0,
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Endless (inputs, targets, epoch) int64 arrays of shape (batch_size, seq_len) from the training stream.

    Windows of seq_len + 1 tokens tile the stream; each epoch visits them in a permutation drawn from seed, so the
    data order is the same on every run with the same seed.
    """
    tokens = prepared.train_tokens
    n_windows = (tokens.size - 1) // seq_len
    if n_windows < batch_size:
        raise PrepareError(f"the training stream ({tokens.size} tokens) is too short for batches of "
                           f"{batch_size} x {seq_len}; lower the batch size or prepare a larger corpus")
    rng = np.random.default_rng(seed)
    epoch = 0
    while True:
        order = rng.permutation(n_windows)
        for start in range(0, n_windows - batch_size + 1, batch_size):
            rows = np.stack([tokens[i * seq_len:i * seq_len + seq_len + 1] for i in order[start:start + batch_size]])
            rows = rows.astype(np.int64)
            yield rows[:, :-1], rows[:, 1:], epoch
        epoch += 1


def eval_windows(prepared: Prepared, split: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """A fixed scored slice ("val" or "holdout"): (inputs, targets) of shape (n, seq_len), eval_tokens in total."""
    seq_len = prepared.settings.seq_len
    stream = prepared.val_tokens if split == "val" else prepared.holdout_tokens
    n = min(prepared.settings.eval_tokens, stream.size - 1) // seq_len
    if n < 1:
        raise PrepareError(f"the {split} stream ({stream.size} tokens) is shorter than one "
                           f"window of {seq_len}; prepare a larger corpus")
    rows = stream[:n * seq_len + 1].astype(np.int64)
    return rows[:-1].reshape(n, seq_len), rows[1:].reshape(n, seq_len)


# ---- The metric ----

def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """val_bpb = summed cross-entropy in nats / (ln 2 * UTF-8 bytes of the scored target tokens)."""
    if total_bytes <= 0:
        raise ValueError(f"no bytes were scored (total_bytes={total_bytes}); the validation slice is empty")
    return total_nats / (math.log(2) * total_bytes)


def score_logits(logits: Any, targets: Any, token_bytes: Any) -> tuple[float, int]:
    """(summed nats, summed bytes) over the targets whose tokens decode to at least one byte.

    Special tokens (0 bytes) are left out of both sums so that document separators neither cost nor earn anything.
    """
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    nll = -torch.gather(logprobs, -1, targets.unsqueeze(-1)).squeeze(-1).double()
    nbytes = token_bytes[targets]
    mask = nbytes > 0
    return float(torch.sum(torch.where(mask, nll, torch.zeros_like(nll)))), int(torch.sum(nbytes))


def evaluate_model(model: Any, prepared: Prepared, device: str = "cpu", batch_size: int = 8) -> tuple[float, int]:
    """In-process evaluation for a hand run of train.py: (val_bpb, eval_tokens). The harness uses `evaluate`."""
    import torch

    inputs, targets = eval_windows(prepared)
    token_bytes = torch.from_numpy(prepared.token_bytes.astype(np.int64)).to(device)
    nats, nbytes = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(inputs), batch_size):
            x = torch.from_numpy(inputs[i:i + batch_size]).to(device)
            y = torch.from_numpy(targets[i:i + batch_size]).to(device)
            logits = _check_logits(model(x), x.shape, prepared.settings.vocab_size)
            n, b = score_logits(logits.float(), y, token_bytes)
            nats, nbytes = nats + n, nbytes + b
    return bits_per_byte(nats, nbytes), int(targets.size)


def _check_logits(logits: Any, shape: Any, vocab_size: int) -> Any:
    import torch

    if type(logits) is not torch.Tensor:
        raise PrepareError(f"the model returned {type(logits).__name__}, expected a plain torch.Tensor of logits")
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(shape) or logits.shape[2] < vocab_size:
        raise PrepareError(f"the model returned logits of shape {tuple(logits.shape)}; expected "
                           f"({shape[0]}, {shape[1]}, >= {vocab_size})")
    if not logits.is_floating_point():
        raise PrepareError(f"the model returned logits of dtype {logits.dtype}; expected a floating dtype")
    if not bool(torch.isfinite(logits).all()):
        raise PrepareError("the model returned non-finite logits (NaN or inf)")
    return logits


# ---- Checkpoints: the model leaves the sandbox as data ----

def save_checkpoint(model: Any, path: str | os.PathLike[str], model_config: Any = None) -> Path:
    """Export the model's forward pass as a torch.export program at the evaluation's shape and save it to `path`.

    What the harness scores is this file alone: a graph of tensor operations with its weights. No code of train.py
    runs in the evaluation, so nothing train.py patches, forks or leaves behind can touch the score. The program
    takes token ids of shape (EVAL_BATCH, seq_len) and must return logits (EVAL_BATCH, seq_len, >= vocab_size).
    A model that torch.export cannot capture (data-dependent Python control flow, unsupported operations) fails here
    with the exporter's message; `model_config` is accepted for older callers and not needed.
    """
    import torch

    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    settings = load_prepared(verify=False, part="train").settings
    device = next(iter(model.parameters())).device
    was_training = model.training
    model.eval()
    example = torch.zeros((EVAL_BATCH, settings.seq_len), dtype=torch.long, device=device)
    try:
        with torch.no_grad():
            program = torch.export.export(model, (example,))
    except Exception as exc:
        raise PrepareError(f"torch.export could not capture the model's forward ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); keep forward(idx) free of "
                           "data-dependent Python branches and non-tensor state") from None
    finally:
        model.train(was_training)
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.pt2")
    torch.export.save(program, tmp)
    os.replace(tmp, dest)
    return dest


# ---- Compatibility names for an original-style train.py (its printed val_bpb is unverified) ----

_COMPAT_SOURCE = os.environ.get("AUTORESEARCH_DATA") or "offline"
MAX_SEQ_LEN = SOURCE_DEFAULTS.get(_COMPAT_SOURCE, SOURCE_DEFAULTS["offline"]).seq_len
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_TIME_BUDGET") or DEFAULT_BUDGETS["cuda"])


def make_dataloader(tokenizer: Tokenizer, batch_size: int, seq_len: int, split: str, device: str = "cuda",
                    ) -> Iterator[tuple[Any, Any, int]]:
    """Original-style loader: (x, y, epoch) tensors on device; split 'train' only (validation is for evaluation)."""
    import torch

    if split != "train":
        raise PrepareError(f"make_dataloader split={split!r}: only 'train' is served; evaluation reads validation")
    for x, y, epoch in train_batches(load_prepared(verify=False, part="train"), batch_size, seq_len):
        yield torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), epoch


def evaluate_bpb(model: Any, tokenizer: Tokenizer, batch_size: int) -> float:
    """Original-style in-process evaluation (compatibility mode: the number it returns is not verified)."""
    device = str(next(model.parameters()).device)
    return evaluate_model(model, load_prepared(), device=device, batch_size=batch_size)[0]


# ---- The evaluator (a separate, sandboxed process the harness runs on the exported model) ----

class EvaluationRejected(RuntimeError):
    """The model broke the evaluation's rules; the message says which."""


def load_program(path: Path, trusted: tuple[str, ...] = TRUSTED_OP_NAMESPACES) -> Any:
    """Load an exported program and refuse anything but a pure function of the token ids.

    Refused: state the program mutates (buffers or inputs, in its signature or through any in-place operator), more
    than one input or output, constants that are not tensors, and any call that is not an operator of a trusted
    namespace (no Python callables, no custom operators unless trusted). What is left cannot tell a probe from a scored batch except by the tokens themselves.
    """
    import operator

    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise EvaluationRejected(f"{path} is not a program saved by prepare.save_checkpoint "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None
    sig = program.graph_signature
    if sig.buffers_to_mutate or sig.user_inputs_to_mutate:
        raise EvaluationRejected("the exported model mutates state (buffers or inputs) in forward; the evaluation "
                                 "accepts only a pure function of the token ids")
    if len(sig.user_inputs) != 1 or len(sig.user_outputs) != 1:
        raise EvaluationRejected(f"the exported model takes {len(sig.user_inputs)} inputs and returns "
                                 f"{len(sig.user_outputs)} outputs; expected forward(idx) -> logits")
    for name, value in getattr(program, "constants", {}).items():
        if not isinstance(value, torch.Tensor):
            raise EvaluationRejected(f"the exported model holds a non-tensor constant {name!r}")
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op in ("call_module", "call_method"):
                raise EvaluationRejected(f"the exported graph calls {node.op} {node.target!r}; only operators")
            if node.op != "call_function":
                continue
            target = node.target
            if target is operator.getitem:
                continue
            if isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable:
                raise EvaluationRejected(f"the exported graph uses the in-place operator {target}, which can update "
                                         "state between calls; write forward without in-place updates (the "
                                         "evaluation accepts only a pure function of the token ids)")
            if isinstance(target, torch._ops.OpOverload) and target.namespace in trusted:
                continue
            raise EvaluationRejected(f"the exported graph calls {target!r}, which is not an operator of a trusted "
                                     f"namespace ({', '.join(trusted)}); use plain tensor operations")
    return program


def run_evaluation(model_path: Path, device: str | None = None, holdout: bool = False,
                   probe_tolerance: float = 1e-3) -> dict[str, Any]:
    """Score an exported model: {val_bpb, [holdout_bpb], eval_tokens, eval_seconds, corpus_fingerprint}.

    Causality: PROBE_BATCHES scored batches, chosen at random with a seed from the operating system, are run a
    second time with every token after a random position p replaced by tokens of another validation window (real
    text, so the probe looks like any batch); the logits up to p must not move. A model that reads the future at
    every position fails every probe; one that reads it at a single position j is caught only when some p == j.
    """
    import torch

    started = time.time()
    prepared = load_prepared(part="eval")
    if not model_path.is_file():
        raise EvaluationRejected(f"no model at {model_path}; train.py must call prepare.save_checkpoint(model, path)")
    module = load_program(model_path).module()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    vocab, seq_len = prepared.settings.vocab_size, prepared.settings.seq_len
    token_bytes = torch.from_numpy(prepared.token_bytes.astype(np.int64)).to(device)
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))

    def forward(x: Any) -> Any:
        return _check_logits(module(x), x.shape, vocab).float()

    def score_split(split: str) -> tuple[float, int]:
        inputs, targets = eval_windows(prepared, split)
        n_batches = (len(inputs) + EVAL_BATCH - 1) // EVAL_BATCH
        probed = set(rng.choice(n_batches, size=min(PROBE_BATCHES, n_batches), replace=False).tolist())
        nats, nbytes = 0.0, 0
        for b in range(n_batches):
            rows = np.arange(b * EVAL_BATCH, min((b + 1) * EVAL_BATCH, len(inputs)))
            padded = np.resize(rows, EVAL_BATCH)  # the program has a fixed batch: repeat rows, score the real ones
            x = torch.from_numpy(inputs[padded]).to(device)
            logits = forward(x)
            if b in probed:
                p = int(rng.integers(0, seq_len - 1))
                other = torch.from_numpy(inputs[rng.integers(0, len(inputs), EVAL_BATCH)]).to(device)
                changed = x.clone()
                changed[:, p + 1:] = other[:, p + 1:]
                moved = forward(changed)
                drift = float((logits[:, :p + 1] - moved[:, :p + 1]).abs().max())
                if not drift <= probe_tolerance * max(1.0, float(logits[:, :p + 1].abs().max())):
                    raise EvaluationRejected(f"causality probe failed: logits at positions <= {p} changed by "
                                             f"{drift:.3g} when only later tokens changed; the model must not look "
                                             "at future tokens")
            y = torch.from_numpy(targets[rows]).to(device)
            n, nb = score_logits(logits[:len(rows)], y, token_bytes)
            nats, nbytes = nats + n, nbytes + nb
        return bits_per_byte(nats, nbytes), int(targets.size)

    with torch.no_grad():
        val_bpb, eval_tokens = score_split("val")
        result: dict[str, Any] = {"val_bpb": val_bpb}
        if holdout:
            result["holdout_bpb"] = score_split("holdout")[0]
    result.update({"eval_tokens": eval_tokens, "eval_seconds": time.time() - started,
                   "corpus_fingerprint": prepared.fingerprint})
    return result


def format_summary(values: dict[str, Any]) -> str:
    """The `---` block the harness parses: one `key: value` line each, keys padded to a common width."""
    width = max(len(k) for k in values) + 1
    lines = ["---"]
    for key, value in values.items():
        if isinstance(value, float):
            text = f"{value:.6f}" if key.endswith("bpb") else f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"
        else:
            text = str(value)
        lines.append(f"{key + ':':<{width}} {text}")
    return "\n".join(lines) + "\n"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    try:
        result = run_evaluation(Path(args.model), device=args.device, holdout=args.holdout)
    except (PrepareError, EvaluationRejected) as exc:
        print(f"evaluation failed: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(format_summary(result))
    return 0


# ---- Command line ----

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prepare.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=sorted(SOURCE_DEFAULTS), default=None,
                        help="data source to prepare (default: AUTORESEARCH_DATA or offline)")
    parser.add_argument("--num-shards", type=_positive_int, default=None,
                        help="climbmix training shards to download (default 10)")
    parser.add_argument("--workers", type=_positive_int, default=8, help="parallel downloads (default 8)")
    sub = parser.add_subparsers(dest="command")
    ev = sub.add_parser("evaluate", help="score a model exported by prepare.save_checkpoint (what the harness records)")
    ev.add_argument("--model", required=True, help="the exported program written by prepare.save_checkpoint")
    ev.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ev.add_argument("--holdout", action="store_true", help="also score the hidden holdout split (for the person)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            return _cmd_evaluate(args)
        source = args.source or data_source()
        if args.num_shards is not None and source != "climbmix":
            raise PrepareError(f"--num-shards applies to --source climbmix only (source is {source!r})")
        prepare(source_settings(source, args.num_shards), workers=args.workers)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
