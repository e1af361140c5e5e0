"""Real preference data: Anthropic's HH-RLHF, parsed into the columns every method here reads.

HH-RLHF (Bai et al. 2022) stores each comparison as two whole dialogues, ``chosen`` and ``rejected``, in a plain
text format::

    "\\n\\nHuman: How do I bake bread?\\n\\nAssistant: Mix flour... \\n\\nHuman: And then?\\n\\nAssistant: Knead it."

The two dialogues share every turn except the last assistant reply. We split them into the ecosystem's
``prompt/chosen/rejected`` columns: ``prompt`` is the dialogue up to and *including* the final ``"\\n\\nAssistant:"``,
and ``chosen``/``rejected`` are the two final replies (with their leading space), so ``prompt + chosen`` is the
original chosen dialogue, character for character. The tiny world writes the same format.

**Your own data.** :func:`load_preferences` reads comparisons from a hub id or a local file or folder (JSON Lines,
JSON, Parquet, CSV, or a ``save_to_disk`` folder) in any of three formats, told apart by the columns: raw HH-RLHF
dialogues (split as above), ``prompt/chosen/rejected`` strings (kept), or conversational lists of
``{"role", "content"}`` messages (TRL's format, rendered by a tokenizer's chat template or in HH's turn format).
:func:`load_hh_rlhf` is that function pointed at HH-RLHF.

Bad rows raise :class:`DataValidationError`, which names the column and the row.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from collections.abc import Mapping
from pathlib import Path

from rrhf_lite.core.validation import (
    DataValidationError,
    _check_text,
    _is_sequence,
    _short,
    validate_preference_dataset,
)

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
HH_RLHF = "Anthropic/hh-rlhf"


def split_prompt_response(dialogue: str) -> tuple[str, str]:
    """Split a dialogue at its last ``"\\n\\nAssistant:"``: (everything up to and including it, the reply)."""
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        raise ValueError(f"no {ASSISTANT!r} turn in dialogue: {dialogue[:80]!r}")
    cut += len(ASSISTANT)
    return dialogue[:cut], dialogue[cut:]


def parse_turns(dialogue: str) -> list[dict[str, str]]:
    """The dialogue as chat messages, ``[{"role": "user" | "assistant", "content": ...}, ...]``."""
    turns: list[dict[str, str]] = []
    rest = dialogue
    if rest.strip() and not rest.startswith((HUMAN, ASSISTANT)):
        raise ValueError(f"text before the first turn: {rest[:40]!r}")
    while rest:
        role = "user" if rest.startswith(HUMAN) else "assistant"
        rest = rest[len(HUMAN if role == "user" else ASSISTANT):]
        ends = [i for i in (rest.find(HUMAN), rest.find(ASSISTANT)) if i >= 0]
        end = min(ends) if ends else len(rest)
        turns.append({"role": role, "content": rest[:end].strip()})
        rest = rest[end:]
    return turns


def hh_to_preference(chosen_dialogue: str, rejected_dialogue: str, row: int | None = None) -> dict[str, str]:
    """One HH-RLHF row -> ``{"prompt", "chosen", "rejected"}``; the two dialogues must share their prompt."""
    try:
        prompt, chosen = split_prompt_response(chosen_dialogue)
    except ValueError as e:
        raise DataValidationError("chosen", row, str(e)) from None
    try:
        rejected_prompt, rejected = split_prompt_response(rejected_dialogue)
    except ValueError as e:
        raise DataValidationError("rejected", row, str(e)) from None
    if rejected_prompt != prompt:
        raise DataValidationError("rejected", row, "its dialogue before the last reply differs from the chosen one's")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _why_dropped(error: DataValidationError) -> str:
    """The reason of a row :func:`hh_to_preference` could not split, without the row's own text."""
    if "differs" in error.message:
        return "the chosen and rejected prompts differ"
    if error.message.startswith("no "):
        return f"no Assistant turn in '{error.column}'"
    return f"{error.message.split(':')[0]} in '{error.column}'"


def hh_dataset_to_preferences(ds, on_mismatch: str = "raise"):
    """A dataset with HH ``chosen``/``rejected`` dialogue columns -> ``prompt/chosen/rejected``.

    ``on_mismatch="skip"`` drops rows that cannot be split (two dialogues that do not share a prompt, as in a few
    real HH rows, or a dialogue without an Assistant turn) and prints how many were dropped for each reason, with the
    first such row; ``"raise"`` stops at the first one.
    """
    if on_mismatch not in ("raise", "skip"):
        raise ValueError(f"on_mismatch must be 'raise' or 'skip', got {on_mismatch!r}")
    for column in ("chosen", "rejected"):
        if column not in ds.column_names:
            raise DataValidationError(column, None, f"missing; the dataset has {ds.column_names}")
    keep, dropped = [], {}  # why a row was dropped -> the rows
    for i, (c, r) in enumerate(zip(ds["chosen"], ds["rejected"])):
        try:
            hh_to_preference(c, r, row=i)
            keep.append(i)
        except DataValidationError as e:
            if on_mismatch == "raise":
                raise
            dropped.setdefault(_why_dropped(e), []).append(i)
    if len(keep) < len(ds):
        reasons = "; ".join(f"{len(rows)}: {reason} (first: row {rows[0]})" for reason, rows in dropped.items())
        print(f"HH-RLHF: dropped {len(ds) - len(keep)} of {len(ds)} rows. {reasons}")
        ds = ds.select(keep)
    parsed = ds.map(lambda row: hh_to_preference(row["chosen"], row["rejected"]), remove_columns=ds.column_names)
    return parsed.select_columns(["prompt", "chosen", "rejected"])


# ------------------------------------------------------------------------------------------------------------
# Bring your own preferences: a hub id or a local file/folder, in any of three formats
# ------------------------------------------------------------------------------------------------------------
ACCEPTED_FORMATS = (
    "accepted formats: raw HH-RLHF dialogues (chosen/rejected with '\\n\\nHuman:'/'\\n\\nAssistant:' turns), "
    "prompt/chosen/rejected strings, or conversational lists of {'role', 'content'} messages (chosen/rejected, "
    "with or without a prompt list)"
)
# The local files we read, by how their name ends, and the `datasets` builder that reads each.
DATA_FILE_ENDINGS = {".jsonl": "json", ".jsonl.gz": "json", ".json": "json", ".json.gz": "json",
                     ".parquet": "parquet", ".csv": "csv"}


def load_preferences(source, split: str = "train", max_rows: int | None = None, tokenizer=None,
                     revision: str | None = None):
    """Comparisons from anywhere, as a ``datasets.Dataset`` with exactly the columns ``prompt/chosen/rejected``.

    **Where from.** ``source`` is one of:

    * a hub dataset id, e.g. ``"Anthropic/hh-rlhf"``: with ``max_rows`` it is *streamed* and only its first rows
      are downloaded; without, the whole ``split`` is downloaded (and cached) first;
    * a local file, ``.jsonl``, ``.jsonl.gz``, ``.json``, ``.json.gz``, ``.parquet`` or ``.csv``: a single file is
      the data whatever ``split`` says;
    * a local folder with one file per split, named after it (``train.jsonl``, ``test.parquet``, or several
      ``train-00000-of-00002.jsonl``...): the files of ``split`` are read, in the order of their names;
    * a folder written by ``Dataset.save_to_disk`` (used whatever ``split`` says) or ``DatasetDict.save_to_disk``
      (its ``split``).

    **Which format** is read from the columns and the values of the first row:

    1. *raw HH-RLHF dialogues*: string ``chosen``/``rejected`` with ``"\\n\\nAssistant:"`` turns and no ``prompt``
       column. They are split as HH-RLHF is (:func:`hh_dataset_to_preferences`; rows whose two dialogues do not
       share a prompt are dropped, and counted in a printed line).
    2. *prompt/chosen/rejected strings*: used as they are.
    3. *conversational* (TRL's format): ``chosen``/``rejected`` are lists of ``{"role", "content"}`` messages, with
       an optional ``prompt`` list before them. Each conversation is the prompt's messages followed by its own;
       the two must share every message but the last, which must be the assistant's reply: the shared messages
       are the prompt. Rendered into text by ``tokenizer``'s chat template when it has one (the prompt with the
       template's generation prompt, each reply as what the whole conversation adds to the prompt, without a
       leading ``bos_token`` or a trailing ``eos_token``: :func:`rrhf_lite.core.logprobs.tokenize_pair` adds both),
       otherwise in HH's turn format (then only ``"user"`` and ``"assistant"`` roles are allowed).

    Any other layout raises :class:`DataValidationError` naming the column and listing the accepted formats.
    Other columns are dropped. ``tokenizer`` is used for conversational data only. ``revision``: the commit of a hub
    dataset to read (pin it, so that a run reads the data it was tested with).

    **max_rows** keeps the first rows only, and nothing after them is parsed: a JSON Lines file is read line by
    line; a hub dataset, a Parquet or CSV file or a JSON array file is streamed in blocks (a JSON array is parsed
    whole: JSON cannot be read in part). Raw HH rows dropped for a mismatched prompt can leave fewer rows.

    The result is checked by :func:`validate_preference_dataset`: a missing or non-string value or an empty prompt
    raises :class:`DataValidationError` naming its column and row (rows counted in the result); an empty reply is
    kept, with a :class:`DataWarning` (a reply may legitimately be empty; HH-RLHF has a few).
    """
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ValueError(f"max_rows must be a positive number of rows or None (all rows), got {max_rows!r}")
    ds = _read_rows(source, split, max_rows, revision)
    pairs = _to_preferences(ds, tokenizer)
    validate_preference_dataset(pairs, allow_empty_responses=True)
    return pairs


def load_hh_rlhf(split: str = "train", data_files: str | None = None, max_rows: int | None = None):
    """Load HH-RLHF from the hub (``Anthropic/hh-rlhf``) or from a local file in the same format.

    Returns ``prompt/chosen/rejected``; ``max_rows`` keeps the first rows only (read before parsing). A thin
    wrapper over :func:`load_preferences`, which reads other sources and formats too.
    """
    return load_preferences(HH_RLHF if data_files is None else data_files, split=split, max_rows=max_rows)


# -- reading rows ----------------------------------------------------------------------------------------------
def looks_local(source: str) -> bool:
    """Whether ``source`` names a file or folder on this machine rather than a hub dataset (``owner/name``): a path
    that starts with ``.``, ``/`` or ``~``, has a data file's ending, holds a backslash or more than one ``/``, or
    whose first part is a folder here (``data/mine`` when ``data/`` exists). Such a source that does not exist is an
    error, never a hub lookup: a mistyped folder must not load somebody else's dataset."""
    parts = source.split("/")
    return (source.startswith((".", "/", "~")) or _file_builder(Path(source)) is not None or "\\" in source
            or len(parts) != 2 or not all(parts) or Path(parts[0]).expanduser().is_dir())


def _read_rows(source, split: str, max_rows: int | None, revision: str | None = None):
    """The rows of ``source`` as they are stored (any columns), as a ``datasets.Dataset``."""
    import datasets

    path = Path(os.fspath(source)).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _read_saved(path, split, max_rows)
        return _read_files(_split_files(path, split), max_rows)
    if path.is_file():
        if _file_builder(path) is None:
            raise ValueError(f"{str(path)!r}: cannot read this kind of file; expected a name ending in one of "
                             f"{list(DATA_FILE_ENDINGS)}")
        return _read_files([path], max_rows)
    if looks_local(str(source)):
        raise FileNotFoundError(f"no such file or folder: {str(source)!r} (relative to {os.getcwd()}); a hub dataset "
                                f"id is written owner/name")
    # Not on this machine: a dataset on the hub.
    pinned = {"revision": revision} if revision else {}
    if max_rows is None:
        return datasets.load_dataset(str(source), split=split, **pinned)
    return _first_rows(datasets.load_dataset(str(source), split=split, streaming=True, **pinned), max_rows)


def _file_builder(path: Path) -> str | None:
    """The ``datasets`` builder that reads ``path`` (``"json"``, ``"parquet"``, ``"csv"``), or None."""
    name = path.name.lower()
    return next((builder for ending, builder in DATA_FILE_ENDINGS.items() if name.endswith(ending)), None)


def _split_files(folder: Path, split: str) -> list[Path]:
    """The data files of ``split`` in ``folder``: named ``<split>.<ending>`` or ``<split>-<anything>.<ending>``."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and _file_builder(p) is not None)
    mine = [p for p in files if p.name.split(".")[0] == split or p.name.startswith(f"{split}-")]
    if not mine:
        splits = sorted({p.name.split(".")[0].split("-")[0] for p in files})
        raise FileNotFoundError(
            f"{str(folder)!r} has no file for split {split!r} (expected e.g. {split}.jsonl or {split}.parquet); "
            f"its data files are {[p.name for p in files]}" + (f", so split= can be one of {splits}" if splits else
                                                                 f" (none ending in {list(DATA_FILE_ENDINGS)})"))
    if len({_file_builder(p) for p in mine}) > 1:
        raise ValueError(f"{str(folder)!r}: split {split!r} has files of different formats, "
                         f"{[p.name for p in mine]}; keep one format per split")
    return mine


def _read_files(files: list[Path], max_rows: int | None):
    """Local data files of one format, all rows or the first ``max_rows`` (without parsing the rows after them).

    JSON (JSON Lines or one JSON array, gzipped or not) is parsed here, row by row, so that every problem is named
    with its file and line (or row): text that is not UTF-8, a line that is not JSON or not an object, a file that
    is not the gzip its name says, a column whose values change type, a file with no rows. Parquet and CSV are read
    by ``datasets``; what it cannot read is reported with the file's name."""
    import datasets

    builder = _file_builder(files[0])
    if builder == "json":
        rows, where = _json_rows(files, max_rows)
        return _json_dataset(rows, where, files)
    try:
        if max_rows is None:
            ds = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train")
        else:
            stream = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train",
                                           streaming=True)
            ds = _first_rows(stream, max_rows)
    except Exception as e:  # pyarrow's and datasets' many errors, each without the file's name
        raise ValueError(f"{_names(files)}: cannot be read as {builder} ({type(e).__name__}: {str(e)[:300]})") from e
    if len(ds) == 0:
        raise ValueError(f"{_names(files)}: no rows")
    return ds


def _names(files: list[Path]) -> str:
    return ", ".join(repr(str(p)) for p in files)


def _first_rows(stream, max_rows: int):
    """The first ``max_rows`` rows of a streamed (``IterableDataset``) dataset, as an in-memory ``Dataset``."""
    import datasets

    return datasets.Dataset.from_list(list(stream.take(max_rows)))


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _reading(path: Path, action):
    """``action()``, with a file that is not the gzip its name says reported by name."""
    try:
        return action()
    except (gzip.BadGzipFile, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{str(path)!r}: cannot be read ({type(e).__name__}: {e}); a name ending in .gz must be a "
                         f"gzip-compressed file") from None


# What Windows editors (Notepad, Excel's "CSV UTF-8") put before a file's first line: not part of the first row
UTF8_BOM = b"\xef\xbb\xbf"


def _decoded(path: Path, number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(path)!r}, line {number}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                         f"{e.start + 1}); save the file as UTF-8") from None


def _is_json_array(path: Path) -> bool:
    """Whether a ``.json`` file holds one JSON array (``[{...}, ...]``) rather than JSON Lines."""
    def first_character() -> bytes:
        with _open_bytes(path) as f:
            for line in f:
                if line.strip():
                    return line.removeprefix(UTF8_BOM).lstrip()[:1]
        return b""

    return _reading(path, first_character) == b"["


def _json_rows(files: list[Path], max_rows: int | None) -> tuple[list[dict], list[str]]:
    """The rows of JSON files (JSON Lines, or one JSON array per file), the first ``max_rows`` or all, with where each
    came from (``'<file>', line <n>`` or ``row <i>``). JSON Lines are parsed one line at a time: the lines after the
    first ``max_rows`` rows are never parsed (and a bad one there raises nothing)."""
    rows: list[dict] = []
    where: list[str] = []

    def add(row, place: str) -> bool:
        if not isinstance(row, dict):
            raise ValueError(f"{place}: expected a JSON object (one row), got {_short(row)}")
        rows.append(row)
        where.append(place)
        return max_rows is not None and len(rows) >= max_rows

    for path in files:
        if _is_json_array(path):
            data = _reading(path, functools.partial(_all_bytes, path))
            try:
                text = data.decode("utf-8").removeprefix("\ufeff")
            except UnicodeDecodeError as e:
                line_start, line = data.rfind(b"\n", 0, e.start) + 1, data.count(b"\n", 0, e.start) + 1
                raise ValueError(f"{str(path)!r}, line {line}: not UTF-8 text (byte "
                                 f"{data[e.start]:#04x} at column {e.start - line_start + 1}); save the file as "
                                 f"UTF-8") from None
            try:
                array = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{str(path)!r}, line {e.lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(array, list):
                raise ValueError(f"{str(path)!r}: expected a JSON array of objects, got {_short(array)}")
            for i, row in enumerate(array):
                if add(row, f"{str(path)!r}, row {i}"):
                    return rows, where
            continue
        for number, raw in _reading(path, functools.partial(_file_lines, path, max_rows, len(rows))):
            line = _decoded(path, number, raw.removeprefix(UTF8_BOM) if number == 1 else raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{str(path)!r}, line {number}: not valid JSON ({e}); a JSON Lines file holds "
                                 f"one JSON object per line") from None
            if add(row, f"{str(path)!r}, line {number}"):
                return rows, where
    return rows, where


def _all_bytes(path: Path) -> bytes:
    with _open_bytes(path) as f:
        return f.read()


def _file_lines(path: Path, max_rows: int | None, have: int) -> list[tuple[int, bytes]]:
    """The ``(number, bytes)`` lines of a file (numbered from 1, as an editor shows them), stopping once ``have``
    rows and the non-blank lines read make ``max_rows``."""
    lines = []
    with _open_bytes(path) as f:
        for number, raw in enumerate(f, start=1):
            lines.append((number, raw))
            if raw.strip():
                have += 1
                if max_rows is not None and have >= max_rows:
                    break
    return lines


def _kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _json_dataset(rows: list[dict], where: list[str], files: list[Path]):
    """Parsed JSON rows as a ``datasets.Dataset``, after checking that each column holds one type (Arrow would
    refuse a mix with an error that names neither the row nor the column, or turn the values into JSON text)."""
    import datasets

    if not rows:
        raise ValueError(f"{_names(files)}: no rows (an empty file?)")
    first: dict[str, tuple[str, int]] = {}
    for i, row in enumerate(rows):
        for column, value in row.items():
            kind = _kind(value)
            if kind is None:
                continue
            seen = first.setdefault(column, (kind, i))
            if seen[0] != kind:
                raise DataValidationError(column, i, f"{where[i]}: {kind} ({_short(value)}), where {where[seen[1]]} "
                                                     f"holds {seen[0]}; a column holds one type")
    try:
        return datasets.Dataset.from_list(rows)
    except Exception as e:  # nested values of different shapes (Arrow's errors name neither row nor column)
        raise ValueError(f"{_names(files)}: the rows do not fit one table ({type(e).__name__}: {str(e)[:300]})") from e


def _read_saved(folder: Path, split: str, max_rows: int | None):
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (memory-mapped, not parsed)."""
    import datasets

    ds = datasets.load_from_disk(str(folder))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise KeyError(f"{str(folder)!r} (a saved DatasetDict) has no split {split!r}; its splits are {list(ds)}")
        ds = ds[split]
    return ds if max_rows is None else ds.select(range(min(max_rows, len(ds))))


# -- detecting the format and converting -----------------------------------------------------------------------
def _to_preferences(ds, tokenizer=None):
    """Rows in one of the three accepted formats -> ``prompt/chosen/rejected`` strings (see
    :func:`load_preferences`); the format is told by the columns and the first row's values."""
    names = list(ds.column_names)
    if len(ds) == 0:
        raise DataValidationError("chosen", None, "the dataset has no rows")
    for column in ("chosen", "rejected"):
        if column not in names:
            raise DataValidationError(column, None, f"missing; the dataset has {names}; {ACCEPTED_FORMATS}")
    first = ds[0]
    if isinstance(first["chosen"], str):
        if "prompt" in names:  # 2. prompt/chosen/rejected strings
            if not isinstance(first["prompt"], str):
                raise DataValidationError("prompt", 0, f"expected a string, as 'chosen' holds strings, got "
                                                       f"{_short(first['prompt'])}; {ACCEPTED_FORMATS}")
            return ds.select_columns(["prompt", "chosen", "rejected"])
        if ASSISTANT in first["chosen"]:  # 1. raw HH-RLHF dialogues
            for column in ("chosen", "rejected"):
                for i, value in enumerate(ds[column]):
                    _check_text(column, i, value, allow_empty=True)
            return hh_dataset_to_preferences(ds, on_mismatch="skip")
        raise DataValidationError("prompt", None, f"missing; the dataset has {names}, and 'chosen' holds no "
                                                  f"{ASSISTANT!r} turn to split a prompt from; {ACCEPTED_FORMATS}")
    if _is_sequence(first["chosen"]):  # 3. conversational
        return _conversations_to_preferences(ds, tokenizer)
    raise DataValidationError("chosen", 0, f"expected a string or a list of messages, got {_short(first['chosen'])} "
                                           f"({type(first['chosen']).__name__}); {ACCEPTED_FORMATS}")


def _messages(column: str, row: int, value, hh: bool) -> list[dict[str, str]]:
    """A list of ``{"role", "content"}`` messages, checked (other keys of a message are dropped). ``hh``: the HH
    turn format will render them, so only ``"user"`` and ``"assistant"`` roles can be written."""
    if not _is_sequence(value):
        raise DataValidationError(column, row, f"expected a list of {{'role', 'content'}} messages, got "
                                               f"{_short(value)} ({type(value).__name__})")
    messages = []
    for k, message in enumerate(value):
        if not (isinstance(message, Mapping) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise DataValidationError(column, row, f"message {k}: expected {{'role': str, 'content': str}}, got "
                                                   f"{_short(message)}")
        if hh and message["role"] not in ("user", "assistant"):
            raise DataValidationError(column, row, f"message {k} has role {message['role']!r}: the HH turn format "
                                                   f"has only 'user' and 'assistant' turns (a tokenizer with a chat "
                                                   f"template renders other roles)")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _conversations_to_preferences(ds, tokenizer=None):
    """Conversational rows -> ``prompt/chosen/rejected`` text, by ``tokenizer``'s chat template or in HH format."""
    import datasets

    template = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    has_prompt = "prompt" in ds.column_names
    prompt_column = "prompt" if has_prompt else "chosen"  # where an error in the prompt's messages is reported
    prompts = ds["prompt"] if has_prompt else [None] * len(ds)
    rows = []
    for i, (prompt, chosen, rejected) in enumerate(zip(prompts, ds["chosen"], ds["rejected"])):
        prompt = _messages("prompt", i, prompt, hh=not template) if has_prompt else []
        conversations = {"chosen": prompt + _messages("chosen", i, chosen, hh=not template),
                         "rejected": prompt + _messages("rejected", i, rejected, hh=not template)}
        for column, conversation in conversations.items():
            if not conversation or conversation[-1]["role"] != "assistant":
                last = f"its last message is from {conversation[-1]['role']!r}" if conversation else "it is empty"
                raise DataValidationError(column, i, f"{last}; a conversation must end with the assistant's reply")
        shared = conversations["chosen"][:-1]
        if conversations["rejected"][:-1] != shared:
            raise DataValidationError("rejected", i, "its messages before the last reply differ from the chosen "
                                                     "one's; both must share every message but the last (the prompt)")
        if not shared:
            raise DataValidationError(prompt_column, i, "no messages before the reply: the prompt is empty")
        replies = {column: conversation[-1] for column, conversation in conversations.items()}
        if template:
            rows.append(_render_with_template(tokenizer, shared, replies, i, prompt_column))
        else:
            rows.append({"prompt": _render_hh(shared) + ASSISTANT,
                         **{column: " " + reply["content"] for column, reply in replies.items()}})
    return datasets.Dataset.from_list(rows)


def _render_hh(messages: list[dict[str, str]]) -> str:
    """Messages in HH's turn format: ``"\\n\\nHuman: ..."`` for the user, ``"\\n\\nAssistant: ..."`` for the
    assistant (what :func:`parse_turns` reads back)."""
    return "".join(f"{HUMAN if m['role'] == 'user' else ASSISTANT} {m['content']}" for m in messages)


def _apply_template(tokenizer, messages, column: str, row: int, **kwargs) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as e:  # jinja2's TemplateError (a template's raise_exception), or a missing variable
        raise DataValidationError(column, row, f"the tokenizer's chat template failed: {e}") from e


def _render_with_template(tokenizer, prompt, replies: dict, row: int, prompt_column: str) -> dict[str, str]:
    """``prompt/chosen/rejected`` text by the chat template: the prompt as the model sees it before answering, and
    each reply as what its whole conversation adds to that. The prompt's leading ``bos_token`` and the replies'
    trailing ``eos_token`` (and whitespace after it) are removed: our tokenisation adds them."""
    prompt_text = _apply_template(tokenizer, prompt, prompt_column, row, add_generation_prompt=True)
    out = {}
    for column, reply in replies.items():
        full = _apply_template(tokenizer, prompt + [reply], column, row)
        if not full.startswith(prompt_text):
            raise DataValidationError(column, row, f"the chat template renders the conversation as {_short(full)}, "
                                                   f"which does not start with its rendering of the prompt, "
                                                   f"{_short(prompt_text)}; the reply cannot be cut from it")
        text = full[len(prompt_text):]
        eos = getattr(tokenizer, "eos_token", None)
        if eos and text.rstrip().endswith(eos):
            text = text.rstrip()[:-len(eos)]
        out[column] = text
    bos = getattr(tokenizer, "bos_token", None)
    if bos and prompt_text.startswith(bos):
        prompt_text = prompt_text[len(bos):]
    return {"prompt": prompt_text, **out}


