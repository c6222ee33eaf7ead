"""python -m openai_gateway: serve the OpenAI API with uvicorn; settings come from the environment."""
import argparse
import logging
import sys

import uvicorn

from openai_gateway.app import create_app
from openai_gateway.settings import ENV_HELP, GatewaySettings, SettingsError


def main(argv: list[str] | None = None) -> int:
    epilog = "environment:\n" + "\n".join(f"  {name:<27} {text}" for name, text in ENV_HELP.items())
    parser = argparse.ArgumentParser(prog="python -m openai_gateway", epilog=epilog,
                                     description="OpenAI-compatible API in front of Triton's moe_llm model.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    try:
        settings = GatewaySettings.from_env()
    except SettingsError as e:
        print(f"openai_gateway: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn handles SIGINT/SIGTERM: it stops accepting, lets open streams finish (at most 10 s), then exits.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level,
                timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
