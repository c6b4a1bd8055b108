"""GPTQ's Hessian work and AWQ's grid search against llm-compressor (issue 17, item 3):
calibration time and reconstruction error, both sides on the same tiny Llama.

What it does:

1. Builds a seeded random ``LlamaForCausalLM`` (``--hidden`` 512, ``--layers`` 4,
   intermediate 1408, 8 heads, 8 KV heads so that v_proj -> o_proj is scaled by both AWQs,
   vocab 1000, float32).  The RMSNorm weights are drawn log-normal, so some input channels
   carry much larger activations than others, as in trained LLMs (on a plain random init
   every channel looks alike and AWQ's search has nothing to find).  It is saved with
   safetensors to a temporary folder together with the calibration token ids
   (``--samples`` 32 x ``--seq`` 128, uniform over the vocabulary, in batches of
   ``--batch`` 8, no padding) and the held-out ids (16 x 128, another seed).
2. **Ours**, in this process, through the project's API (``method.prepare(ctx)`` with a
   :class:`CompressionContext` whose adapter points at the Llama's decoder):
   ``gptq(bits=4, group_size=128, damp=0.01, block_size=128, static_groups=True)`` and
   ``awq(bits=4, group_size=128, n_grid=20, clip=False)``; the Linears of the decoder
   blocks, lm_head left alone.  Three more rows have no llm-compressor counterpart and
   are shown for information (``--no-extra`` drops them): the project's defaults
   (``gptq`` with dynamic groups, ``awq`` with the clip search) and group RTN with
   integer zeros (no calibration), which says how much GPTQ and AWQ gain at all.
3. **llm-compressor** (``oneshot``) in the scratch virtual environment
   (``--llmc-python``, default ``/tmp/llmc/venv/bin/python``; skipped with a message when
   absent), as a subprocess that runs this same file with ``--llmc-worker``:
   ``GPTQModifier(targets="Linear", scheme="W4A16_ASYM", ignore=["lm_head"],
   block_size=128, dampening_frac=0.01, actorder=None)`` and
   ``[AWQModifier(duo_scaling=False, n_grid=20), QuantizationModifier(targets="Linear",
   scheme="W4A16_ASYM", ignore=["lm_head"])]``, pipeline ``sequential``, fed a DataLoader
   of the very same batches.  GPTQ propagates the quantized blocks' outputs (their
   default, as ours); AWQ runs with ``propagate_error=False`` so that every block is
   calibrated on the float model's activations, as ours (``search=reference``, llm-awq).
   The worker writes every parameter of the model, each quantized Linear's weight replaced
   by its fake-quantized (dequantized) fp32 value, to a safetensors file, and prints its
   timings as JSON.

Timing: wall clock of the compression call alone, with the model already loaded and the
batches already built (model load, tokenisation and saving excluded): ours is
``method.prepare(ctx)``; theirs is ``Oneshot.apply_recipe_modifiers`` (modifier
initialisation, the sequential pipeline with its tracing and calibration forwards, the
Hessian / grid work, finalisation) and, for reference, the whole ``oneshot(...)`` call
(which adds argument parsing and the dataloader hand-over).  The ratio is ours / theirs
``apply_recipe_modifiers`` (the stricter of the two).  Each side runs ``--repeats`` times
(default 2), interleaved (ours, theirs, ours, theirs), each on a fresh copy of the model,
and its fastest run is kept; every run's time is printed as it finishes.

Threads: ``--threads`` (default 1) on each side (``torch.set_num_threads`` here,
``OMP_NUM_THREADS`` and ``torch.set_num_threads`` in the worker).  On a 2-core machine
shared with another 2-thread job, 2 threads per side oversubscribe the cores and the
OpenMP barriers make run times 3 to 30 times longer and erratic (measured: ours GPTQ 17 to
56 s, llm-compressor's 125 to 159 s, against 5 to 6 s each with 1 thread), so the
comparison is made single-threaded; pass ``--threads 2`` on an idle machine.

Reconstruction error, measured by the same code in this process for both sides: the
float model is loaded from the saved folder, its state replaced by the method's
(dequantized weights and, for AWQ, the rescaled norms and v/up rows), and run on the
held-out ids (never seen in calibration); the error is the relative error of the final logits,
``||logits_q - logits_fp||_F / ||logits_fp||_F`` over every held-out position (lower is
better).  ``rel diff`` is ``(ours - theirs) / theirs``: goal within 2 % (ours at most
1.02 x theirs).  Every quantized weight is checked to hold at most ``2^bits`` distinct values
per (row, group of 128).

Where the two sides cannot be set alike (knobs llm-compressor does not have):

* scales: ours are rounded to fp16 (the project's storage dtype); llm-compressor keeps
  them in the weight dtype (fp32 here);
* AWQ grid: ours tries ``alpha = k/20`` for ``k = 0..19`` (llm-awq); llm-compressor
  ``k/19`` for ``k = 0..19`` (includes 1.0);
* AWQ: llm-compressor has no clip search (llm-awq ``auto_clip``), hence ours with
  ``clip=False`` in the compared row;
* GPTQ: llm-compressor takes every group's (scale, zero) from the original weights
  (``static_groups=True`` in ours); Hessian normalised by samples, not tokens (GPTQ
  is invariant to that scale);
* llm-compressor forces eager attention during calibration (``use_eager_attention``);
  ours runs the model's own (sdpa here); transformers 5.17 in the scratch env, 5.23 here;
* llm-compressor's AWQ pins its cached block inputs in memory, which needs a CUDA
  driver: the worker makes ``IntermediatesCache.pin_memory`` a no-op when no GPU is there
  (pinning only speeds host-to-GPU copies).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/calibration_speed.py [--llmc-python /tmp/llmc/venv/bin/python] [--repeats 2] [--threads 1] [--profile]

Set up the scratch environment (outside the repository; torch comes from this machine's
local wheel index through the pip configuration, not downloaded):

    python3.11 -m venv /tmp/llmc/venv
    /tmp/llmc/venv/bin/pip install torch==2.14.1
    /tmp/llmc/venv/bin/pip install --no-deps /tmp/llmc/llmcompressor-0.14.0.1-py3-none-any.whl
    /tmp/llmc/venv/bin/pip install transformers==5.17.0 compressed-tensors==0.19.0 loguru \\
        pyyaml numpy requests tqdm datasets accelerate pillow safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

HIDDEN, LAYERS, INTER, HEADS, VOCAB = 512, 4, 1408, 8, 1000
BITS, GROUP = 4, 128
DEFAULT_LLMC = "/tmp/llmc/venv/bin/python"


# ----------------------------------------------------------------------------- shared


def build_model(hidden: int, layers: int, inter: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(torch.exp(0.75 * torch.randn(p.shape, generator=g)))
    return model


def load_model(folder: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def batches_of(ids: torch.Tensor, batch: int) -> list[dict]:
    return [{"input_ids": ids[i : i + batch], "attention_mask": torch.ones_like(ids[i : i + batch])} for i in range(0, len(ids), batch)]


# ----------------------------------------------------------------------------- llm-compressor worker (runs in the scratch venv)


def word_tokenizer():
    """A stand-in tokenizer: ``oneshot`` wants a processor when given data, even a ready
    DataLoader of token ids (which it does not tokenise)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")), unk_token="t0", pad_token="t0")


def llmc_worker(folder: Path, method: str, batch: int, threads: int, out: Path) -> None:
    torch.set_num_threads(threads)
    from compressed_tensors.quantization import forward_quantize
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader

    from llmcompressor import oneshot
    from llmcompressor.entrypoints.oneshot import Oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier

    if not torch.cuda.is_available():
        # AWQModifier pins its cached block inputs (cache.pin_memory) before the grid
        # search; pinning needs a CUDA driver, so a CPU-only run stops there.  Pinning only
        # speeds host-to-GPU copies, which never happen here: make it a no-op.
        from llmcompressor.pipelines.cache import IntermediatesCache

        IntermediatesCache.pin_memory = lambda self, *a, **k: None

    model = load_model(folder)
    ids = torch.load(folder / "calibration_ids.pt")
    loader = DataLoader(batches_of(ids, batch), batch_size=None, shuffle=False)

    if method == "gptq":
        recipe = GPTQModifier(targets="Linear", scheme="W4A16_ASYM", ignore=["lm_head"], block_size=128, dampening_frac=0.01, actorder=None)
        extra = {}
    else:
        recipe = [AWQModifier(duo_scaling=False, n_grid=20), QuantizationModifier(targets="Linear", scheme="W4A16_ASYM", ignore=["lm_head"])]
        extra = {"propagate_error": False}

    inner = {}
    original = Oneshot.apply_recipe_modifiers

    def timed(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            inner["s"] = time.perf_counter() - t0

    Oneshot.apply_recipe_modifiers = timed
    tokenizer = word_tokenizer()
    t0 = time.perf_counter()
    oneshot(model=model, processor=tokenizer, recipe=recipe, dataset=loader, num_calibration_samples=len(ids), pipeline="sequential", shuffle_calibration_samples=False, **extra)
    total = time.perf_counter() - t0
    Oneshot.apply_recipe_modifiers = original

    state = {}
    quantized = []
    with torch.no_grad():
        for name, mod in model.named_modules():
            scheme = getattr(mod, "quantization_scheme", None)
            if isinstance(mod, torch.nn.Linear) and scheme is not None and scheme.weights is not None:
                state[name + ".weight"] = forward_quantize(mod, mod.weight.detach(), "weight", scheme.weights).float().contiguous()
                quantized.append(name)
        for name, p in model.named_parameters():
            if name not in state and not any(name.endswith(s) for s in ("_scale", "_zero_point", "_g_idx", "_global_scale")):
                state[name] = p.detach().float().contiguous()
    save_file(state, str(out))
    print("LLMC_RESULT " + json.dumps({"method": method, "apply_s": inner.get("s"), "oneshot_s": total, "quantized": len(quantized), "torch": torch.__version__}))


# ----------------------------------------------------------------------------- ours


def run_ours(folder: Path, spec: str, batches: list[dict], profile: bool = False):
    from vlmcompress.eval.calibration import FixedBatches
    from vlmcompress.methods import CompressionContext, build_setting
    from vlmcompress.models.base import ModelAdapter

    class LlamaTextAdapter(ModelAdapter):
        """A plain ``LlamaForCausalLM``: the decoder is ``model.model``."""

        name = "llama_text"

        @property
        def language_model(self):
            return self.model.model

    model = load_model(folder)
    ctx = CompressionContext(model, LlamaTextAdapter(model, None), None, calibration=FixedBatches(batches))
    (method,) = build_setting(spec).ordered()
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    method.prepare(ctx)
    elapsed = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
    state = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    return elapsed, state, prof


# ----------------------------------------------------------------------------- measuring


@torch.no_grad()
def logits_of(model, ids: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits.float() for b in batches_of(ids, batch)])


def relative_logit_error(ref_model, reference: torch.Tensor, state: dict, ids: torch.Tensor, batch: int) -> float:
    original = {k: v.clone() for k, v in ref_model.state_dict().items()}
    missing = set(original) - set(state)
    extra = set(state) - set(original)
    if missing or extra:
        raise RuntimeError(f"state mismatch: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}")
    ref_model.load_state_dict(state)
    try:
        out = logits_of(ref_model, ids, batch)
    finally:
        ref_model.load_state_dict(original)
    return float((out - reference).norm() / reference.norm())


def check_quantized(state: dict, layers: int, bits: int, group: int) -> int:
    """Number of decoder Linear weights with at most 2^bits values per (row, group)."""
    names = [k for k in state if ".layers." in k and k.endswith("proj.weight")]
    for k in names:
        w = state[k]
        g = w.reshape(w.shape[0], -1, group)
        distinct = (g.sort(dim=-1).values.diff(dim=-1) != 0).sum(-1) + 1
        if int(distinct.max()) > 2**bits:
            raise RuntimeError(f"{k}: {int(distinct.max())} distinct values in one group, more than 2^{bits}")
    return len(names)


def run_theirs(llmc_python: str, folder: Path, method: str, batch: int, threads: int):
    out = folder / f"llmc_{method}.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)
    cmd = [llmc_python, os.path.abspath(__file__), "--llmc-worker", str(folder), "--method", method, "--batch", str(batch), "--threads", str(threads), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(folder))
    line = next((l for l in proc.stdout.splitlines() if l.startswith("LLMC_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"llm-compressor worker failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    from safetensors.torch import load_file

    return json.loads(line[len("LLMC_RESULT ") :]), load_file(str(out))


def print_profile(prof, top: int = 25) -> None:
    import io
    import pstats

    for key in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).strip_dirs().sort_stats(key).print_stats(top)
        text = s.getvalue()
        start = text.find("   ncalls")
        print(f"\n-- cProfile of our calibration, top {top} by {key} --")
        print(text[start:].rstrip())


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llmc-python", default=DEFAULT_LLMC, help="python of the scratch env with llm-compressor")
    ap.add_argument("--hidden", type=int, default=HIDDEN)
    ap.add_argument("--layers", type=int, default=LAYERS)
    ap.add_argument("--intermediate", type=int, default=INTER)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on each side (see the docstring for why 1)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side, interleaved; the fastest is kept")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-extra", action="store_true", help="skip the two information rows (project defaults)")
    ap.add_argument("--profile", action="store_true", help="one more, untimed run of ours per row under cProfile (printed after the table)")
    ap.add_argument("--folder", default=None, help="where to save the model and the token ids, kept (default: a temporary folder, removed at the end)")
    # worker mode (run by the scratch venv's python)
    ap.add_argument("--llmc-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.llmc_worker:
        llmc_worker(Path(args.llmc_worker), args.method, args.batch, args.threads, Path(args.out))
        return

    torch.set_num_threads(args.threads)
    import transformers
    from safetensors.torch import save_file

    transformers.logging.set_verbosity_error()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="calibration_speed_"))
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(args.hidden, args.layers, args.intermediate, args.seed)
    model.save_pretrained(folder, safe_serialization=True)
    g = torch.Generator().manual_seed(args.seed + 100)
    calib = torch.randint(0, VOCAB, (args.samples, args.seq), generator=g)
    held = torch.randint(0, VOCAB, (args.heldout, args.seq), generator=torch.Generator().manual_seed(args.seed + 200))
    torch.save(calib, folder / "calibration_ids.pt")
    save_file({"calibration_ids": calib, "heldout_ids": held}, str(folder / "token_ids.safetensors"))
    del model

    ref_model = load_model(folder)
    reference = logits_of(ref_model, held, args.batch)
    batches = batches_of(calib, args.batch)

    have_llmc = Path(args.llmc_python).exists()
    print(
        f"tiny Llama: hidden {args.hidden}, {args.layers} layers, intermediate {args.intermediate}, {HEADS} heads, vocab {VOCAB}, fp32; "
        f"calibration {args.samples} x {args.seq} tokens in batches of {args.batch}; held-out {args.heldout} x {args.seq}; "
        f"{args.threads} threads; torch {torch.__version__}, transformers {transformers.__version__}; model in {folder}"
    )
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    if not have_llmc:
        print(f"llm-compressor skipped: {args.llmc_python} not found (set up the scratch env, see this file's docstring)")

    rows = [
        ("gptq", f"gptq(bits={BITS},group_size={GROUP},damp=0.01,block_size=128,static_groups=true)", "gptq"),
        ("awq", f"awq(bits={BITS},group_size={GROUP},n_grid=20,clip=false)", "awq"),
    ]
    if not args.no_extra:
        rows += [
            ("gptq (ours default: dynamic groups)", f"gptq(bits={BITS},group_size={GROUP})", None),
            ("awq (ours default: + clip search)", f"awq(bits={BITS},group_size={GROUP})", None),
            ("rtn (no calibration, for scale)", f"rtn(bits={BITS},granularity=group,group_size={GROUP},zero_point=int)", None),
        ]

    results = []
    profiles = []
    for label, spec, theirs in rows:
        ours_times, their_runs, ours_state = [], [], None
        for r in range(args.repeats):  # interleaved: ours, theirs, ours, theirs, ...
            t, ours_state, _ = run_ours(folder, spec, batches)
            ours_times.append(t)
            if theirs and have_llmc:
                their_runs.append(run_theirs(args.llmc_python, folder, theirs, args.batch, args.threads))
        if args.profile and not spec.startswith("rtn"):  # one more run, under cProfile, not timed
            profiles.append((label, run_ours(folder, spec, batches, profile=True)[2]))
        check_quantized(ours_state, args.layers, BITS, GROUP)
        ours_err = relative_logit_error(ref_model, reference, ours_state, held, args.batch)
        their = None
        if their_runs:
            info, st = min(their_runs, key=lambda x: x[0]["apply_s"])
            n = check_quantized(st, args.layers, BITS, GROUP)
            if info["quantized"] != n:
                raise RuntimeError(f"llm-compressor quantized {info['quantized']} Linears, expected the {n} decoder ones")
            info["all_apply_s"] = [i["apply_s"] for i, _ in their_runs]
            their = (info, relative_logit_error(ref_model, reference, st, held, args.batch))
        results.append((label, spec, min(ours_times), ours_err, their))
        theirs_s = f"; theirs {', '.join(f'{x:.1f}' for x in their[0]['all_apply_s'])} s" if their else ""
        print(f"  done: {label}: ours {', '.join(f'{x:.1f}' for x in ours_times)} s{theirs_s}", flush=True)

    print()
    header = f"{'method':<38} {'ours s':>8} {'theirs s':>9} {'(oneshot)':>10} {'ratio':>6} {'ours err':>10} {'theirs err':>10} {'rel diff':>9}"
    print(header)
    print("-" * len(header))
    for label, spec, ours_t, ours_err, their in results:
        if their is None:
            print(f"{label:<38} {ours_t:>8.2f} {'-':>9} {'-':>10} {'-':>6} {ours_err:>10.5f} {'-':>10} {'-':>9}")
            continue
        info, their_err = their
        ratio = ours_t / info["apply_s"]
        diff = (ours_err - their_err) / their_err
        print(f"{label:<38} {ours_t:>8.2f} {info['apply_s']:>9.2f} {info['oneshot_s']:>10.2f} {ratio:>6.2f} {ours_err:>10.5f} {their_err:>10.5f} {diff:>+9.2%}")
    print()
    for label, spec, *_ in results:
        print(f"  {label}: ours = {spec}")
    if have_llmc:
        print("  theirs: llm-compressor oneshot, pipeline=sequential; gptq: GPTQModifier(W4A16_ASYM, block_size=128, dampening_frac=0.01, actorder=None);")
        print("          awq: AWQModifier(duo_scaling=False, n_grid=20) + QuantizationModifier(W4A16_ASYM), propagate_error=False")
    print("  times: ours = method.prepare(ctx); theirs = Oneshot.apply_recipe_modifiers (oneshot(...) total in brackets); model load excluded")
    print("  error: ||logits_q - logits_fp||_F / ||logits_fp||_F on the held-out ids; rel diff = (ours - theirs) / theirs; goals: ratio <= 1.00, rel diff <= +2%")
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for label, prof in profiles:
        print(f"\n==== profile: {label} ====")
        print_profile(prof)
    if not args.folder:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
