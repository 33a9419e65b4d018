# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pcl.marker import segment_tokens
from pcl.segment import SegmentFormat, empty_segment_mask, orphan_tail_mask, score_mask, segment_mask
from pcl.tiny import build_char_tokenizer


M, E, P = 9, 1, 0  # marker, eos, pad ids for the hand-made rows below


class TestSegmentFormat:
    def test_levels_and_normalisation(self):
        fmt = SegmentFormat(levels=5, reward_range=(-1.0, 3.0))
        assert fmt.level_texts() == ["0", "1", "2", "3", "4"]
        assert fmt.normalize(-1.0) == 0.0 and fmt.normalize(3.0) == 1.0 and fmt.normalize(1.0) == 0.5
        assert fmt.level_of(fmt.normalize(1.0)) == 2
        assert fmt.level_value(3) == 0.75
        assert fmt.normalize(None) is None and fmt.normalize(math.nan) is None

    def test_render(self):
        fmt = SegmentFormat(marker="<m>", levels=10, prefix="p:")
        assert fmt.render(1.0) == "<m>p:9"
        assert fmt.render(0.0) == "<m>p:0"
        assert fmt.render(0.5) == "<m>p:4"  # 4.5 rounds half to even
        assert fmt.render(None) == "<m>"

    def test_parse(self):
        fmt = SegmentFormat(marker="<m>", levels=10, prefix="score: ")
        assert fmt.parse("<m>score: 9") == 1.0
        assert fmt.parse(" 3") == pytest.approx(3 / 9)
        assert fmt.parse("score: 0<eos>") == 0.0
        assert fmt.parse("score: 12") is None  # not a level
        assert fmt.parse("no score") is None
        assert fmt.parse("") is None

    @pytest.mark.parametrize("bad", [math.inf, -math.inf])
    def test_infinite_reward_refused(self, bad):
        with pytest.raises(ValueError, match="infinite"):
            SegmentFormat().normalize(bad)

    def test_out_of_range_error_or_clip(self):
        with pytest.raises(ValueError, match="outside the declared `self_assessment_reward_range`"):
            SegmentFormat().normalize(1.5)
        assert SegmentFormat(out_of_range="clip").normalize(1.5) == 1.0
        assert SegmentFormat(out_of_range="clip").normalize(-2) == 0.0

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (dict(levels=1), "at least two levels"),
            (dict(levels=2.5), "integer >= 2"),
            (dict(reward_range=(1.0, 1.0)), "hi > lo"),
            (dict(reward_range=(0.0, math.nan)), "finite"),
            (dict(marker=""), "non-empty"),
            (dict(out_of_range="ignore"), "'error' or 'clip'"),
        ],
    )
    def test_bad_format(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            SegmentFormat(**kwargs)


class TestMasks:
    def test_segment_mask_padded_rows(self):
        ids = torch.tensor(
            [
                [5, 6, M, 3, E, P, P],  # answer, marker, score, eos, padding
                [5, M, E, P, P, P, P],  # no reward: marker then eos
                [5, 6, 7, E, P, P, P],  # no segment at all
            ]
        )
        mask = segment_mask(ids, M, [E])
        assert mask.tolist() == [
            [False, False, False, True, True, False, False],
            [False, False, True, False, False, False, False],
            [False] * 7,
        ]
        assert empty_segment_mask(ids, M, [E]).nonzero().tolist() == [[1, 2]]

    def test_segment_mask_packed_row(self):
        # Three documents packed in one row; each EOS closes its own segment, the prompt of the next is untouched
        ids = torch.tensor([[4, 5, M, 2, E, 4, 6, M, 3, E, 7, 8, E]])
        assert segment_mask(ids, M, [E]).nonzero()[:, 1].tolist() == [3, 4, 8, 9]

    def test_document_start_closes_a_segment(self):
        # Padding-free: document 1 was truncated after its score (no EOS); document 2 starts at position 0
        ids = torch.tensor([[4, 5, M, 3, 4, 6, M, 2, E]])
        position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4]])
        assert segment_mask(ids, M, [E], position_ids).nonzero()[:, 1].tolist() == [3, 7, 8]
        # Without the positions the truncated segment runs on into document 2
        assert segment_mask(ids, M, [E]).nonzero()[:, 1].tolist() == [3, 4, 5, 6, 7, 8]

    def test_orphan_tail_mask(self):
        tok = build_char_tokenizer()
        tokens = segment_tokens(tok, SegmentFormat(prefix="s:"))
        s, colon, seven, eos = *tok.convert_tokens_to_ids(["s", ":", "7"]), tok.eos_token_id
        a, b = tok.convert_tokens_to_ids(["a", "b"])
        rows = torch.tensor(
            [
                [colon, seven, eos, a, b, tokens.marker_id, s, colon, seven, eos],  # row starts after the prefix's 's'
                [seven, eos, a, b, a, b, a, b, a, b],  # row starts with the score
                [eos, a, b, a, b, a, b, a, b, a],  # row starts with the closing EOS
                [seven, a, b, a, b, a, b, a, b, a],  # an ordinary row that starts with a digit
                [a, b, seven, eos, seven, eos, a, b, a, b],  # tails away from a start are not orphans
            ]
        )
        assert orphan_tail_mask(rows, tokens).long().sum(1).tolist() == [3, 2, 1, 0, 0]
        # Padding-free: a document start inside the row counts too
        position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])
        packed = torch.tensor([[a, b, a, b, seven, eos, a, b, a, b]])
        assert orphan_tail_mask(packed, tokens, position_ids).nonzero()[:, 1].tolist() == [4, 5]
        assert not orphan_tail_mask(packed, tokens).any()

    def test_orphan_leading_marker(self):
        """A chunk that starts with the marker (its answer is in the previous chunk) has an orphan segment."""
        tok = build_char_tokenizer()
        tokens = segment_tokens(tok, SegmentFormat(prefix="s:"))
        s, colon, seven, eos = *tok.convert_tokens_to_ids(["s", ":", "7"]), tok.eos_token_id
        a, b, m = *tok.convert_tokens_to_ids(["a", "b"]), tokens.marker_id
        rows = torch.tensor(
            [
                [m, s, colon, seven, eos, a, b, m, s, colon],  # leading segment; a later one is not an orphan
                [m, eos, a, b, a, b, a, b, a, b],  # leading reward-less marker
                [a, m, s, colon, seven, eos, a, b, a, b],  # marker not at the start
            ]
        )
        assert orphan_tail_mask(rows, tokens).nonzero().tolist() == [
            [0, 0],
            [0, 1],
            [0, 2],
            [0, 3],
            [0, 4],
            [1, 0],
            [1, 1],
        ]
        # Padding-free: a document that starts with the marker, inside the row
        position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 0, 1]])
        packed = torch.tensor([[a, b, eos, m, s, colon, seven, eos, a, b]])
        assert orphan_tail_mask(packed, tokens, position_ids).nonzero()[:, 1].tolist() == [3, 4, 5, 6, 7]

    def test_score_mask(self):
        tok = build_char_tokenizer()
        tokens = segment_tokens(tok, SegmentFormat(prefix="s:"))
        row = tok.encode("1 + 2 = 3", add_special_tokens=False)
        ids = torch.tensor([row + [tokens.marker_id, *tokens.assessment_ids(7)]])
        pos = score_mask(ids, tokens).nonzero()[:, 1].tolist()
        assert pos == [len(row) + 3] and ids[0, pos[0]].item() == tokens.level_ids[7]


class TestSegmentTokens:
    def test_assessment_and_parse_ids(self):
        tokens = segment_tokens(build_char_tokenizer(), SegmentFormat(prefix="s="))
        ids = tokens.assessment_ids(4)
        assert ids[-1] == tokens.eos_id and len(ids) == len(tokens.prefix_ids) + 2
        assert tokens.parse_ids(ids) == 4
        assert tokens.parse_ids(ids[:-1]) == 4  # a truncated row still shows its score
        assert tokens.parse_ids(ids[1:]) is None  # prefix missing
        assert tokens.parse_ids([*tokens.prefix_ids, tokens.level_ids[1], tokens.level_ids[2]]) is None


@settings(max_examples=60, deadline=None)
@given(
    docs=st.lists(
        st.tuples(
            st.text(alphabet="0123456789+-= ", min_size=1, max_size=8),  # prompt
            st.text(alphabet="0123456789- ", min_size=1, max_size=5),  # completion
            st.one_of(st.none(), st.floats(min_value=-2.0, max_value=2.0)),  # reward
        ),
        min_size=1,
        max_size=4,
    ),
    levels=st.integers(min_value=2, max_value=10),
)
def test_render_tokenise_mask_parse_roundtrip(docs, levels):
    """Any reward in range round-trips to its level; masks never cover prompt or completion tokens (packed rows)."""
    tok = build_char_tokenizer()
    fmt = SegmentFormat(levels=levels, reward_range=(-2.0, 2.0), prefix="s:")
    tokens = segment_tokens(tok, fmt)
    row, expected = [], []
    for prompt, completion, reward in docs:
        body = tok.encode(prompt + completion, add_special_tokens=False)
        seg = tok.encode(fmt.render(reward), add_special_tokens=False) + [tok.eos_token_id]
        expected += [False] * (len(body) + 1) + [reward is not None] * (len(seg) - 1)
        row += body + seg
        if reward is not None:
            level = fmt.level_of(fmt.normalize(reward))
            assert seg[1:] == tokens.assessment_ids(level)
            assert tokens.parse_ids(seg[1:]) == level
            assert fmt.parse(tok.decode(seg)) == pytest.approx(fmt.level_value(level))
            assert abs(fmt.level_value(level) - fmt.normalize(reward)) <= 0.5 / (levels - 1) + 1e-9
    ids = torch.tensor([row])
    mask = segment_mask(ids, tokens.marker_id, tokens.eos_ids)[0]
    empty = empty_segment_mask(ids, tokens.marker_id, tokens.eos_ids)[0]
    assert (mask & ~empty).tolist() == expected
