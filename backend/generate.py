"""Command-line generation: `python -m backend.generate --model DIR "prompt"` streams the answer."""
import argparse
import logging
import sys

from backend.errors import InvalidRequest


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m backend.generate", description=__doc__)
    ap.add_argument("prompt", help="the prompt text")
    ap.add_argument("--model", default=None, help="Hugging Face checkpoint folder (default: the embedded default model)")
    ap.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                    help="wrap the prompt in the tokenizer's chat template when it has one (default: on)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--presence-penalty", type=float, default=0.0)
    ap.add_argument("--frequency-penalty", type=float, default=0.0)
    ap.add_argument("--min-tokens", type=int, default=0)
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="engine setting (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log engine settings")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from backend import LLMEngine, SamplingParams
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed, repetition_penalty=args.repetition_penalty,
                                presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                                min_tokens=args.min_tokens, stop=args.stop)
        settings = dict(kv.split("=", 1) for kv in args.param if "=" in kv)
        if len(settings) != len(args.param):
            raise InvalidRequest("--param", "expects KEY=VALUE")
        model = args.model
        if model is None:
            from backend.default_model import ensure_default_model
            model = ensure_default_model()
        engine = LLMEngine.from_pretrained(model, **{"warmup": "false", **settings})
        prompt = args.prompt
        if args.chat and getattr(engine.tokenizer, "chat_template", None):
            prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                          add_generation_prompt=True)
        engine.add_request("cli", prompt, params)
        while engine.has_unfinished_requests():
            for out in engine.step():
                sys.stdout.write(out.text_delta)
                sys.stdout.flush()
                if out.finished:
                    sys.stdout.write("\n")
                    print(f"[finish_reason={out.finish_reason}, {out.num_prompt_tokens} prompt + "
                          f"{out.num_output_tokens} generated tokens]", file=sys.stderr)
    except InvalidRequest as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
