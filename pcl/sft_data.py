# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Rendering the self-assessment segment into every dataset format [`~trl.SFTTrainer`] accepts.

The segment `MARKER [prefix] SCORE` goes where the assessed answer ends, and the row's own EOS (the one TRL appends,
or the chat template's end of turn) closes it:

| format | where the segment goes |
| --- | --- |
| `prompt`/`completion` strings | end of the completion |
| `prompt`/`completion` messages | end of the content of the completion's final assistant message |
| `text` (`dataset_text_field`) and `formatting_func` output | end of the text |
| `messages`, `conversations` (`from`/`value`), with `tools`/`chat_template_kwargs` | end of the content of the final assistant message |
| pre-tokenized `input_ids` (with or without `labels`, `completion_mask`, `assistant_masks`) | right before the row's last EOS id |

Rows with a reward get `MARKER [prefix] SCORE`, rows without one (`None`, or no reward column) get `MARKER`, except
pre-tokenized datasets without a reward column, which are left as they are (as SFTTrainer uses them).
"""

import math
from collections.abc import Callable
from numbers import Real

from datasets import Dataset, IterableDataset
from trl.data_utils import is_conversational_from_value, maybe_convert_to_chatml

from .segment import SegmentFormat, SegmentTokens
from .validation import check_no_marker, row_texts


def column_names(dataset: Dataset | IterableDataset) -> list[str]:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset)).keys())


def _check_reward(reward, idx: int, name: str, column: str) -> None:
    where = f"Row {idx} of the {name} dataset"
    if reward is None:
        return
    if isinstance(reward, bool) or not isinstance(reward, Real):
        raise ValueError(f"{where}: the reward in column {column!r} must be a number or None, got {reward!r}.")
    if math.isnan(reward):
        raise ValueError(f"{where} has a NaN reward in column {column!r}; use None for rows without a reward.")
    if math.isinf(reward):
        raise ValueError(f"{where}: Reward {reward} is infinite: reward columns must be finite or None.")


def reward_range_of(dataset: Dataset | IterableDataset, column: str, name: str = "train") -> tuple[float, float]:
    """The auto reward range of a dataset: `(min(0, min reward), max(1, max reward))` over its reward column.

    Rewards in `[0, 1]` keep their value; a wider column is normalised by its own extremes, so no row can fall outside
    the range during training. An `IterableDataset` cannot be scanned without consuming it: declare the range instead.
    """
    if column not in column_names(dataset):
        return (0.0, 1.0)
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            f"The {name} dataset is an IterableDataset with a reward column {column!r}: PCL-SFT cannot scan it for its "
            "reward range without consuming it. Declare `self_assessment_reward_range=[lo, hi]`."
        )
    rewards = dataset[column]
    for idx, reward in enumerate(rewards):
        _check_reward(reward, idx, name, column)
    known = [float(r) for r in rewards if r is not None]
    return (min([0.0, *known]), max([1.0, *known]))


def _strings(value) -> list[str]:
    """Every string inside a row field (message contents, tool calls, ...), for the marker check."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _append_to_text(text: str, segment: str, eos_token: str | None) -> str:
    # TRL appends EOS unless the text already ends with it: the segment goes before an EOS that is already there
    if eos_token and text.endswith(eos_token):
        return text[: -len(eos_token)] + segment + eos_token
    return text + segment


def _final_assistant(messages: list) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], dict) and messages[i].get("role") == "assistant":
            return i
    return None


def _append_to_message(message: dict, segment: str) -> dict:
    content = message.get("content")
    if content is None or isinstance(content, str):
        return {**message, "content": (content or "") + segment}
    # Content parts ([{"type": "text", "text": ...}, ...]): the segment ends the last text part
    parts = list(content)
    for i in range(len(parts) - 1, -1, -1):
        if isinstance(parts[i], dict) and parts[i].get("type") == "text":
            parts[i] = {**parts[i], "text": parts[i].get("text", "") + segment}
            return {**message, "content": parts}
    return {**message, "content": [*parts, {"type": "text", "text": segment}]}


class SegmentRenderer:
    """Appends the segment to the rows of one dataset format (see the module docstring)."""

    def __init__(
        self,
        fmt: SegmentFormat,
        tokens: SegmentTokens | None,
        eos_token: str | None,
        reward_column: str = "reward",
        only_column: str = "self_assessment_only",
        text_field: str = "text",
    ):
        self.fmt, self.tokens, self.eos_token = fmt, tokens, eos_token
        self.reward_column, self.only_column, self.text_field = reward_column, only_column, text_field

    def segment(self, reward, idx, name: str) -> str:
        _check_reward(reward, idx, name, self.reward_column)
        try:
            return self.fmt.render(reward)
        except ValueError as e:
            raise ValueError(f"Row {idx} of the {name} dataset: {e}") from None

    def render(
        self, dataset: Dataset | IterableDataset, formatting_func: Callable | None, name: str
    ) -> tuple[Dataset | IterableDataset, Callable | None]:
        """The dataset with the segment in every row, and the formatting function to pass on to TRL."""
        columns = column_names(dataset)
        first = next(iter(dataset))
        if "input_ids" in columns:
            if self.reward_column not in columns:
                # Rows the user tokenised are trained as they are unless a reward asks for a segment (SFTTrainer uses
                # them as is); a segment already written in `input_ids` is still found and weighted at loss time
                return dataset, formatting_func
            fn = self._render_tokenized
        elif "prompt" in columns and "completion" in columns:
            fn = self._render_prompt_completion
        elif "messages" in columns or is_conversational_from_value(first):
            fn = self._render_messages
        elif formatting_func is not None:
            return dataset, self._wrap_formatting_func(formatting_func, name)
        elif self.text_field in columns:
            fn = self._render_text
        else:
            # Not a format TRL knows either: leave the row alone so that TRL's own error is the one raised
            return dataset, formatting_func
        if self.only_column in columns and fn != self._render_prompt_completion:
            raise ValueError(
                f"The {name} dataset has a `{self.only_column}` column, which applies to prompt/completion rows only "
                "(the flagged completion moves into the prompt so that only its assessment is trained). Convert the "
                "flagged rows to prompt/completion strings."
            )
        remove = [c for c in (self.reward_column, self.only_column, "conversations") if c in columns]
        kwargs = {"with_indices": True, "remove_columns": remove or None}
        if isinstance(dataset, Dataset):
            kwargs["desc"] = f"Writing the self-assessment into the {name} dataset"
        return dataset.map(fn, fn_kwargs={"name": name}, **kwargs), formatting_func

    # ---- one function per format ----------------------------------------------------------------------------------

    def _render_text(self, row, idx, name):
        text = row[self.text_field]
        check_no_marker(_strings(text), self.fmt.marker, idx, name)
        segment = self.segment(row.get(self.reward_column), idx, name)
        return {self.text_field: _append_to_text(text, segment, self.eos_token)}

    def _wrap_formatting_func(self, formatting_func: Callable, name: str) -> Callable:
        def formatting_func_with_segment(example):
            text = formatting_func(example)
            where = f"{text[:40]!r}"  # TRL maps the formatting function without row indices
            check_no_marker(_strings(text), self.fmt.marker, where, name)
            segment = self.segment(example.get(self.reward_column), where, name)
            return _append_to_text(text, segment, self.eos_token)

        return formatting_func_with_segment

    def _render_messages(self, row, idx, name):
        reward = row.get(self.reward_column)
        if "messages" not in row:
            row = maybe_convert_to_chatml({"conversations": row["conversations"]})
        messages = row["messages"]
        check_no_marker(_strings(messages), self.fmt.marker, idx, name)
        segment = self.segment(reward, idx, name)
        final = _final_assistant(messages)
        if final is None or messages[final].get("tool_calls"):
            if reward is None:  # no answer to assess: trained as TRL trains it
                return {"messages": messages}
            raise ValueError(
                f"Row {idx} of the {name} dataset has a reward but "
                + ("no assistant message" if final is None else "its final assistant message is a tool call")
                + ": the self-assessment follows the final assistant answer. End the conversation with the assistant's "
                "answer, or set the reward to None."
            )
        messages = [*messages[:final], _append_to_message(messages[final], segment), *messages[final + 1 :]]
        return {"messages": messages}

    def _render_prompt_completion(self, row, idx, name):
        prompt, completion = row["prompt"], row["completion"]
        row_texts(prompt, "prompt", idx, name)
        row_texts(completion, "completion", idx, name)
        if isinstance(prompt, str) != isinstance(completion, str):
            raise ValueError(
                f"Row {idx} of the {name} dataset mixes formats: the prompt is a "
                f"{'string' if isinstance(prompt, str) else 'list of messages'} and the completion is not. Use two "
                "strings, or two lists of chat messages."
            )
        check_no_marker(_strings([prompt, completion]), self.fmt.marker, idx, name)
        reward = row.get(self.reward_column)
        segment = self.segment(reward, idx, name)
        if row.get(self.only_column):
            if not isinstance(completion, str) or reward is None:
                raise ValueError(
                    f"Row {idx} of the {name} dataset is flagged `{self.only_column}`: such rows need a string "
                    "completion and a reward (only their assessment is trained)."
                )
            answer = completion
            if self.eos_token and answer.endswith(self.eos_token):
                answer = answer[: -len(self.eos_token)]
            return {"prompt": prompt + answer, "completion": segment}
        if isinstance(completion, str):
            return {"completion": _append_to_text(completion, segment, self.eos_token)}
        final = _final_assistant(completion)
        final = len(completion) - 1 if final is None else final
        completion = [*completion[:final], _append_to_message(completion[final], segment), *completion[final + 1 :]]
        return {"completion": completion}

    def _render_tokenized(self, row, idx, name):
        # The row's last EOS id ends its answer (TRL appends EOS to text rows; chat templates end the final turn with
        # it), so the segment goes right before it, with the labels and masks the EOS has
        ids, tokens = list(row["input_ids"]), self.tokens
        reward = row.get(self.reward_column)
        _check_reward(reward, idx, name, self.reward_column)
        eos = [i for i, t in enumerate(ids) if t in tokens.eos_ids]
        problem = None
        if tokens.marker_id in ids:
            problem = "already contains the marker id"
        elif not eos:
            problem = "has no EOS id, so its answer end is unknown"
        elif "seq_lengths" in row or "position_ids" in row:
            problem = "is already packed (it has `seq_lengths` / `position_ids`)"
        if problem is not None:
            if reward is None:  # trained as TRL trains it; a segment written in `input_ids` is still weighted
                return {}
            raise ValueError(
                f"Row {idx} of the {name} dataset is pre-tokenized and {problem}: PCL cannot place its segment. Pass "
                "text, messages or prompt/completion rows (PCL tokenises them with the segment), or write the segment "
                "into `input_ids` yourself (`marker_id, *prefix_ids, level_id` before the final EOS, see "
                "`pcl.marker.segment_tokens`) and drop the reward column."
            )
        at = eos[-1]
        segment = [tokens.marker_id]
        if reward is not None:
            level = self.fmt.level_of(self.segment_value(reward, idx, name))
            segment += [*tokens.prefix_ids, tokens.level_ids[level]]
        out = {"input_ids": ids[:at] + segment + ids[at:]}
        for column in ("labels", "completion_mask", "assistant_masks", "attention_mask"):
            values = row.get(column)
            if values is None or len(values) != len(ids):
                continue
            values = list(values)
            if column == "labels":
                fill = segment if values[at] != -100 else [-100] * len(segment)
            else:
                fill = [values[at]] * len(segment)
            out[column] = values[:at] + fill + values[at:]
        return out

    def segment_value(self, reward, idx, name) -> float:
        try:
            return self.fmt.normalize(reward)
        except ValueError as e:
            raise ValueError(f"Row {idx} of the {name} dataset: {e}") from None


def has_flagged_rows(dataset: Dataset | IterableDataset | None, column: str) -> bool:
    """Whether a dataset flags rows as self-assessment-only (an IterableDataset counts when it has the column)."""
    if dataset is None or not isinstance(dataset, (Dataset, IterableDataset)) or column not in column_names(dataset):
        return False
    return isinstance(dataset, IterableDataset) or any(dataset[column])


def drop_flagged_rows(dataset: Dataset | IterableDataset, column: str) -> Dataset | IterableDataset:
    if column not in column_names(dataset):
        return dataset
    return dataset.filter(lambda row: not row[column]).remove_columns(column)


def render_rows(
    dataset: Dataset | IterableDataset,
    fmt: SegmentFormat,
    reward_column: str = "reward",
    name: str = "train",
    only_column: str = "self_assessment_only",
    eos_token: str | None = None,
) -> Dataset | IterableDataset:
    """The rows with their segment written in, for a plain [`~trl.SFTTrainer`] (any format but pre-tokenized rows)."""
    return SegmentRenderer(fmt, None, eos_token, reward_column, only_column).render(dataset, None, name)[0]
