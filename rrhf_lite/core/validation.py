"""Checks of training data, one per format, and the warnings for data that is usable but probably not what was
meant.

Every trainer checks its data first (the course's stages: before they load a model), with one function per format:

* :func:`validate_demonstrations`: SFT's ``prompt/completion``;
* :func:`validate_preference_dataset`: ``prompt/chosen/rejected`` (reward model, DPO);
* :func:`validate_rankings`: ``prompt/responses/scores`` (RRHF, PRO, best-of-n);
* :func:`validate_tokenizer`: a pad token, distinct from end-of-sequence.

Each problem is reported as ``column 'scores', row 17: ...``; row numbers count from 0, in the order of the dataset.
An *empty reply* is an error in a demonstration (there is nothing to imitate) and, by default, in the validators;
the training functions of the comparison methods accept it with a :class:`DataWarning`, because a model's own
samples are sometimes empty (it ended at once), and such a sample is a legitimate, usually bad, candidate.

**Too long for max_length** (the policy of :func:`rrhf_lite.core.logprobs.tokenize_pair`): the reply has priority.
The *prompt* loses tokens from its start (its ``<|bos|>`` kept), so the turns nearest the reply survive; only if the
reply alone does not fit is it cut at its end (and loses its ``<|eos|>``). :func:`report_truncation` counts the rows
that were cut and warns with the counts; a row is an error only when nothing of its reply is left.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Iterable, Mapping


class DataValidationError(ValueError):
    """A problem with one column of one row (or of all rows, when ``row`` is None)."""

    def __init__(self, column: str, row: int | None, message: str):
        self.column, self.row, self.message = column, row, message
        where = "all rows" if row is None else f"row {row}"
        super().__init__(f"column {column!r}, {where}: {message}")


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


def _check_lengths(ds: Mapping) -> None:
    """A dict of columns must hold columns of one length: name the first that differs."""
    lengths = {name: len(values) if hasattr(values, "__len__") and not isinstance(values, str) else None
               for name, values in ds.items()}
    first = next(iter(lengths), None)
    for name, length in lengths.items():
        if length is None:
            raise DataValidationError(name, None, f"expected a list of values (a dict holds columns), got "
                                                  f"{_short(ds[name])}")
        if length != lengths[first]:
            raise DataValidationError(name, None, f"has {length} values but {first!r} has {lengths[first]}: the "
                                                  f"columns of a dict must be equally long")


def rows_of(ds) -> list[dict]:
    """The rows of a ``datasets.Dataset``, a dict of equally long columns or a list of rows, as a list of dicts: what
    the tokenising functions iterate over, whichever of the three a user passes."""
    if isinstance(ds, Mapping):
        _check_lengths(ds)
        return [dict(zip(ds, values)) for values in zip(*ds.values())]
    _column_names(ds)  # a clear error for anything else
    return list(ds)


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
    if isinstance(ds, Mapping):
        _check_lengths(ds)
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
    same = [i for i, pair in enumerate(zip(*(values[column] for column in replies))) if len(set(pair)) == 1]
    if len(replies) > 1 and same:
        shown = ", ".join(map(str, same[:5])) + (", ..." if len(same) > 5 else "")
        warnings.warn(f"comparisons: {len(same)} of {len(values[prompt])} rows compare a reply with itself (rows "
                      f"{shown}, columns {', '.join(map(repr, replies))}): kept, but such a pair teaches nothing (its "
                      f"loss has no gradient)", DataWarning, stacklevel=2)


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
    fix = "(tokenizer.add_special_tokens({'pad_token': '<|pad|>'}), or rrhf_lite.core.models.load_tokenizer(path, " \
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
    """Count the rows :func:`rrhf_lite.core.logprobs.tokenize_pair` had to cut, and warn with the counts.

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
