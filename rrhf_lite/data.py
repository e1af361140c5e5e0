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

**Validation.** Every training function checks its data before it loads a model, with one function per format:

* :func:`validate_demonstrations`: SFT's ``prompt/completion``;
* :func:`validate_preference_dataset`: ``prompt/chosen/rejected`` (reward model, DPO);
* :func:`validate_rankings`: ``prompt/responses/scores`` (RRHF, PRO, best-of-n);
* :func:`validate_tokenizer`: a pad token, distinct from end-of-sequence.

Each problem is reported as ``column 'scores', row 17: ...``; row numbers count from 0, in the order of the dataset.
An *empty reply* is an error in a demonstration (there is nothing to imitate) and, by default, in the validators;
the training functions of the comparison methods accept it with a :class:`DataWarning`, because a model's own
samples are sometimes empty (it ended at once), and such a sample is a legitimate, usually bad, candidate.

**Too long for max_length** (the policy of :func:`rrhf_lite.logprobs.tokenize_pair`): the reply has priority.
The *prompt* loses tokens from its start (its ``<|bos|>`` kept), so the turns nearest the reply survive; only if the
reply alone does not fit is it cut at its end (and loses its ``<|eos|>``). :func:`report_truncation` counts the rows
that were cut and warns with the counts; a row is an error only when nothing of its reply is left.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
HH_RLHF = "Anthropic/hh-rlhf"


class DataValidationError(ValueError):
    """A problem with one column of one row (or of all rows, when ``row`` is None)."""

    def __init__(self, column: str, row: int | None, message: str):
        self.column, self.row = column, row
        where = "all rows" if row is None else f"row {row}"
        super().__init__(f"column {column!r}, {where}: {message}")


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


def hh_dataset_to_preferences(ds, on_mismatch: str = "raise"):
    """A dataset with HH ``chosen``/``rejected`` dialogue columns -> ``prompt/chosen/rejected``.

    ``on_mismatch="skip"`` drops rows whose two dialogues do not share a prompt (a few real HH rows) and prints
    how many were dropped; ``"raise"`` stops at the first one.
    """
    if on_mismatch not in ("raise", "skip"):
        raise ValueError(f"on_mismatch must be 'raise' or 'skip', got {on_mismatch!r}")
    for column in ("chosen", "rejected"):
        if column not in ds.column_names:
            raise DataValidationError(column, None, f"missing; the dataset has {ds.column_names}")
    keep = []
    for i, (c, r) in enumerate(zip(ds["chosen"], ds["rejected"])):
        try:
            hh_to_preference(c, r, row=i)
            keep.append(i)
        except DataValidationError:
            if on_mismatch == "raise":
                raise
    if len(keep) < len(ds):
        print(f"HH-RLHF: dropped {len(ds) - len(keep)} of {len(ds)} rows whose chosen and rejected prompts differ")
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


def load_preferences(source, split: str = "train", max_rows: int | None = None, tokenizer=None):
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
       leading ``bos_token`` or a trailing ``eos_token``: :func:`rrhf_lite.logprobs.tokenize_pair` adds both),
       otherwise in HH's turn format (then only ``"user"`` and ``"assistant"`` roles are allowed).

    Any other layout raises :class:`DataValidationError` naming the column and listing the accepted formats.
    Other columns are dropped. ``tokenizer`` is used for conversational data only.

    **max_rows** keeps the first rows only, and nothing after them is parsed: a JSON Lines file is read line by
    line; a hub dataset, a Parquet or CSV file or a JSON array file is streamed in blocks (a JSON array is parsed
    whole: JSON cannot be read in part). Raw HH rows dropped for a mismatched prompt can leave fewer rows.

    The result is checked by :func:`validate_preference_dataset`: a missing or non-string value or an empty prompt
    raises :class:`DataValidationError` naming its column and row (rows counted in the result); an empty reply is
    kept, with a :class:`DataWarning` (a reply may legitimately be empty; HH-RLHF has a few).
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be a positive number of rows or None (all rows), got {max_rows}")
    ds = _read_rows(source, split, max_rows)
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
def _read_rows(source, split: str, max_rows: int | None):
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
    if _file_builder(path) is not None or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"no such file or folder: {str(source)!r}")
    # Not on this machine: a dataset on the hub.
    if max_rows is None:
        return datasets.load_dataset(str(source), split=split)
    return _first_rows(datasets.load_dataset(str(source), split=split, streaming=True), max_rows)


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
    """Local data files of one format, all rows or the first ``max_rows`` (without parsing the rows after them)."""
    import datasets

    builder = _file_builder(files[0])
    if max_rows is None:
        return datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train")
    if builder == "json" and not _is_json_array(files[0]):
        return datasets.Dataset.from_list(_json_lines(files, max_rows))
    stream = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train", streaming=True)
    return _first_rows(stream, max_rows)


def _first_rows(stream, max_rows: int):
    """The first ``max_rows`` rows of a streamed (``IterableDataset``) dataset, as an in-memory ``Dataset``."""
    import datasets

    return datasets.Dataset.from_list(list(stream.take(max_rows)))


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.lower().endswith(".gz") else \
        open(path, encoding="utf-8")


def _is_json_array(path: Path) -> bool:
    """Whether a ``.json`` file holds one JSON array (``[{...}, ...]``) rather than JSON Lines."""
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith("[")
    return False


def _json_lines(files: list[Path], max_rows: int) -> list[dict]:
    """The first ``max_rows`` rows of JSON Lines files (one JSON object per line), parsed one line at a time: the
    lines after them are never parsed (and a bad one there raises nothing)."""
    rows: list[dict] = []
    for path in files:
        with _open_text(path) as f:
            for number, line in enumerate(f, start=1):  # line numbers as an editor shows them, from 1
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{str(path)!r}, line {number}: not valid JSON ({e}); a JSON Lines file holds "
                                     f"one JSON object per line") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{str(path)!r}, line {number}: expected a JSON object (one row), got "
                                     f"{_short(row)}")
                rows.append(row)
                if len(rows) == max_rows:
                    return rows
    return rows


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


class DataWarning(UserWarning):
    """Data that is usable but probably not what was meant: truncated rows, empty replies."""


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _column_names(ds) -> list[str]:
    if hasattr(ds, "column_names"):  # a datasets.Dataset
        return list(ds.column_names)
    if isinstance(ds, Mapping):  # a dict of columns
        return list(ds)
    if isinstance(ds, (list, tuple)):  # a list of rows
        return list(ds[0]) if ds and isinstance(ds[0], Mapping) else []
    raise TypeError(f"expected a datasets.Dataset, a dict of columns or a list of rows (dicts), "
                    f"got {type(ds).__name__}")


def _column(ds, column: str) -> list:
    """The values of ``column``, one per row; for a list of rows, :class:`DataValidationError` if a row lacks the key
    (:func:`_rows` has checked a dataset's or dict's columns already)."""
    if isinstance(ds, (list, tuple)):
        values = []
        for i, row in enumerate(ds):
            if not isinstance(row, Mapping):
                raise DataValidationError(column, i, f"expected a dict (one row), got {type(row).__name__}")
            if column not in row:
                raise DataValidationError(column, i, f"missing; the row has {sorted(row)}")
            values.append(row[column])
        return values
    return list(ds[column])


def _rows(ds, columns: Iterable[str]) -> dict[str, list]:
    """Every column asked for (checked for presence first, so a missing column is reported before any bad row)."""
    columns = list(columns)
    if not isinstance(ds, (list, tuple)):
        names = _column_names(ds)
        for column in columns:
            if column not in names:
                raise DataValidationError(column, None, f"missing; the dataset has {names}")
    values = {column: _column(ds, column) for column in columns}
    if not values[columns[0]]:
        raise DataValidationError(columns[0], None, "the dataset has no rows")
    return values


def _check_text(column: str, row: int, value, what: str = "", allow_empty: bool = False) -> bool:
    """Raise unless ``value`` is a string (non-blank unless ``allow_empty``); returns whether it is blank."""
    if not isinstance(value, str):
        raise DataValidationError(column, row, f"{what}expected a string, got {_short(value)} ({type(value).__name__})")
    blank = not value.strip()
    if blank and not allow_empty:
        raise DataValidationError(column, row, f"{what}expected a non-empty string, got {_short(value)}")
    return blank


EMPTY_REPLIES = "empty replies"  # how the warning below begins, after the data's name


@contextlib.contextmanager
def sampled_replies():
    """Inside the block, no :class:`DataWarning` for empty replies: for replies the course's own models sampled,
    where an empty one is an answer that ended at once (lesson 03 counts them), not a hole in someone's data. Data
    from elsewhere (HH-RLHF, your own files) is still warned about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=rf".*: {EMPTY_REPLIES} \(", category=DataWarning)
        yield


def _warn_empty(empty: dict[str, int], rows: int, what: str) -> None:
    if any(empty.values()):
        counts = ", ".join(f"{n} in {column!r}" for column, n in empty.items() if n)
        warnings.warn(f"{what}: {EMPTY_REPLIES} ({counts}, of {rows} rows) are kept: an empty reply is a reply that "
                      f"ends at once", DataWarning, stacklevel=3)


def validate_demonstrations(ds, columns: tuple[str, str] = ("prompt", "completion")) -> None:
    """SFT data: a non-empty ``prompt`` and ``completion`` string in every row (an empty demonstration teaches the
    model to stop at once, so it is an error). Raises :class:`DataValidationError` naming the column and row."""
    values = _rows(ds, columns)
    for column in columns:
        for i, value in enumerate(values[column]):
            _check_text(column, i, value)


def validate_preference_dataset(ds, columns: tuple[str, ...] = ("prompt", "chosen", "rejected"),
                                allow_empty_responses: bool = False) -> None:
    """Comparisons: every column present, every value a string, the prompt never empty.

    Replies (the columns after the first) must be non-empty too, unless ``allow_empty_responses``: then empty ones
    are kept and counted in a :class:`DataWarning` (what the reward-model and DPO training functions do, because
    pairs built from a model's samples can hold an empty sample). Otherwise a :class:`DataValidationError`.
    """
    values = _rows(ds, columns)
    prompt, *replies = columns
    for i, value in enumerate(values[prompt]):
        _check_text(prompt, i, value)
    empty = {}
    for column in replies:
        empty[column] = sum(_check_text(column, i, value, allow_empty=allow_empty_responses)
                            for i, value in enumerate(values[column]))
    _warn_empty(empty, len(values[prompt]), "comparisons")


def _is_sequence(value) -> bool:
    return hasattr(value, "__len__") and hasattr(value, "__getitem__") and not isinstance(value, (str, bytes, Mapping))


def validate_rankings(ds, allow_empty_responses: bool = False, min_candidates: int = 2) -> None:
    """Rankings, ``prompt / responses / scores``: per row a non-empty prompt, a list of at least ``min_candidates``
    replies (strings), and as many scores, each a finite number.

    Empty replies are an error unless ``allow_empty_responses`` (then counted in a :class:`DataWarning`; the
    RRHF/PRO training function allows them: a model's sample can be empty, and it is ranked like any other).
    Raises :class:`DataValidationError` naming the column and the row, e.g. ``column 'scores', row 17: ...``.
    """
    values = _rows(ds, ("prompt", "responses", "scores"))
    empty = 0
    for i, (prompt, responses, scores) in enumerate(zip(values["prompt"], values["responses"], values["scores"])):
        _check_text("prompt", i, prompt)
        if not _is_sequence(responses):
            raise DataValidationError("responses", i, f"expected a list of replies, got {_short(responses)} "
                                                      f"({type(responses).__name__})")
        if len(responses) < min_candidates:
            raise DataValidationError("responses", i, f"{len(responses)} candidate(s); a ranking needs at least "
                                                      f"{min_candidates}")
        for k, response in enumerate(responses):
            empty += _check_text("responses", i, response, f"reply {k}: ", allow_empty=allow_empty_responses)
        if not _is_sequence(scores):
            raise DataValidationError("scores", i, f"expected a list of numbers, got {_short(scores)} "
                                                   f"({type(scores).__name__})")
        if len(scores) != len(responses):
            raise DataValidationError("scores", i, f"{len(scores)} scores for {len(responses)} responses; "
                                                   f"there must be one score per response")
        for k, score in enumerate(scores):
            if isinstance(score, bool) or not isinstance(score, numbers.Real):
                raise DataValidationError("scores", i, f"score {k} is {_short(score)} ({type(score).__name__}), "
                                                       f"not a number")
            if not math.isfinite(score):
                raise DataValidationError("scores", i, f"score {k} is {score}; scores must be finite numbers")
    _warn_empty({"responses": empty}, len(values["prompt"]), "rankings")


def validate_tokenizer(tokenizer) -> None:
    """A tokenizer the training code can batch with: an end-of-sequence token and a *distinct* pad token.

    Without a pad token batches cannot be padded; with pad = eos, "the reply ended" looks like padding, and a reward
    model or PPO reads the wrong position. Raises ``ValueError`` naming ``tokenizer.pad_token`` (or ``eos_token``).
    """
    name = f"this tokenizer ({type(tokenizer).__name__})"
    fix = "(tokenizer.add_special_tokens({'pad_token': '<|pad|>'}), or rrhf_lite.models.load_tokenizer(path, " \
          "add_pad=True))"
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise ValueError(f"tokenizer.eos_token: {name} has no end-of-sequence token; replies cannot end")
    if getattr(tokenizer, "pad_token_id", None) is None:
        raise ValueError(f"tokenizer.pad_token: {name} has no pad token, so batches cannot be padded; add a "
                         f"distinct one {fix}")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(f"tokenizer.pad_token: {name} uses its eos token {tokenizer.eos_token!r} as pad token, so "
                         f"a finished reply looks like padding; add a distinct one {fix}")


def report_truncation(encoded: Iterable[tuple[str, int, dict]], max_length: int, what: str) -> dict[str, int]:
    """Count the rows :func:`rrhf_lite.logprobs.tokenize_pair` had to cut, and warn with the counts.

    ``encoded`` gives ``(column, row, tokenize_pair output)`` for every tokenised reply. A reply of which nothing is
    left (``max_length`` leaves no room after the ``<|bos|>``) raises :class:`DataValidationError` naming its column
    and row. Returns ``{"rows", "prompt_cut", "prompt_removed", "reply_cut"}``: rows seen, rows whose prompt lost
    tokens from its start, rows whose prompt was removed entirely, rows whose reply lost its end.
    """
    rows: set[int] = set()
    prompt_cut: set[int] = set()
    prompt_removed: set[int] = set()
    reply_cut: set[int] = set()
    for column, row, enc in encoded:
        rows.add(row)
        if not any(enc["response_mask"]):
            raise DataValidationError(column, row, f"nothing of the reply fits in max_length={max_length} tokens; "
                                                   f"raise max_length")
        if enc.get("prompt_cut"):
            prompt_cut.add(row)
            if enc.get("prompt_kept", 1) == 0:
                prompt_removed.add(row)
        if enc.get("response_cut"):
            reply_cut.add(row)
    counts = {"rows": len(rows), "prompt_cut": len(prompt_cut), "prompt_removed": len(prompt_removed),
              "reply_cut": len(reply_cut)}
    if prompt_cut or reply_cut:
        removed = f" ({len(prompt_removed)} of them lost the whole prompt)" if prompt_removed else ""
        warnings.warn(f"{what}: {len(prompt_cut | reply_cut)} of {len(rows)} rows are longer than "
                      f"max_length={max_length} tokens: the prompt was cut from its start in {len(prompt_cut)}"
                      f"{removed}, the reply cut at its end in {len(reply_cut)} (first cut row: "
                      f"{min(prompt_cut | reply_cut)})", DataWarning, stacklevel=3)
    return counts
