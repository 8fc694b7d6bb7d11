"""Local fine-tuning (selfinstruct/training): labels, the completion-only loss, training, resume
after a kill, config checks, and the GGUF adapter in llama.cpp.

Most tests use a tiny random Gemma-3-architecture model built in a temporary folder (seconds per
run); only the llama.cpp test uses the real embedded model (converted once into the cache dir).
No network, no W&B.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from selfinstruct.config import ConfigError
from selfinstruct.training.config import FinetuneConfig, validate_finetune

REPO = Path(__file__).resolve().parents[1]

# Tiny tasks in the finetune.jsonl format; the tiny model learns them within a few steps.
PAIRS = [
    {"prompt": "Task: Add the numbers.\nInput: 2 and 3\nOutput:", "completion": " 5<|endoftext|>"},
    {"prompt": "Task: Name the colour of the sky.\nOutput:", "completion": " blue<|endoftext|>"},
    {"prompt": "Reverse the word.\nInput: cat\n\n", "completion": "tac<|endoftext|>"},
    {"prompt": "Task: Is fire hot?\nOutput:", "completion": " Yes<|endoftext|>"},
    {"prompt": "Give the plural of mouse.\nOutput:", "completion": " mice<|endoftext|>"},
    {"prompt": "Task: Translate hello into French.\nOutput:", "completion": " bonjour<|endoftext|>"},
    {"prompt": "Count the letters in dog.\n\n", "completion": "3<|endoftext|>"},
    {"prompt": "Task: What is the opposite of up?\nOutput:", "completion": " down<|endoftext|>"},
]


def tiny_cfg(**overrides) -> FinetuneConfig:
    """Settings for the tiny model: short sequences, a few steps, a large learning rate."""
    values = dict(base_model=None, epochs=1.0, learning_rate=1e-2, batch_size=2, max_length=64,
                  lora_r=4, lora_alpha=8.0, lora_dropout=0.0, save_every=100, device="cpu",
                  precision="fp32", seed=0)
    values.update(overrides)
    return FinetuneConfig(**values)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 2-layer Gemma 3 text model with a small byte-level BPE tokenizer, as an HF folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_gemma3")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [p["prompt"] + p["completion"] for p in PAIRS] * 4
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>")
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=16, max_position_embeddings=128, sliding_window=32,
                              pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def mean_completion_loss(model, tokenizer, pairs, max_length=64) -> float:
    import torch

    from selfinstruct.training.data import PadCollator, encode_pairs
    from selfinstruct.training.local import completion_loss_sum

    examples, _ = encode_pairs(tokenizer, pairs, max_length)
    batch = PadCollator(tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        total, n = completion_loss_sum(model.eval(), batch["input_ids"], batch["attention_mask"], batch["labels"])
    return float(total) / n


# --- labels and truncation ---------------------------------------------------------------------

def test_prompt_tokens_are_masked_and_completion_tokens_keep_their_ids(tiny_model):
    from transformers import AutoTokenizer

    from selfinstruct.training.data import IGNORE, encode_pair

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt, completion = "Task: Add the numbers.\nInput: 2 and 3\nOutput:", " 5<|endoftext|>"
    example, truncated = encode_pair(tok, prompt, completion, max_length=64)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tok(" 5", add_special_tokens=False)["input_ids"]
    assert not truncated
    # <bos> prompt completion <eos>; GPT-3's end marker became the tokenizer's end token
    assert example["input_ids"] == [tok.bos_token_id, *prompt_ids, *completion_ids, tok.eos_token_id]
    n_prompt = 1 + len(prompt_ids)
    assert example["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert example["labels"][n_prompt:] == [*completion_ids, tok.eos_token_id]


def test_long_examples_lose_the_start_of_the_prompt_and_are_counted(tiny_model):
    from transformers import AutoTokenizer

    from selfinstruct.training.data import IGNORE, encode_pair, encode_pairs

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = "Task: " + "add the numbers and " * 20 + "say the sum.\nOutput:"
    example, truncated = encode_pair(tok, prompt, " 5", max_length=24)
    completion = tok(" 5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert truncated and len(example["input_ids"]) == 24
    assert example["input_ids"][0] == tok.bos_token_id
    assert example["input_ids"][-len(completion):] == completion  # the completion is whole
    kept = 24 - 1 - len(completion)
    assert example["input_ids"][1:1 + kept] == prompt_ids[-kept:]  # the prompt's end is kept
    assert [x for x in example["labels"] if x != IGNORE] == completion
    # a completion longer than the budget keeps half of it for the prompt's end
    example, truncated = encode_pair(tok, "Say it.\nOutput:", " blue" * 40, max_length=16)
    assert truncated and len(example["input_ids"]) == 16
    assert sum(x != IGNORE for x in example["labels"]) == 16 - 1 - min(
        len(tok("Say it.\nOutput:", add_special_tokens=False)["input_ids"]), 15 // 2)
    _, num_truncated = encode_pairs(tok, [{"prompt": prompt, "completion": " 5"}, *PAIRS], 24)
    assert num_truncated == 1


# --- the completion-only loss is the full-logits loss ------------------------------------------

@pytest.mark.parametrize("lora", [False, True])
def test_completion_only_loss_equals_full_logits_masked_loss(tiny_model, lora):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfinstruct.training.data import PadCollator, encode_pairs
    from selfinstruct.training.local import completion_loss_sum

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 task_type="CAUSAL_LM", init_lora_weights=False))
    examples, _ = encode_pairs(tok, PAIRS[:5], 64)
    batch = PadCollator(tok.pad_token_id)(examples)  # different lengths: padded rows too
    assert (batch["attention_mask"] == 0).any()

    def grads():
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    total, n = completion_loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    ours = total / n
    ours.backward()
    ours_grads = grads()
    model.zero_grad()
    plain = model(**batch).loss  # transformers' own loss: full logits, labels masked with -100
    plain.backward()
    assert n == int((batch["labels"][:, 1:] != -100).sum())
    assert torch.allclose(ours, plain, rtol=1e-5, atol=1e-6), (float(ours), float(plain))
    for a, b in zip(ours_grads, grads()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


# --- training ----------------------------------------------------------------------------------

def test_two_steps_lower_the_loss_and_write_the_outputs(tiny_model, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfinstruct.training.local import finetune_local

    tok = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    before = mean_completion_loss(base, tok, PAIRS[:4])
    records = []
    out = tmp_path / "finetune"
    stats = finetune_local(tiny_cfg(base_model=str(tiny_model), max_steps=2), PAIRS[:4], out,
                           tmp_path / "cache", on_log=records.append)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out / "adapter")
    after = mean_completion_loss(tuned, tok, PAIRS[:4])
    assert after < before - 0.05, (before, after)

    assert stats["cost/finetune/steps"] == 2 and stats["finetune/num_examples"] == 4
    assert stats["finetune/num_truncated"] == 0
    from selfinstruct.training.data import encode_pairs

    examples, _ = encode_pairs(tok, PAIRS[:4], 64)  # 2 steps x 2 = each example once, no padding
    assert stats["cost/finetune/tokens"] == sum(len(e["input_ids"]) for e in examples)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and records == log
    assert {"step", "epoch", "loss", "learning_rate", "tokens", "seconds"} <= set(log[0])
    assert stats["finetune/first_loss"] == log[0]["loss"]
    assert stats["finetune/final_loss"] == log[-1]["loss"]
    assert (out / "adapter.gguf").stat().st_size > 0 and stats["finetune/adapter_gguf"]
    assert (out / "plots" / "finetune_loss.png").stat().st_size > 0
    # A rerun on the finished dir returns the same stats without training again.
    again = finetune_local(tiny_cfg(base_model=str(tiny_model), max_steps=2), PAIRS[:4], out,
                           tmp_path / "cache", on_log=records.append)
    assert again == stats and len(records) == 2


def test_full_finetuning_writes_a_model_folder_that_answers(tiny_model, tmp_path):
    from selfinstruct.training.generate import TransformersAnswerer, model_dir_for
    from selfinstruct.training.local import finetune_local

    pair = {"prompt": "Task: Name the colour of the sky.\nOutput:", "completion": " blue<|endoftext|>"}
    out = tmp_path / "finetune"
    stats = finetune_local(tiny_cfg(base_model=str(tiny_model), method="full", learning_rate=3e-3,
                                    batch_size=1, max_steps=12), [pair], out, tmp_path / "cache")
    assert not (out / "adapter.gguf").exists() and not stats["finetune/adapter_gguf"]
    model_dir, adapter = model_dir_for(out, tiny_model)
    assert model_dir == out / "model" and adapter is None
    base_answer, = TransformersAnswerer(tiny_model, device="cpu").answer([pair["prompt"]], max_new_tokens=4)
    answers = TransformersAnswerer(model_dir, device="cpu").answer(
        [pair["prompt"], "Task: Is fire hot?\nOutput:"], max_new_tokens=4, batch_size=2)
    assert answers[0] == " blue" and base_answer != " blue"
    assert stats["finetune/final_loss"] < stats["finetune/first_loss"]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_finetune_then_evaluate_answers_with_transformers_for_an_hf_base_model(tiny_model, tmp_path, method):
    """An HF base model (finetune.base_model) and a full fine-tune are answered by transformers:
    base answers by the base folder, tuned answers by model/ (full) or the base with adapter/."""
    from selfinstruct.evaluation.answering import answer_prompt, clean_answer
    from selfinstruct.evaluation.eval_sets import load_eval_set
    from selfinstruct.files import read_jsonl
    from selfinstruct.pipeline import run
    from selfinstruct.training.generate import TransformersAnswerer, model_dir_for
    from tests.conftest import compose

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    cfg = compose(["llm=fake", "tracking=none", "stages=[finetune,evaluate]", f"input={data}",
                   f"finetune.base_model={tiny_model}", f"finetune.method={method}", "finetune.max_steps=4",
                   "finetune.learning_rate=1e-2", "finetune.batch_size=2", "finetune.max_length=64",
                   "finetune.device=cpu", "finetune.precision=fp32", "evaluate.limit=3",
                   "sampling.evaluate.max_tokens=6", f"llm.cache_dir={tmp_path / 'cache'}"])
    stats = run(cfg, tmp_path / "run")
    records = read_jsonl(tmp_path / "run" / "eval.jsonl")
    assert len(records) == 3 == stats["eval/num_tasks"]
    prompts = [answer_prompt(t.instruction, t.input) for t in load_eval_set(None)[:3]]
    model_dir, adapter = model_dir_for(tmp_path / "run" / "finetune", tiny_model)
    assert (adapter is None) == (method == "full")
    for name, folder, adapter_dir in [("base", tiny_model, None), ("tuned", model_dir, adapter)]:
        expected = TransformersAnswerer(folder, adapter_dir, device="cpu").answer(prompts, max_new_tokens=6)
        assert [r[f"{name}_answer"] for r in records] == [clean_answer(a, "<|endoftext|>") for a in expected]
    assert stats["cost/evaluate/requests"] == 6  # 3 tasks x (base, tuned), none by the fake model's rules


RESUME_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from selfinstruct.training.config import FinetuneConfig
    from selfinstruct.training.local import finetune_local

    def kill_at(record):  # SIGKILL: no cleanup, like an out-of-memory kill or a dead node
        if record["step"] == {kill_step}:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = FinetuneConfig(**json.loads({cfg!r}))
    finetune_local(cfg, json.loads({pairs!r}), Path({out!r}), Path({cache!r}), on_log=kill_at)
""")


@pytest.mark.slow
def test_killed_finetune_resumes_to_the_same_adapter(tiny_model, tmp_path):
    """8 examples, batch 2, 2 epochs: 8 steps; checkpoints at 3 and 6; killed after step 7, the
    rerun resumes in epoch 2 from step 6 (mid-epoch, with dropout) and ends with the adapter of a
    run never killed."""
    import dataclasses

    from safetensors.torch import load_file

    from selfinstruct.training.local import finetune_local

    cfg = tiny_cfg(base_model=str(tiny_model), epochs=2.0, save_every=3, lora_dropout=0.1,
                   learning_rate=3e-3)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    script = RESUME_SCRIPT.format(repo=str(REPO), kill_step=7, cfg=json.dumps(dataclasses.asdict(cfg)),
                                  pairs=json.dumps(PAIRS), out=str(killed), cache=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr[-2000:]
    assert not (killed / "adapter").exists()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert [json.loads(x)["step"] for x in (killed / "train_log.jsonl").read_text().splitlines()] == list(range(1, 8))

    # resumed with another thread count (a setting that changes no weights)
    resumed = finetune_local(dataclasses.replace(cfg, num_threads=1), PAIRS, killed, tmp_path / "cache")
    reference = finetune_local(cfg, PAIRS, whole, tmp_path / "cache")
    assert resumed["finetune/resumed_from_step"] == 6 and reference["finetune/resumed_from_step"] == 0
    assert resumed["cost/finetune/steps"] == reference["cost/finetune/steps"] == 8
    assert resumed["cost/finetune/tokens"] == reference["cost/finetune/tokens"]
    a = load_file(killed / "adapter" / "adapter_model.safetensors")
    b = load_file(whole / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-6, key
    log_a = [json.loads(x) for x in (killed / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (whole / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_a] == list(range(1, 9))  # step 7 logged once, not twice
    assert [r["loss"] for r in log_a] == pytest.approx([r["loss"] for r in log_b], abs=1e-5)


# --- config checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, message", [
    ("learning_rate", -1.0, "config key `finetune.learning_rate`: must be > 0 or null, got -1"),
    ("epochs", 0.0, "config key `finetune.epochs`: must be > 0"),
    ("batch_size", 0, "config key `finetune.batch_size`: must be >= 1"),
    ("method", "qlora", "config key `finetune.method`: must be one of ['lora', 'full']"),
    ("backend", "jax", "config key `finetune.backend`"),
    ("lora_dropout", 1.0, "config key `finetune.lora_dropout`: must be in [0, 1)"),
    ("target_modules", [], "config key `finetune.target_modules`"),
    ("max_steps", 0, "config key `finetune.max_steps`"),
    ("device", "tpu", "config key `finetune.device`"),
    ("precision", "fp16", "config key `finetune.precision`"),
    ("max_length", 4, "config key `finetune.max_length`"),
    ("save_every", 0, "config key `finetune.save_every`"),
    ("num_threads", 0, "config key `finetune.num_threads`: must be >= 1 or null, got 0"),
])
def test_bad_values_name_the_key(key, value, message):
    validate_finetune(FinetuneConfig())  # the defaults are valid
    with pytest.raises(ConfigError) as e:
        validate_finetune(FinetuneConfig(**{key: value}))
    assert message in str(e.value)


def test_base_model_must_be_a_loadable_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"`finetune.base_model`: not a folder"):
        validate_finetune(FinetuneConfig(base_model=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"`finetune.base_model`: .* has no config.json"):
        validate_finetune(FinetuneConfig(base_model=str(tmp_path / "empty")))
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"`finetune.base_model`: .* has no model weights"):
        validate_finetune(FinetuneConfig(base_model=str(tmp_path / "empty")))
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"not weights")
    from selfinstruct.training.base_model import load_model

    with pytest.raises(ConfigError, match=r"`finetune.base_model`: cannot load"):
        load_model(tmp_path / "empty")


def test_schema_rejects_wrong_types_and_unknown_keys():
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    schema = OmegaConf.structured(FinetuneConfig)
    assert schema.lora_r == 8 and list(schema.target_modules) == ["q_proj", "v_proj"]
    with pytest.raises(ValidationError):
        OmegaConf.merge(schema, {"batch_size": "four"})
    with pytest.raises(ConfigKeyError):
        OmegaConf.merge(schema, {"learning_rte": 1e-4})


def test_the_yaml_option_matches_the_schema_defaults():
    """conf/finetune/local.yaml types against the schema and repeats its defaults (one truth)."""
    import dataclasses

    from omegaconf import OmegaConf

    yaml = OmegaConf.load(REPO / "conf" / "finetune" / "local.yaml")
    assert list(yaml.pop("defaults")) == ["/finetune_schema@_here_"]
    merged = OmegaConf.merge(OmegaConf.structured(FinetuneConfig), yaml)
    assert OmegaConf.to_container(merged) == dataclasses.asdict(FinetuneConfig())
    validate_finetune(merged)


def test_importing_the_config_does_not_import_torch():
    code = "import sys, selfinstruct.training.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# --- the embedded model's one-time conversion ---------------------------------------------------

CONVERT_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    import selfinstruct.llm.llamacpp as llamacpp
    import selfinstruct.training.base_model as base_model

    cache = Path({cache!r})
    llamacpp.packaged_model_path = lambda cache_dir: cache_dir / "models" / "model.gguf"

    def slow_convert(gguf_path, out_dir):  # stands in for the minutes-long de-quantization
        with open(cache / "conversions.log", "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        out_dir.mkdir(parents=True)
        time.sleep(1.5)
        (out_dir / "config.json").write_text("{{}}")

    base_model._convert_gguf = slow_convert
    print(base_model.embedded_hf_model(cache))
""")


def test_two_processes_convert_the_embedded_model_once(tmp_path):
    """Two jobs start at once: one converts (under a lock, into a temporary folder renamed into
    place), the other waits and reuses the folder; a folder left by a killed conversion is removed."""
    from selfinstruct.training.base_model import EMBEDDED_HF_DIR

    cache = tmp_path / "cache"
    stale = cache / "models" / f".{EMBEDDED_HF_DIR}.tmp999999"
    stale.mkdir(parents=True)
    script = CONVERT_SCRIPT.format(repo=str(REPO), cache=str(cache))
    jobs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outputs = [job.communicate(timeout=120) for job in jobs]
    target = cache / "models" / EMBEDDED_HF_DIR
    for job, (out, err) in zip(jobs, outputs):
        assert job.returncode == 0, err
        assert out.strip().splitlines()[-1] == str(target)
    assert len((cache / "conversions.log").read_text().split()) == 1  # converted once
    assert (target / "config.json").is_file() and not stale.exists()
    assert not list(target.parent.glob(f".{EMBEDDED_HF_DIR}.tmp*"))


# --- the GGUF adapter in llama.cpp, on the embedded model --------------------------------------

def completion_logprob_llamacpp(llm, ids: list[int], n_prompt: int) -> float:
    """Sum of log p(token) over ids[n_prompt:] from llama.cpp's logits."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(sum(logp[t - 1, ids[t]] for t in range(n_prompt, len(ids))))


@pytest.mark.slow
def test_gguf_adapter_loads_in_llamacpp_and_moves_it_like_the_peft_model(tmp_path):
    """Train a LoRA adapter on the real embedded model to answer one odd prompt; llama.cpp with
    adapter.gguf then answers it, and the completion's log-probability rises by about as much in
    llama.cpp as in the HF PEFT model (the same adapter, the same scale)."""
    import torch
    from llama_cpp import Llama
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfinstruct.llm.cache import default_cache_dir
    from selfinstruct.llm.llamacpp import packaged_model_path
    from selfinstruct.training.base_model import embedded_hf_model
    from selfinstruct.training.data import encode_pair
    from selfinstruct.training.generate import TransformersAnswerer
    from selfinstruct.training.local import completion_loss_sum, finetune_local

    cache = default_cache_dir()  # shared with other tests and runs: the conversion happens once
    pair = {"prompt": "Task: Name the secret animal of the castle.\nOutput:",
            "completion": " purple giraffe<|endoftext|>"}
    out = tmp_path / "finetune"
    stats = finetune_local(FinetuneConfig(max_steps=8, learning_rate=5e-3, batch_size=1, lora_dropout=0.0,
                                          max_length=32, save_every=100, seed=0), [pair], out, cache)
    assert stats["finetune/adapter_gguf"] and stats["finetune/final_loss"] < stats["finetune/first_loss"]

    hf_dir = embedded_hf_model(cache)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    example, _ = encode_pair(tok, pair["prompt"], pair["completion"], 32)
    ids, n_prompt = example["input_ids"], example["labels"].count(-100)
    batch = {k: torch.tensor([v]) for k, v in example.items()}
    base_hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        hf_before = -float(completion_loss_sum(base_hf, batch["input_ids"], torch.ones_like(batch["input_ids"]),
                                               batch["labels"])[0])
        tuned_hf = PeftModel.from_pretrained(base_hf, out / "adapter").eval()
        hf_after = -float(completion_loss_sum(tuned_hf, batch["input_ids"], torch.ones_like(batch["input_ids"]),
                                              batch["labels"])[0])
        # A tenth of the adapter: the log-probability is far from saturated there, so a wrong
        # alpha / r scale in the GGUF file would show (measured: -7.9 in HF; at 0.2, -3.2).
        for name, param in tuned_hf.named_parameters():
            if "lora_B" in name:
                param.mul_(0.1)
        hf_tenth = -float(completion_loss_sum(tuned_hf, batch["input_ids"], torch.ones_like(batch["input_ids"]),
                                              batch["labels"])[0])

    gguf = str(packaged_model_path(cache))
    base_llm = Llama(model_path=gguf, n_ctx=128, logits_all=True, verbose=False, seed=0)
    cpp_before = completion_logprob_llamacpp(base_llm, ids, n_prompt)
    base_text = base_llm.create_completion(pair["prompt"], max_tokens=6, temperature=0)["choices"][0]["text"]
    base_llm.close()
    tuned_llm = Llama(model_path=gguf, lora_path=str(out / "adapter.gguf"), n_ctx=128, logits_all=True,
                      verbose=False, seed=0)
    cpp_after = completion_logprob_llamacpp(tuned_llm, ids, n_prompt)
    tuned_text = tuned_llm.create_completion(pair["prompt"], max_tokens=6, temperature=0)["choices"][0]["text"]
    tuned_llm.close()
    tenth_llm = Llama(model_path=gguf, lora_path=str(out / "adapter.gguf"), lora_scale=0.1, n_ctx=128,
                      logits_all=True, verbose=False, seed=0)
    cpp_tenth = completion_logprob_llamacpp(tenth_llm, ids, n_prompt)
    tenth_llm.close()

    # The base GGUF and its HF conversion agree (the same weights; llama.cpp quantizes activations).
    assert abs(cpp_before - hf_before) < 0.1 * abs(hf_before) + 0.5, (cpp_before, hf_before)
    # The adapter moves both the same way and by about as much.
    hf_gain, cpp_gain = hf_after - hf_before, cpp_after - cpp_before
    assert hf_gain > 5 and cpp_gain > 5, (hf_gain, cpp_gain)
    assert abs(cpp_gain - hf_gain) < 0.2 * hf_gain, (hf_gain, cpp_gain)
    assert hf_before + 5 < hf_tenth < hf_after - 2, (hf_before, hf_tenth, hf_after)
    assert abs(cpp_tenth - hf_tenth) < 1.0, (cpp_tenth, hf_tenth)
    # The greedy answer changes to the trained completion, in llama.cpp and in transformers.
    assert tuned_text.startswith(" purple giraffe") and not base_text.startswith(" purple giraffe")
    answer, = TransformersAnswerer(hf_dir, out / "adapter", device="cpu").answer([pair["prompt"]], max_new_tokens=6)
    assert answer.startswith(" purple giraffe")


def test_epoch_losses_average_whole_epochs_not_single_batches():
    from selfinstruct.training.local import epoch_losses

    log = [{"epoch": (i + 1) / 4, "loss": loss} for i, loss in enumerate([4, 2, 3, 3, 1, 9, 1, 1])]
    assert epoch_losses(log) == {"finetune/first_epoch_loss": 3.0, "finetune/last_epoch_loss": 3.0}
    three = log + [{"epoch": 2 + (i + 1) / 4, "loss": 0.5} for i in range(4)]
    assert epoch_losses(three)["finetune/last_epoch_loss"] == 0.5  # the last epoch only
    one = [{"epoch": (i + 1) / 4, "loss": loss} for i, loss in enumerate([4, 2, 1, 1])]
    assert epoch_losses(one) == {"finetune/first_epoch_loss": 3.0, "finetune/last_epoch_loss": 1.0}
    assert epoch_losses(one[:1]) == {}
