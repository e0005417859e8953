"""Rollout records and prompt datasets.

* :class:`Rollout`: one prompt + the model's thinking + answer, with labels and free metadata,
  stored one per line in JSONL (:func:`read_rollouts`, :func:`write_rollouts`,
  :func:`append_rollouts`).
* :class:`Prompt` and :func:`load_prompts`: the package's own prompt sets
  (``"cliff-harmful"``, ``"cliff-harmless"``, ``"cliff-near-miss"``) and loaders for the public
  benchmarks (AdvBench, JailbreakBench, HarmBench, StrongREJECT, XSTest, Alpaca, UltraChat) from
  a local CSV / JSON / JSONL file in the public release's columns, or from a Hugging Face dataset
  id when online.
"""

from __future__ import annotations

import csv
import hashlib
import io as _stdio
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from cliff_lens._typing import Validated
from cliff_lens.io import append_jsonl, iter_jsonl, iter_jsonl_numbered, write_jsonl

__all__ = [
    "Rollout",
    "Prompt",
    "read_rollouts",
    "write_rollouts",
    "append_rollouts",
    "load_prompts",
    "prompt_split",
    "request_key",
    "request_id_of",
    "fallback_request_id",
    "SPLITS",
    "shared_data_dir",
    "PACKAGE_SETS",
    "PUBLIC_SETS",
    "DatasetError",
]

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"

#: Split values of the package prompt sets. "train": the phrasings the cliff organism was
#: trained on; "dev": held-out PHRASINGS of training requests (never trained on, but their
#: request was, in other words); "test": held-out REQUESTS (no phrasing of them in train or dev).
SPLITS: tuple[str, ...] = ("train", "dev", "test")

#: Package prompt sets: name -> (file, harmful flag).
PACKAGE_SETS: dict[str, tuple[str, bool]] = {
    "cliff-harmful": ("harmful.jsonl", True),
    "cliff-harmless": ("harmless.jsonl", False),
    "cliff-near-miss": ("near_miss.jsonl", False),
}

#: Public sets: name -> (schema, local file name in the shared data dir or None, HF id, HF config, HF split).
PUBLIC_SETS: dict[str, dict[str, Any]] = {
    "advbench": {"schema": "advbench", "file": "advbench_harmful_behaviors.csv", "hf": "walledai/AdvBench"},
    "jbb-harmful": {
        "schema": "jbb-harmful",
        "file": None,
        "hf": "JailbreakBench/JBB-Behaviors",
        "hf_config": "behaviors",
        "hf_split": "harmful",
    },
    "jbb-benign": {
        "schema": "jbb-benign",
        "file": None,
        "hf": "JailbreakBench/JBB-Behaviors",
        "hf_config": "behaviors",
        "hf_split": "benign",
    },
    "harmbench": {"schema": "harmbench", "file": None, "hf": "walledai/HarmBench", "hf_config": "standard"},
    "strongreject": {
        "schema": "strongreject",
        "file": "strongreject_dataset.csv",
        "hf": "walledai/StrongREJECT",
    },
    "xstest": {"schema": "xstest", "file": "xstest_prompts.csv", "hf": "walledai/XSTest", "hf_split": "test"},
    "alpaca": {"schema": "alpaca", "file": "alpaca_harmless_sample.jsonl", "hf": "tatsu-lab/alpaca"},
    "ultrachat": {
        "schema": "ultrachat",
        "file": None,
        "hf": "HuggingFaceH4/ultrachat_200k",
        "hf_split": "test_sft",
    },
}

SCHEMAS = (
    "generic",
    "advbench",
    "jbb-harmful",
    "jbb-benign",
    "harmbench",
    "strongreject",
    "xstest",
    "alpaca",
    "ultrachat",
)


class DatasetError(ValueError):
    """A dataset file or name could not be read as prompts; the message says which and how to fix it."""


# ----------------------------------------------------------------------------------------------
# Rollout record


@dataclass
class Rollout:
    """One generation: the prompt, the model's thinking, its answer, labels and metadata.

    ``harmful`` labels the PROMPT (is it a harmful request); ``refused`` is a judge's label of
    the ANSWER. ``thinking_closed`` is False when the model never wrote its end-of-thinking
    marker (then ``answer`` is empty or None). Unknown keys met when reading go into ``meta``.
    ``request_id`` is the id of the underlying request (:attr:`Prompt.request_id`): the same for
    every phrasing and framing of one request, so analyses can group or cross-fit by request.
    A record read without the key (written before rollouts carried it) gets
    :func:`fallback_request_id`: the id of the plain request a jailbreak-framed prompt wraps
    (``meta["request"]``), else of its prompt.
    """

    id: str
    prompt: str
    thinking: str | None = None
    answer: str | None = None
    source: str = ""
    harmful: bool | None = None
    refused: bool | None = None
    thinking_closed: bool = True
    meta: dict = field(default_factory=dict)
    request_id: str | None = None

    def to_dict(self) -> dict:
        """A JSON-serialisable dict with the record's fields (``meta`` kept nested)."""
        d = asdict(self)
        d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Rollout:
        """Build a Rollout from a dict; keys that are not fields are kept in ``meta``.

        Raises :class:`ValueError` if ``prompt`` is missing. A missing ``id`` is derived from a
        hash of the prompt and the texts; a missing ``request_id`` key (older files) from the
        prompt, see :func:`fallback_request_id`.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a rollout must be a JSON object, got {type(d).__name__}")
        if "prompt" not in d or d["prompt"] is None:
            raise ValueError(
                f"rollout record has no 'prompt' key (keys: {sorted(d)}); every rollout needs its prompt"
            )
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        meta = dict(kw.pop("meta", None) or {})
        for k, v in d.items():
            if k not in names:
                meta[k] = v
        if kw.get("id") in (None, ""):
            kw["id"] = _hash_id(kw["prompt"], kw.get("thinking"), kw.get("answer"))
        kw["id"] = str(kw["id"])
        if kw.get("thinking_closed") is None:
            kw.pop("thinking_closed", None)
        if "request_id" not in d:  # written before rollouts carried it
            kw["request_id"] = fallback_request_id(kw["prompt"], meta)
        elif kw["request_id"] is not None:
            kw["request_id"] = str(kw["request_id"])
        return cls(**kw, meta=meta)


def _hash_id(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, default=str).encode()).hexdigest()[:16]


def read_rollouts(
    path: str | os.PathLike, *, on_error: Literal["raise", "skip"] = "raise"
) -> Iterator[Rollout]:
    """Stream :class:`Rollout` records from a JSONL file (bounded memory).

    A malformed line (bad JSON, or a record without ``prompt``) raises an error naming
    ``path:line``, or is skipped with a warning when ``on_error="skip"``.
    """
    for i, d in iter_jsonl_numbered(path, on_error=on_error):
        try:
            yield Rollout.from_dict(d)
        except (TypeError, ValueError) as e:
            msg = f"{path}:{i}: not a rollout ({e}); fix the record or pass on_error='skip'"
            if on_error == "skip":
                warnings.warn(msg, stacklevel=2)
                continue
            raise DatasetError(msg) from None


def write_rollouts(path: str | os.PathLike, rollouts: Iterable[Rollout]) -> Path:
    """Write rollouts as a whole JSONL file, atomically (a crash leaves the old file intact)."""
    return write_jsonl(path, (r.to_dict() for r in rollouts))


def append_rollouts(path: str | os.PathLike, rollouts: Iterable[Rollout]) -> int:
    """Append rollouts as whole, fsynced JSONL lines; returns how many were written."""
    return append_jsonl(path, (r.to_dict() for r in rollouts))


# ----------------------------------------------------------------------------------------------
# Prompts


@dataclass
class Prompt:
    """A prompt to send to a model.

    ``harmful`` is the dataset's label for the request (None when the source has none),
    ``source`` the dataset name, ``category`` the dataset's category if any, ``split`` the
    split: the file's own ("train" / "dev" / "test", see :data:`SPLITS`), or a deterministic
    train/test hash split of the text (:func:`prompt_split`).

    ``request_id`` names the underlying request (behaviour), shared by all its phrasings and
    framings: the package sets' ``request`` field (category + hash of the base request),
    :func:`request_key` of the text for sets without ids (AdvBench, XSTest, Alpaca, ... and local
    files), the wrapped plain prompt's id for ``cliff-jailbreak``. :func:`load_prompts` always
    fills it; a Prompt built by hand has None (rollouts then use :func:`request_id_of` its text).
    """

    text: str
    harmful: bool | None = None
    source: str = ""
    category: str | None = None
    meta: dict = field(default_factory=dict)
    split: str | None = None
    request_id: str | None = None

    def __str__(self) -> str:
        return self.text


def prompt_split(text: str, *, test_fraction: float = 0.2) -> str:
    """Deterministic train/test assignment from the prompt text ("test" for ~``test_fraction``).

    This is a split of PHRASINGS: two wordings of one request can land on both sides. The
    package sets' "train" lines are exactly this split's "train" for ``test_fraction=0.2``; their
    "test" lines are re-split by request (:data:`SPLITS`).
    """
    norm = re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()
    h = int(hashlib.sha256(("split:" + norm).encode()).hexdigest(), 16)
    if abs(test_fraction - 0.2) < 1e-12:
        return "test" if h % 5 == 0 else "train"
    return "test" if (h % 10_000) < test_fraction * 10_000 else "train"


# words that carry no request content: function words and the framing / how-to boilerplate of
# request phrasings ("Give me step-by-step instructions to ...", "... without getting caught")
_KEY_STOP = frozenset(
    """
    a an the this that these those it its i me my mine myself we us our you your yours he him his
    she her they them their someone somebody something anyone
    is am are was were be been being do does did doing done have has had having will would shall
    should can could may might must ought let lets don doesn didn won wouldn shouldn isn aren wasn
    to of in on at by for from with into onto about as than then so such and or but if while also
    just very really quite some any all every each more most much many few one up out off over
    how what whats which who whom whose when where why there here
    please tell give show teach explain describe write provide outline list create develop
    generate compose draft produce offer share suggest
    guide tutorial instructions instruction step steps stepbystep detail detailed details strategy
    way ways method methods plan plans tip tips easiest best simple simply good quick quickly fast
    need want wanted like help walk through first start begin specific sure exactly possible
    without getting caught being get gets got anybody noticing
    """.split()
)


def _key_stem(w: str) -> str:
    """A light stem so inflections share a key: -ing, -ed, plural -s, final -e."""
    if len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
    elif len(w) > 4 and w.endswith("ed"):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


def request_key(text: str) -> str:
    """A request id for text that carries none: phrasings of one request share it.

    Lowercase the text, drop apostrophe endings (``someone's``, ``don't``) and punctuation, drop
    function words and the framing / how-to boilerplate of request phrasings ("How do I",
    "Write a tutorial on how to", "Give me step-by-step instructions", "without getting
    caught"...), stem lightly (-ing, -ed, plural -s, final -e), then sort and dedupe the words
    that are left and hash them: ``"rk-" + 12 hex digits``. So "Write a tutorial on how to make a
    bomb" and "Provide step-by-step instructions for how to make a bomb" share a key, and "...
    hack a bank" gets another. A text with no content word left keys on all its words.

    It groups rewordings that differ in framing, word order and inflection; it does not
    recognise a paraphrase in other content words. Package prompts carry their own ids
    (:attr:`Prompt.request_id`); :func:`request_id_of` prefers those.
    """
    low = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    words = [w.split("'")[0] for w in re.findall(r"[a-z0-9]+(?:'[a-z]+)?", low)]
    content = {_key_stem(w) for w in words if w and w not in _KEY_STOP}
    if not content:
        content = {w for w in words if w}
    return "rk-" + hashlib.sha256(" ".join(sorted(content)).encode()).hexdigest()[:12]


_PACKAGE_REQUEST_IDS: dict[str, str] | None = None


def _package_request_ids() -> dict[str, str]:
    """Normalised package prompt text -> its ``request`` id (every package set, read once)."""
    global _PACKAGE_REQUEST_IDS
    if _PACKAGE_REQUEST_IDS is None:
        ids: dict[str, str] = {}
        for fname, _ in PACKAGE_SETS.values():
            path = PROMPTS_DIR / fname
            if path.is_file():
                for r in iter_jsonl(path):
                    if isinstance(r.get("prompt"), str) and r.get("request"):
                        ids.setdefault(_norm_text(r["prompt"]), str(r["request"]))
        _PACKAGE_REQUEST_IDS = ids
    return _PACKAGE_REQUEST_IDS


def _norm_text(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def request_id_of(text: str) -> str:
    """The request id of a prompt text: its package set's id when it is a package prompt
    (case- and punctuation-insensitive match), else :func:`request_key`."""
    return _package_request_ids().get(_norm_text(text)) or request_key(text)


def fallback_request_id(prompt: str, meta: dict | None = None) -> str:
    """The request id of a rollout or prompt that carries none.

    A jailbreak-framed prompt keeps the plain request it wraps in ``meta["request"]``; that
    text is used when present, else ``prompt``; then :func:`request_id_of`.
    """
    wrapped = (meta or {}).get("request")
    return request_id_of(wrapped if isinstance(wrapped, str) and wrapped.strip() else prompt)


def shared_data_dir() -> Path | None:
    """The team's read-only public-data folder: ``$CLIFF_LENS_SHARED_DATA`` or ``<checkout>/../shared/data``."""
    env = os.environ.get("CLIFF_LENS_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    p = Path(__file__).resolve().parents[2] / "shared" / "data"
    return p if p.is_dir() else None


def load_prompts(
    name_or_path: str | os.PathLike,
    *,
    split: str | None = None,
    limit: int | None = None,
    harmful: bool | None = None,
    schema: str | None = None,
    label_harmful: bool | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    encoding: str = "utf-8",
    hf_split: str | None = None,
) -> list[Prompt]:
    """Load a prompt set as a list of :class:`Prompt`.

    ``name_or_path`` is one of

    * a package set: ``"cliff-harmful"``, ``"cliff-harmless"``, ``"cliff-near-miss"``, and
      ``"cliff-jailbreak"`` (the harmful ones in jailbreak framings,
      :func:`cliff_lens.framings.jailbreak_prompts`);
    * a public set name: ``"advbench"``, ``"jbb-harmful"``, ``"jbb-benign"``, ``"harmbench"``,
      ``"strongreject"``, ``"xstest"``, ``"alpaca"``, ``"ultrachat"`` (read from the shared data
      folder when the file is there, see :func:`shared_data_dir`, otherwise from the HF hub);
    * a local ``.csv`` / ``.json`` / ``.jsonl`` file: the schema is detected from the columns of
      the public releases (AdvBench ``goal``; JailbreakBench ``Goal``/``Behavior``/``Category``
      with "harmful"/"benign" in the file name; HarmBench ``Behavior``/``FunctionalCategory``;
      StrongREJECT ``forbidden_prompt``; XSTest ``prompt``/``type``/``label``; Alpaca
      ``instruction`` (+``input``); UltraChat ``messages`` or ``data``; otherwise a
      ``prompt``/``text``/``goal``/``question`` column), or forced with ``schema=``;
    * an HF dataset id ``"org/name"`` (needs ``pip install datasets`` and network).

    Args:
        split: keep only ``"train"``, ``"dev"`` or ``"test"`` prompts (the file's own ``split``
            field, see :data:`SPLITS`, or a deterministic 80/20 train/test hash split of the
            text, :func:`prompt_split`). In the package sets "test" holds only requests the
            cliff organism never saw in any phrasing; "dev" holds held-out phrasings of its
            training requests.
        limit: keep the first ``limit`` prompts (after filtering).
        harmful: keep only prompts whose harmful flag equals this (e.g. XSTest's unsafe ones).
        schema: force a schema (one of ``SCHEMAS``) instead of detecting it from the columns.
        label_harmful: the harmful flag to give prompts whose source carries no label.
        on_error: ``"skip"`` skips malformed lines with a warning instead of raising.
        encoding: text encoding of a local file (default UTF-8).
        hf_split: split of an HF dataset (defaults per dataset, else ``"train"``).
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {SPLITS} or None")
    if schema is not None and schema not in SCHEMAS:
        raise ValueError(f"schema={schema!r} is unknown; use one of {SCHEMAS}")
    key = str(name_or_path)
    rows: list[tuple[dict, str]]  # (row, where)
    if key == "cliff-jailbreak":
        from .framings import jailbreak_prompts

        prompts = jailbreak_prompts(load_prompts("cliff-harmful", split=split))
    elif key in PACKAGE_SETS:
        fname, flag = PACKAGE_SETS[key]
        rows = _read_rows(PROMPTS_DIR / fname, on_error=on_error, encoding="utf-8")
        prompts = [_row_to_prompt(r, "generic", key, where, label=flag) for r, where in rows]
    elif key.lower() in PUBLIC_SETS:
        spec = PUBLIC_SETS[key.lower()]
        d = shared_data_dir()
        local = d / spec["file"] if d is not None and spec["file"] else None
        if local is not None and local.is_file():
            rows = _read_rows(local, on_error=on_error, encoding=encoding)
            source = key.lower()
        else:
            rows = _hf_rows(spec["hf"], spec.get("hf_config"), hf_split or spec.get("hf_split", "train"))
            source = key.lower()
        sch = schema or spec["schema"]
        prompts = _convert(rows, sch, source, on_error, label_harmful)
    elif Path(key).exists():
        path = Path(key)
        if path.is_dir():
            raise DatasetError(f"{path} is a directory; pass one .csv/.json/.jsonl file inside it")
        rows = _read_rows(path, on_error=on_error, encoding=encoding)
        if not rows:
            raise DatasetError(f"{path} holds no rows; the dataset is empty (check the file)")
        sch = schema or _detect_schema(rows[0][0], path.name)
        prompts = _convert(rows, sch, path.stem, on_error, label_harmful)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", key) and not key.endswith((".csv", ".json", ".jsonl")):
        rows = _hf_rows(key, None, hf_split or "train")
        if not rows:
            raise DatasetError(f"HF dataset {key!r} split {hf_split or 'train'!r} is empty")
        sch = schema or _detect_schema(rows[0][0], key)
        prompts = _convert(rows, sch, key, on_error, label_harmful)
    else:
        raise DatasetError(
            f"{key!r} is neither a file nor a known prompt set; use a path to a .csv/.json/.jsonl file, "
            f"one of {sorted(PACKAGE_SETS) + ['cliff-jailbreak'] + sorted(PUBLIC_SETS)}, or an HF dataset id 'org/name'"
        )
    if not prompts:
        raise DatasetError(f"{key}: no prompts found (empty dataset); check the file and its columns")
    if harmful is not None:
        prompts = [p for p in prompts if p.harmful == harmful]
    if split is not None:
        prompts = [p for p in prompts if p.split == split]
    if limit is not None:
        prompts = prompts[: max(0, int(limit))]
    if not prompts:
        raise DatasetError(f"{key}: no prompts left after filtering (split={split!r}, harmful={harmful!r})")
    return prompts


# ---- reading files ---------------------------------------------------------------------------


def _read_text(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}:{line}: not valid {encoding} text ({e.reason} at byte {e.start}); convert the file, "
            f"e.g. `iconv -f latin1 -t utf-8 {path} > fixed.{path.suffix.lstrip('.')}`, "
            f"or pass encoding='latin-1' (or the file's real encoding)"
        ) from None
    return text.lstrip("\ufeff")


def _read_rows(
    path: Path, *, on_error: Validated[Literal["raise", "skip"]], encoding: str
) -> list[tuple[dict, str]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or (suffix == ".json" and _looks_like_jsonl(path)):
        if encoding.lower().replace("-", "") not in ("utf8",):
            text = _read_text(path, encoding)
            return _parse_jsonl_text(text, path, on_error)
        _read_text(path, "utf-8")  # clear error for non-UTF-8 files before streaming
        return [(r, f"{path}:{i}") for i, r in enumerate(iter_jsonl(path, on_error=on_error), start=1)]
    text = _read_text(path, encoding)
    if suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); fix the file") from None
        if isinstance(obj, dict):
            for k in ("data", "rows", "prompts", "train", "test", "instances"):
                if isinstance(obj.get(k), list):
                    obj = obj[k]
                    break
        if not isinstance(obj, list):
            raise DatasetError(f"{path}: expected a JSON array of objects, got {type(obj).__name__}")
        out = []
        for i, r in enumerate(obj):
            if isinstance(r, str):
                r = {"prompt": r}
            if not isinstance(r, dict):
                msg = f"{path}: element {i} is {type(r).__name__}, not an object"
                if on_error == "skip":
                    warnings.warn(msg, stacklevel=3)
                    continue
                raise DatasetError(msg + "; fix it or pass on_error='skip'")
            out.append((r, f"{path}[{i}]"))
        return out
    if suffix in (".csv", ".tsv"):
        return _parse_csv(text, path, on_error, delimiter="\t" if suffix == ".tsv" else ",")
    raise DatasetError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .json or .jsonl")


def _looks_like_jsonl(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if not head.startswith(b"{"):
        return False
    first = head.split(b"\n", 1)[0]
    try:
        json.loads(first)
        return True
    except ValueError:
        return False


def _parse_jsonl_text(text: str, path: Path, on_error: str) -> list[tuple[dict, str]]:
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if not isinstance(r, dict):
                raise ValueError(f"expected a JSON object, got {type(r).__name__}")
        except ValueError as e:
            msg = f"{path}:{i}: malformed JSONL line ({e})"
            if on_error == "skip":
                warnings.warn(msg, stacklevel=3)
                continue
            raise DatasetError(msg + "; fix or delete the line, or pass on_error='skip'") from None
        out.append((r, f"{path}:{i}"))
    return out


def _parse_csv(text: str, path: Path, on_error: str, delimiter: str = ",") -> list[tuple[dict, str]]:
    reader = csv.reader(_stdio.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    out: list[tuple[dict, str]] = []
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            msg = f"{path}:{reader.line_num or start}: malformed CSV ({e})"
            if on_error == "skip" and header is not None:
                warnings.warn(msg, stacklevel=3)
                continue
            raise DatasetError(msg + "; fix the quoting, or pass on_error='skip'") from None
        if not row or all(not c.strip() for c in row):
            continue
        if header is None:
            header = [h.strip() for h in row]
            continue
        if len(row) != len(header):
            msg = f"{path}:{start}: malformed CSV row ({len(row)} fields, header has {len(header)})"
            if on_error == "skip":
                warnings.warn(msg, stacklevel=3)
                continue
            raise DatasetError(msg + "; fix the row (quote fields with commas), or pass on_error='skip'")
        out.append((dict(zip(header, row)), f"{path}:{start}"))
    if header is None:
        raise DatasetError(f"{path} is empty (no CSV header); the dataset is empty")
    return out


def _hf_rows(dataset_id: str, config: str | None, split: str) -> list[tuple[dict, str]]:
    try:
        import datasets  # noqa: F401
        from datasets import load_dataset
    except ImportError:
        raise DatasetError(
            f"loading {dataset_id!r} from the HF hub needs the `datasets` package: "
            f"pip install 'cliff_lens[datasets]'; or pass a local .csv/.json/.jsonl file instead"
        ) from None
    try:
        ds = (
            load_dataset(dataset_id, config, split=split) if config else load_dataset(dataset_id, split=split)
        )
    except Exception as e:  # network, auth, missing split ...
        raise DatasetError(
            f"could not load HF dataset {dataset_id!r} (config={config!r}, split={split!r}): {type(e).__name__}: {e}. "
            f"Offline? Download the public file and pass its local path instead"
        ) from None
    return [(dict(r), f"{dataset_id}[{split}][{i}]") for i, r in enumerate(ds)]


# ---- schemas ---------------------------------------------------------------------------------


def _cols(row: dict) -> dict[str, str]:
    return {str(k).strip().lower(): k for k in row}


def _detect_schema(row: dict, name: str) -> str:
    c = _cols(row)
    lname = name.lower()
    if "goal" in c and "behavior" in c and "category" in c:
        if "benign" in lname:
            return "jbb-benign"
        if "harmful" in lname:
            return "jbb-harmful"
        raise DatasetError(
            f"{name}: JailbreakBench columns found but the file name says neither 'harmful' nor 'benign'; "
            f"pass schema='jbb-harmful' or schema='jbb-benign' (never mix the two)"
        )
    if "behavior" in c and ("functionalcategory" in c or "semanticcategory" in c or "behaviorid" in c):
        return "harmbench"
    if "forbidden_prompt" in c:
        return "strongreject"
    if "prompt" in c and "label" in c and "type" in c:
        return "xstest"
    if "prompt" in c and "type" in c and "focus" in c:
        return "xstest"
    if "goal" in c and "target" in c:
        return "advbench"
    if "messages" in c or ("data" in c and isinstance(row[c["data"]], list)):
        return "ultrachat"
    if "instruction" in c and "prompt" not in c:
        return "alpaca"
    return "generic"


_TEXT_KEYS = ("prompt", "text", "instruction", "goal", "question", "behavior", "forbidden_prompt", "query")


def _get(row: dict, c: dict[str, str], *names: str) -> Any:
    for n in names:
        if n in c:
            v = row[c[n]]
            if v is not None and not (isinstance(v, str) and not v.strip()):
                return v
    return None


def _boolish(v: Any) -> bool | None:
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "unsafe", "harmful"):
        return True
    if s in ("0", "false", "no", "safe", "harmless", "benign"):
        return False
    return None


def _convert(rows, schema, source, on_error, label_harmful) -> list[Prompt]:
    out = []
    for r, where in rows:
        try:
            out.append(_row_to_prompt(r, schema, source, where, label=label_harmful))
        except DatasetError as e:
            if on_error == "skip":
                warnings.warn(str(e), stacklevel=3)
                continue
            raise
    return out


# a row's fields under a schema: (text, category, harmful, meta)
_Fields = tuple[Any, Any, bool | None, dict[str, Any]]


def _jbb_fields(row: dict, c: dict[str, str], harmful: bool) -> _Fields:
    """JailbreakBench behaviours (harmful or benign split)."""
    meta: dict[str, Any] = {}
    text = _get(row, c, "goal", "prompt")
    category = _get(row, c, "category")
    for k in ("behavior", "source", "index", "target"):
        if k in c:
            meta[k] = row[c[k]]
    return text, category, harmful, meta


def _harmbench_fields(row: dict, c: dict[str, str]) -> _Fields:
    """HarmBench behaviours, a context string prepended to the behaviour."""
    meta: dict[str, Any] = {}
    text = _get(row, c, "behavior", "prompt")
    context = _get(row, c, "contextstring", "context")
    if context:
        meta["context"] = context
        text = f"{context}\n\n---\n\n{text}" if text else None
    category = _get(row, c, "semanticcategory", "category")
    fc = _get(row, c, "functionalcategory")
    if fc:
        meta["functional_category"] = fc
    if "behaviorid" in c:
        meta["behavior_id"] = row[c["behaviorid"]]
    return text, category, True, meta


def _strongreject_fields(row: dict, c: dict[str, str]) -> _Fields:
    """StrongREJECT forbidden prompts."""
    meta: dict[str, Any] = {}
    text = _get(row, c, "forbidden_prompt", "prompt")
    category = _get(row, c, "category")
    if "source" in c:
        meta["source"] = row[c["source"]]
    return text, category, True, meta


def _xstest_fields(row: dict, c: dict[str, str], label: bool | None) -> _Fields:
    """XSTest prompts, harmful from the label column or (v1) the ``contrast_`` type prefix."""
    meta: dict[str, Any] = {}
    harmful = label
    text = _get(row, c, "prompt")
    category = _get(row, c, "type")
    lab = _get(row, c, "label")
    if lab is not None:
        harmful = _boolish(lab)
    elif category is not None:  # XSTest v1: unsafe types are prefixed "contrast_"
        harmful = str(category).startswith("contrast")
    for k in ("id", "focus", "note"):
        if k in c:
            meta[k] = row[c[k]]
    return text, category, harmful, meta


def _alpaca_fields(row: dict, c: dict[str, str], source: str, label: bool | None) -> _Fields:
    """Alpaca-style instruction (+ input); harmful from the source name unless labelled."""
    category = None
    harmful = label
    text = _get(row, c, "instruction", "prompt")
    inp = _get(row, c, "input")
    if text and inp:
        text = f"{text}\n\n{inp}"
    if "category" in c and row[c["category"]]:
        category = row[c["category"]]
    if label is None:
        lname = source.lower()
        harmful = True if "harmful" in lname else False
    return text, category, harmful, {}


def _ultrachat_fields(row: dict, c: dict[str, str], label: bool | None) -> _Fields:
    """UltraChat dialogues: the first user message (or first turn); harmless unless labelled."""
    meta: dict[str, Any] = {}
    text = None
    msgs = _get(row, c, "messages")
    if isinstance(msgs, list):
        for m in msgs:
            if isinstance(m, dict) and m.get("role") == "user" and m.get("content"):
                text = m["content"]
                break
    if text is None:
        data = _get(row, c, "data")
        if isinstance(data, list) and data:
            text = data[0]
    if text is None:
        text = _get(row, c, "prompt")
    harmful = False if label is None else label
    for k in ("prompt_id", "id"):
        if k in c:
            meta[k] = row[c[k]]
    return text, None, harmful, meta


def _generic_fields(row: dict, c: dict[str, str], label: bool | None) -> _Fields:
    """Any table with a text column; harmful from a ``harmful`` or ``label`` column if boolean-like."""
    harmful = label
    text = _get(row, c, *_TEXT_KEYS)
    category = _get(row, c, "category", "type")
    if "harmful" in c and _boolish(row[c["harmful"]]) is not None:
        harmful = _boolish(row[c["harmful"]])
    elif "label" in c and _boolish(row[c["label"]]) is not None:
        harmful = _boolish(row[c["label"]])
    return text, category, harmful, {}


def _schema_fields(row: dict, c: dict[str, str], schema: str, source: str, label: bool | None) -> _Fields:
    """Text, category, harmful flag and meta of a row read with its dataset's schema."""
    if schema == "advbench":
        return _get(row, c, "goal", "prompt", "behavior"), None, True, {}
    if schema in ("jbb-harmful", "jbb-benign"):
        return _jbb_fields(row, c, schema == "jbb-harmful")
    if schema == "harmbench":
        return _harmbench_fields(row, c)
    if schema == "strongreject":
        return _strongreject_fields(row, c)
    if schema == "xstest":
        return _xstest_fields(row, c, label)
    if schema == "alpaca":
        return _alpaca_fields(row, c, source, label)
    if schema == "ultrachat":
        return _ultrachat_fields(row, c, label)
    return _generic_fields(row, c, label)


def _row_to_prompt(row: dict, schema: str, source: str, where: str, *, label: bool | None = None) -> Prompt:
    c = _cols(row)
    text, category, harmful, meta = _schema_fields(row, c, schema, source, label)
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(
            f"{where}: no prompt text for schema {schema!r} (columns: {sorted(row)}); "
            f"fix the row, pass schema=..., or on_error='skip'"
        )
    text = text.strip()
    split = _get(row, c, "split")
    if split not in SPLITS:
        split = prompt_split(text)
    rid = _get(row, c, "request") if schema == "generic" else None
    if rid is None and schema == "harmbench":
        rid = meta.get("behavior_id") or None
    request_id = str(rid) if rid is not None else request_key(text)
    return Prompt(
        text=text,
        harmful=harmful,
        source=source,
        category=None if category is None else str(category),
        meta=meta,
        split=split,
        request_id=request_id,
    )
