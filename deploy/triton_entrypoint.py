"""Container entrypoint: render the model repository, then become tritonserver.

    python3 -m deploy.triton_entrypoint [--model DIR] [--param KEY=VALUE ...] [--repository-dir DIR]
                                        [--dry-run] -- [tritonserver arguments ...]

The image's model_repository/ leaves the model folder and the engine settings as `${...}` templates.
This fills them (backend.serve.render_repository checks every value and names a bad field), and when
the tritonserver arguments carry --host-policy=<name>,... (from `python -m deploy.numa_policy`) it
gives moe_llm one KIND_CPU instance per policy name, so each instance runs on its own NUMA node.
Then it execs tritonserver, which so receives the container's SIGTERM itself.

Environment: MOE_MODEL_DIR (default of --model; unset: the embedded default model, built on first
use), TRITONSERVER (the binary, default `tritonserver` on PATH).
"""
import argparse
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from backend.errors import ConfigError
from backend.serve import MODEL_LOAD_ARGS, MODEL_NAME, parse_params, render_repository


def host_policy_names(tritonserver_args: list[str]) -> list[str]:
    """Policy names in first-seen order from --host-policy=<name>,<setting>=<value> (or the two-token form)."""
    names: list[str] = []
    for i, arg in enumerate(tritonserver_args):
        value = arg.split("=", 1)[1] if arg.startswith("--host-policy=") else (
            tritonserver_args[i + 1] if arg == "--host-policy" and i + 1 < len(tritonserver_args) else None)
        if value is None:
            continue
        m = re.fullmatch(r"([^,=]+),[^,=]+=.+", value)
        if not m:
            raise ConfigError("--host-policy", f"expected <name>,<setting>=<value>, got {value!r}")
        if m[1] not in names:
            names.append(m[1])
    return names


def bind_instances_to_policies(config_path: Path, policies: list[str]) -> None:
    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    del config.instance_group[:]
    for name in policies:
        config.instance_group.add(name=name, count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU,
                                  host_policy=name)
    config_path.write_text(text_format.MessageToString(config))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, tritonserver_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python3 -m deploy.triton_entrypoint", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.environ.get("MOE_MODEL_DIR") or None,
                        help="model folder (default $MOE_MODEL_DIR, else the embedded default model)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="engine setting (a config.pbtxt parameters key) or triton_max_batch_size, "
                             "max_queue_delay_microseconds, max_queue_size; repeatable")
    parser.add_argument("--repository-dir", type=Path, help="where to render the repository (default: a new temp dir)")
    parser.add_argument("--dry-run", action="store_true", help="render, print the tritonserver command, do not start it")
    opts = parser.parse_args(ours)
    if any(a.startswith("--model-repository") or a.startswith("--model-store") for a in tritonserver_args):
        parser.error("do not pass --model-repository to tritonserver: the entrypoint renders and passes it")

    if opts.model is None:
        from backend.default_model import ensure_default_model
        opts.model = str(ensure_default_model())
    if not Path(opts.model).is_dir():
        parser.error(f"--model {opts.model} is not a folder (mount the model there, or set MOE_MODEL_DIR)")
    dest = opts.repository_dir or Path(tempfile.mkdtemp(prefix="model-repository-"))
    try:
        repository = render_repository(dest, opts.model, parse_params(opts.param))
        policies = host_policy_names(tritonserver_args)
        if policies:
            bind_instances_to_policies(repository / MODEL_NAME / "config.pbtxt", policies)
    except ValueError as exc:  # ConfigError names the field; int() of a Triton field raises plain ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    binary = os.environ.get("TRITONSERVER", "tritonserver")
    load_args = [a for a in MODEL_LOAD_ARGS if a not in tritonserver_args]
    command = [binary, f"--model-repository={repository}", *load_args, *tritonserver_args]
    print(f"triton_entrypoint: {shlex.join(command)}", file=sys.stderr if not opts.dry_run else sys.stdout, flush=True)
    if opts.dry_run:
        return 0
    os.execvp(binary, command)


if __name__ == "__main__":
    sys.exit(main())
