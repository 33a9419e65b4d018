# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Rendering the self-assessment segment into every dataset format [`~trl.SFTTrainer`] accepts.

The segment `MARKER [prefix] SCORE` goes where the assessed answer ends, and the token after it closes it: the EOS TRL
appends to text rows, or, for conversations, the chat template's end-of-turn token. That token need not be an EOS id
(ChatML on a base model: end of turn `<|im_end|>`, EOS `<|endoftext|>`): `PCLSFTTrainer` finds it at `__init__` (the
first special token the template writes after an assistant message) and lets it close segments too.

| format | where the segment goes |
| --- | --- |
| `prompt`/`completion` strings | end of the completion (before a closing token that already ends it) |
| `prompt`/`completion` messages | end of the content of the completion's final assistant message |
| `text` (`dataset_text_field`) and `formatting_func` output | end of the text, or before the EOS / end-of-turn token that already ends it when only whitespace follows (pre-templated chat text `...<|im_end|>\n`) |
| `messages`, `conversations` (`from`/`value`), with `tools`/`chat_template_kwargs` | end of the content of the final assistant message |
| pre-tokenized `input_ids` (with or without `labels`, `completion_mask`, `assistant_masks`) | right before the first EOS id after the answer's last trained token; the segment itself is always trained |

Rows with a reward get `MARKER [prefix] SCORE`, rows without one (`None`, or no reward column) get `MARKER`, except
pre-tokenized datasets without a reward column, which are left as they are (as SFTTrainer uses them).

Refused with a reward (nowhere sound to put the segment): a conversation with no assistant message, ending in a tool
call, or with messages after its final assistant answer; a pre-tokenized row with no EOS id after its last trained
token (e.g. a multi-turn row truncated before its final EOS), already packed, or already holding the marker. An empty
prompt or an empty answer is accepted in every format, as SFTTrainer accepts it: the segment then follows the prompt.
The marker string is refused anywhere in a row, tool names and descriptions included. Rows of an `IterableDataset` are
rendered lazily, so a bad reward there surfaces when its row is reached during training, not at `__init__`.
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


def _append_to_text(text: str, segment: str, closers: tuple[str, ...]) -> str:
    # TRL appends EOS unless the text already ends with it. A text that already ends its answer with a closing token
    # (the EOS, or the chat template's end of turn), possibly followed by whitespace (pre-templated chat text
    # `...<|im_end|>\n`), gets the segment before that token, so that the token closes it
    body = text.rstrip()
    for closer in closers:
        if closer and body.endswith(closer):
            at = len(body) - len(closer)
            return text[:at] + segment + text[at:]
    return text + segment


def end_of_turn_token(tokenizer) -> str | None:
    """The special token the chat template writes right after an assistant message (ChatML's `<|im_end|>`, Gemma's
    `<end_of_turn>`, ...), or `None` (no chat template, or no special token after the answer).

    Found by rendering a probe conversation `[user "a", assistant PROBE]` and reading the first special token after
    PROBE. The segment written at the end of the final assistant message is closed by this token, which need not be
    an EOS id (e.g. Qwen2.5 base: EOS `<|endoftext|>`, end of turn `<|im_end|>`).
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # processors hold their tokenizer
    if not getattr(tokenizer, "chat_template", None):
        return None
    probe = "PCL-END-OF-TURN-PROBE"
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": probe}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that needs more (tools, images, ...) is not probed
        return None
    at = text.rfind(probe)
    if at < 0:
        return None
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special
    }
    for i in tokenizer.encode(text[at + len(probe) :], add_special_tokens=False):
        if i in special:
            return tokenizer.convert_ids_to_tokens(i)
    return None


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
        end_of_turn: str | None = None,
    ):
        self.fmt, self.tokens, self.eos_token, self.end_of_turn = fmt, tokens, eos_token, end_of_turn
        self.reward_column, self.only_column, self.text_field = reward_column, only_column, text_field

    @property
    def closers(self) -> tuple[str, ...]:
        """Strings that close a segment in text: the EOS token and the chat template's end of turn."""
        return tuple(t for t in (self.eos_token, self.end_of_turn) if t)

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
        return {self.text_field: _append_to_text(text, segment, self.closers)}

    def _wrap_formatting_func(self, formatting_func: Callable, name: str) -> Callable:
        def formatting_func_with_segment(example):
            text = formatting_func(example)
            where = f"{text[:40]!r}"  # TRL maps the formatting function without row indices
            check_no_marker(_strings(text), self.fmt.marker, where, name)
            segment = self.segment(example.get(self.reward_column), where, name)
            return _append_to_text(text, segment, self.closers)

        return formatting_func_with_segment

    def _render_messages(self, row, idx, name):
        reward = row.get(self.reward_column)
        if "messages" not in row:
            row = maybe_convert_to_chatml({"conversations": row["conversations"]})
        messages = row["messages"]
        # Tool names and descriptions are rendered into the prompt by the chat template, so they are checked too
        check_no_marker(_strings([messages, row.get("tools")]), self.fmt.marker, idx, name)
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
        if final != len(messages) - 1 and reward is not None:
            raise ValueError(
                f"Row {idx} of the {name} dataset has a reward but its conversation ends with a "
                f"{messages[-1].get('role')!r} message after the final assistant answer: the reward would be written "
                "after that earlier answer, in the middle of the conversation. End the conversation with the "
                "assessed assistant answer, or set the reward to None."
            )
        messages = [*messages[:final], _append_to_message(messages[final], segment), *messages[final + 1 :]]
        return {"messages": messages}

    def _render_prompt_completion(self, row, idx, name):
        prompt, completion = row["prompt"], row["completion"]
        for value, field in ((prompt, "prompt"), (completion, "completion")):
            # SFTTrainer accepts empty strings; an empty completion is an empty answer, assessed right after the prompt
            if not isinstance(value, str):
                row_texts(value, field, idx, name)
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
            return {"completion": _append_to_text(completion, segment, self.closers)}
        final = _final_assistant(completion)
        final = len(completion) - 1 if final is None else final
        completion = [*completion[:final], _append_to_message(completion[final], segment), *completion[final + 1 :]]
        return {"completion": completion}

    def _render_tokenized(self, row, idx, name):
        ids, tokens = list(row["input_ids"]), self.tokens
        reward = row.get(self.reward_column)
        _check_reward(reward, idx, name, self.reward_column)
        at, problem = None, None
        if tokens.marker_id in ids:
            problem = "already contains the marker id"
        elif "seq_lengths" in row or "position_ids" in row:
            problem = "is already packed (it has `seq_lengths` / `position_ids`)"
        else:
            at = self._answer_eos(row, ids)
            if at is None:
                problem = "has no EOS id after its last trained token, so its answer end is unknown"
        if problem is not None:
            if reward is None:  # trained as TRL trains it; a segment written in `input_ids` is still weighted
                return {}
            raise ValueError(
                f"Row {idx} of the {name} dataset is pre-tokenized and {problem}: PCL cannot place its segment. Pass "
                "text, messages or prompt/completion rows (PCL tokenises them with the segment), or write the segment "
                "into `input_ids` yourself (`marker_id, *prefix_ids, level_id` before the final EOS, see "
                "`pcl.marker.segment_tokens`) and drop the reward column."
            )
        segment = [tokens.marker_id]
        if reward is not None:
            level = self.fmt.level_of(self.segment_value(reward, idx, name))
            segment += [*tokens.prefix_ids, tokens.level_ids[level]]
        out = {"input_ids": ids[:at] + segment + ids[at:]}
        for column in ("labels", "completion_mask", "assistant_masks", "attention_mask"):
            values = row.get(column)
            if values is None or len(values) != len(ids):
                continue
            # The segment is trained (and attended) whatever the closing EOS has: labels that mask the EOS would
            # otherwise mask the marker and the score too, and the reward would be silently ignored
            fill = segment if column == "labels" else [1] * len(segment)
            out[column] = list(values[:at]) + fill + list(values[at:])
        return out

    def _answer_eos(self, row, ids: list[int]) -> int | None:
        """Position of the EOS id that ends the row's answer, or `None`.

        The answer ends at its last trained token that is not an EOS id (trained: not masked by `labels`,
        `completion_mask` or `assistant_masks`; every token when there are none), and its EOS is the first EOS id
        after it. So trailing EOS padding, an untrained tail after the EOS (ChatML's `\n`) and a leading BOS that
        is also the EOS id are handled; a row whose last trained text has no EOS after it (a multi-turn row truncated
        before its final EOS) has no known answer end. A row whose trained tokens are all EOS ids has an empty answer:
        the segment goes before its first trained EOS.
        """
        eos_ids, trained = set(self.tokens.eos_ids), [True] * len(ids)
        for column in ("labels", "completion_mask", "assistant_masks"):
            values = row.get(column)
            if values is not None and len(values) == len(ids):
                trained = [
                    t and (v != -100 if column == "labels" else bool(v)) for t, v in zip(trained, values, strict=True)
                ]
        answer = [i for i, t in enumerate(ids) if trained[i] and t not in eos_ids]
        if not answer:
            return next((i for i, t in enumerate(trained) if t), None)
        return next((i for i in range(answer[-1] + 1, len(ids)) if ids[i] in eos_ids), None)

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
    end_of_turn: str | None = None,
) -> Dataset | IterableDataset:
    """The rows with their segment written in, for a plain [`~trl.SFTTrainer`] (any format but pre-tokenized rows)."""
    renderer = SegmentRenderer(fmt, None, eos_token, reward_column, only_column, end_of_turn=end_of_turn)
    return renderer.render(dataset, None, name)[0]
