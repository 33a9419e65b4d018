# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Serve a PCL checkpoint with vLLM: answers stop at the marker, then the self-score is read with one prefill.

    pip install "pcl[vllm]"
    python recipes/deploy_vllm.py outputs/quickstart/assess --prompt "12 + 30 =" --prompt "7 + 6 ="
    # GPU check: also score the same answers with pcl.readout (transformers) and compare
    python recipes/deploy_vllm.py outputs/quickstart/assess --prompt "12 + 30 =" --check

Each answer costs what the base model's would (the checkpoint's `generation_config.json` lists the marker as an EOS
id, and the request lists it in `stop_token_ids` too). The self-score is one more request per answer: the prompt
`prompt + answer + MARKER [prefix]` (vLLM's prefix cache already holds `prompt + answer`), one step restricted to
the score-level tokens, whose logprobs give the expected level at the checkpoint's readout temperature, as
`pcl.readout.self_scores` computes it. The request building and the logprob arithmetic are `pcl.vllm_requests`'
(tested on CPU against `pcl.readout`); this script only runs them.
"""

import argparse
import json

from pcl.inference import encode_prompt
from pcl.vllm_requests import (
    answer_sampling_kwargs,
    checkpoint_segment,
    score_prompt_ids,
    score_sampling_kwargs,
    self_score_from_logprobs,
)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="A PCL checkpoint directory (saved by a PCL trainer).")
    parser.add_argument("--prompt", action="append", required=True, help="A prompt (repeat for several).")
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="Answer sampling temperature (0: greedy).")
    parser.add_argument("--check", action="store_true", help="Compare the scores with pcl.readout (transformers).")
    args = parser.parse_args(argv)

    from vllm import LLM, SamplingParams

    tokenizer, tokens, readout_temperature = checkpoint_segment(args.checkpoint)
    # Processed logprobs: the score request's logprobs are normalised over the allowed level tokens, so every level
    # is reported (raw logprobs would list the vocabulary-wide top-k, which may miss some levels)
    llm = LLM(model=args.checkpoint, logprobs_mode="processed_logprobs")
    prompt_ids = [encode_prompt(tokenizer, p) for p in args.prompt]
    answer_params = SamplingParams(**answer_sampling_kwargs(tokens, max_tokens=args.max_tokens,
                                                             temperature=args.temperature))  # fmt: skip
    answers = [o.outputs[0] for o in llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], answer_params)]
    requests = [
        {"prompt_token_ids": score_prompt_ids(ids, a.token_ids, tokens)}
        for ids, a in zip(prompt_ids, answers, strict=True)
    ]
    scored = llm.generate(requests, SamplingParams(**score_sampling_kwargs(tokens)))
    rows = [
        {
            "prompt": prompt,
            "answer": answer.text,
            "stopped_at_marker": bool(answer.token_ids) and answer.token_ids[-1] == tokens.marker_id,
            "num_tokens": len(answer.token_ids),
            "self_score": self_score_from_logprobs(s.outputs[0].logprobs[0], tokens, readout_temperature),
        }
        for prompt, answer, s in zip(args.prompt, answers, scored, strict=True)
    ]
    if args.check:
        from pcl.marker import load_pcl_model
        from pcl.readout import self_scores

        model, _, _ = load_pcl_model(args.checkpoint, device_map="auto")
        texts = [tokenizer.decode(a.token_ids, skip_special_tokens=True) for a in answers]
        for row, expected in zip(rows, self_scores(model, tokenizer, args.prompt, texts), strict=True):
            row["readout_self_score"] = expected
    for row in rows:
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main()
