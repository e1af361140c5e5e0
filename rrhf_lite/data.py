"""Real preference data: Anthropic's HH-RLHF, parsed into the columns every method here reads.

HH-RLHF (Bai et al. 2022) stores each comparison as two whole dialogues, ``chosen`` and ``rejected``, in a plain
text format::

    "\\n\\nHuman: How do I bake bread?\\n\\nAssistant: Mix flour... \\n\\nHuman: And then?\\n\\nAssistant: Knead it."

The two dialogues share every turn except the last assistant reply. We split them into the ecosystem's
``prompt/chosen/rejected`` columns: ``prompt`` is the dialogue up to and *including* the final ``"\\n\\nAssistant:"``,
and ``chosen``/``rejected`` are the two final replies (with their leading space), so ``prompt + chosen`` is the
original chosen dialogue, character for character. The tiny world writes the same format.

Bad rows raise :class:`DataValidationError`, which names the column and the row.
"""

from __future__ import annotations

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


def load_hh_rlhf(split: str = "train", data_files: str | None = None, max_rows: int | None = None):
    """Load HH-RLHF from the hub (``Anthropic/hh-rlhf``) or from a local JSONL file in the same format.

    Returns ``prompt/chosen/rejected``; ``max_rows`` keeps the first rows only (read before parsing).
    """
    import datasets

    if data_files is None:
        ds = datasets.load_dataset(HH_RLHF, split=split)
    else:
        ds = datasets.load_dataset("json", data_files=data_files, split="train")
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return hh_dataset_to_preferences(ds, on_mismatch="skip")


def validate_preference_dataset(ds, columns: tuple[str, ...] = ("prompt", "chosen", "rejected")) -> None:
    """Every column present, every value a non-empty string; otherwise a :class:`DataValidationError`."""
    for column in columns:
        if column not in ds.column_names:
            raise DataValidationError(column, None, f"missing; the dataset has {ds.column_names}")
        for i, value in enumerate(ds[column]):
            if not isinstance(value, str) or not value.strip():
                raise DataValidationError(column, i, f"expected a non-empty string, got {value!r}")
