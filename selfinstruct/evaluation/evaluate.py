"""The evaluate stage (DESIGN.md step 10): the base and the tuned model answer held-out tasks with the
same prompt, and every answer is scored: ROUGE-L against the reference (the paper's SuperNI metric,
computed with the project's exact ROUGE-L), exact match for classification tasks, and with
evaluate.judge=true a judge model's rating on the paper's four levels and a tuned-vs-base
comparison asked in both orders. With evaluate.predictions=FILE it only scores existing answers.

Answers and judgements are appended to eval_answers.jsonl / eval_judge.jsonl and committed batch by
batch, so a killed evaluation resumes where it stopped; eval.jsonl (one record per task: the task,
both answers, their scores) and the eval/* statistics are rebuilt from them at the end.

Which model is "tuned": the finetune stage's result in this run dir (llama.cpp with its
adapter.gguf for a LoRA of a GGUF model, transformers for a full fine-tune, the fine-tuned model id
on OpenAI), or evaluate.tuned_model (an OpenAI ft: id, or a served adapter's name, as vLLM serves
LoRA adapters with --enable-lora).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from selfinstruct.errors import RunError
from selfinstruct.files import file_identity
from selfinstruct.evaluation.answering import answer_prompt, answer_stop, clean_answer
from selfinstruct.evaluation.eval_sets import EvalTask, load_eval_set
from selfinstruct.evaluation.judge import (pairwise_outcome, pairwise_prompt, parse_pairwise, parse_rating,
                                           rating_prompt, rating_shares, win_rate)
from selfinstruct.evaluation.predictions import load_predictions
from selfinstruct.evaluation.scoring import aggregate, score
from selfinstruct.llm import LLM, Request, Sampling, make_llm
from selfinstruct.llm.loop import run_items

log = logging.getLogger(__name__)

MODELS = ("base", "tuned")


def run_evaluate(ctx) -> None:
    e, run = ctx.cfg.evaluate, ctx.run
    if e.predictions is not None:
        return score_predictions(ctx)
    tasks = load_eval_set(e.path)[: e.limit]
    end_token = ctx.cfg.prepare.end_token
    answers: dict[str, dict[str, str]] = {name: {} for name in MODELS}
    versions = {name: model_version(ctx, name) for name in MODELS if e[name]}
    for name in versions:
        llm = base_llm(ctx) if name == "base" else tuned_llm(ctx)
        answer_tasks(ctx, llm, name, tasks, versions[name])
    for r in run.records(run.eval_answers):
        if versions.get(r["model"]) == r.get("version"):  # not the answers of a model trained over since
            answers[r["model"]][r["id"]] = clean_answer(r["raw"], end_token)
    judgements = judge(ctx, tasks, answers) if e.judge else {}

    records, scores = [], {name: [] for name in MODELS}
    for task in tasks:
        record = {**task.to_record(), "reference": task.reference}
        for name in MODELS:
            if task.id in answers[name]:
                s = score(answers[name][task.id], task)
                scores[name].append(s)
                record.update({f"{name}_answer": answers[name][task.id], f"{name}_rougeL": s["rougeL"],
                               f"{name}_exact_match": s["exact_match"]})
        record.update(judgements.get(task.id, {}))
        records.append(record)
    stats = eval_stats(scores, judgements, len(tasks))
    run.replace_jsonl(run.eval, records, "evaluate")
    run.save_stats("evaluate", stats, inputs=[run.eval_answers, run.eval_judge])
    if "eval/delta/rougeL" in stats:
        log.info("evaluate: ROUGE-L base %.4f, tuned %.4f (delta %+.4f) on %d tasks", stats["eval/base/rougeL"],
                 stats["eval/tuned/rougeL"], stats["eval/delta/rougeL"], len(tasks))


def model_version(ctx, name: str) -> str:
    """Which model gave an answer: answers of another version (a tuned model trained again in this
    run dir, another base model) are asked again, never mixed in."""
    cfg = ctx.cfg
    if name == "base":
        return f"{cfg.llm.backend}:{cfg.llm.model}:{cfg.llm.get('model_path')}:{cfg.finetune.base_model}"
    if cfg.evaluate.tuned_model is not None:
        return f"named:{cfg.evaluate.tuned_model}@{cfg.evaluate.tuned_base_url}"
    result = ctx.checkpoint.get("finetune_result") or {}
    if result.get("backend") == "openai":
        return f"openai:{result.get('model_id')}"

    # a retrained model rewrites its train log
    return f"local:{result.get('method')}:{file_identity(str(ctx.run.finetune_dir / 'train_log.jsonl'))}"


def digest(*texts: str) -> str:
    return hashlib.sha1("\x00".join(texts).encode()).hexdigest()[:16]


def answer_tasks(ctx, llm: LLM, name: str, tasks: list[EvalTask], version: str) -> None:
    """The model's answers to the tasks it has not answered yet in this run dir."""
    run = ctx.run
    run.checkpoint.restore("evaluate", [run.eval_answers])
    done = {(r["model"], r["id"]) for r in run.records(run.eval_answers) if r.get("version") == version}
    todo = [t for t in tasks if (name, t.id) not in done]
    sampling = Sampling.from_config(ctx.cfg.sampling.evaluate)
    sampling.stop = list(sampling.stop) + answer_stop(ctx.cfg.prepare.end_token)

    def request(task: EvalTask) -> Request:
        return Request(f"evaluate/{name}/{task.id}", answer_prompt(task.instruction, task.input), chat=ctx.style.chat)

    def record(task: EvalTask, completion) -> dict:
        return {"model": name, "id": task.id, "raw": completion.text, "finish_reason": completion.finish_reason,
                "version": version}

    run_items(llm, "evaluate", sampling, todo, request, record, path=run.eval_answers,
              checkpoint=run.checkpoint, window=llm_window(ctx, llm), total=len(tasks), desc=f"evaluate {name}")


def llm_window(ctx, llm: LLM) -> int:
    return getattr(llm, "concurrency", None) or ctx.cfg.llm.concurrency


def base_llm(ctx) -> LLM:
    """The base model: the run's llm, or the HF folder that finetune.base_model fine-tuned."""
    if ctx.cfg.finetune.backend == "local" and ctx.cfg.finetune.base_model is not None:
        return ctx.add_llm(transformers_llm(ctx, hf_base_model(ctx), None))
    return ctx.llm


def hf_base_model(ctx) -> Path:
    from selfinstruct.llm.cache import cache_dir_for
    from selfinstruct.training.base_model import resolve_base_model

    return resolve_base_model(ctx.cfg.finetune.base_model, cache_dir_for(ctx.cfg.llm))


def transformers_llm(ctx, model_dir: Path, adapter_dir: Optional[Path]) -> LLM:
    from selfinstruct.training.generate import TransformersLLM

    return TransformersLLM(model=f"transformers:{model_dir}", model_dir=str(model_dir),
                           adapter_dir=str(adapter_dir) if adapter_dir else None,
                           device=ctx.cfg.finetune.device, concurrency=ctx.cfg.finetune.batch_size)


def tuned_llm(ctx) -> LLM:
    """The tuned model as a backend of its own (its usage counts under cost/evaluate)."""
    cfg, e = ctx.cfg, ctx.cfg.evaluate
    node = OmegaConf.create(OmegaConf.to_container(cfg.llm))  # a plain copy: keys may be set below
    result = ctx.checkpoint.get("finetune_result")
    if e.tuned_model is not None:
        node.model = e.tuned_model
        if e.tuned_base_url is not None:
            node.base_url = e.tuned_base_url
    elif result is None:
        raise RunError("evaluate: there is no tuned model in this run dir: run the finetune stage first "
                       "(stages=[finetune,evaluate]), name one with evaluate.tuned_model=..., or set "
                       "evaluate.tuned=false to answer with the base model only")
    elif result["backend"] == "openai":
        if cfg.llm.backend != "openai":
            raise RunError(f"evaluate: the tuned model {result['model_id']} lives on the OpenAI API: "
                           "evaluate with llm=openai")
        node.model = result["model_id"]
    elif result.get("adapter_gguf") and cfg.llm.backend == "llamacpp" and cfg.finetune.base_model is None:
        node.lora_path = result["adapter_gguf"]  # the embedded GGUF with the LoRA: llama.cpp, batched
    else:  # a full fine-tune, or an HF base model of the user's: transformers answers
        from selfinstruct.training.generate import model_dir_for

        model_dir, adapter_dir = model_dir_for(Path(result["dir"]), hf_base_model(ctx))
        return ctx.add_llm(transformers_llm(ctx, model_dir, adapter_dir))
    return ctx.add_llm(make_llm(cfg, node))


# --- the judge -----------------------------------------------------------------------------------

def judge(ctx, tasks: list[EvalTask], answers: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Per task: the judge's rating of each answer and the pairwise outcome (tuned vs base)."""
    cfg, run = ctx.cfg, ctx.run
    llm = ctx.llm if cfg.evaluate.judge_llm is None else ctx.add_llm(make_llm(cfg, cfg.evaluate.judge_llm))
    chat = bool(cfg.evaluate.judge_llm.get("endpoint") == "chat") if cfg.evaluate.judge_llm is not None \
        else ctx.style.chat
    items = []  # (kind, task): kind is rate/base, rate/tuned, pair/tuned_first, pair/base_first
    for task in tasks:
        have = [m for m in MODELS if task.id in answers[m]]
        items += [(f"rate/{m}", task) for m in have]
        if len(have) == 2:
            items += [("pair/tuned_first", task), ("pair/base_first", task)]
    def judged(kind: str, task_id: str) -> str:  # the answers a judgement is about
        models = [kind[5:]] if kind.startswith("rate/") else ["tuned", "base"]
        return digest(*(answers[m][task_id] for m in models))

    wanted = {(kind, t.id) for kind, t in items}

    def current(r: dict) -> bool:  # a judgement of the answers there are now
        return (r["kind"], r["id"]) in wanted and r.get("answers") == judged(r["kind"], r["id"])

    run.checkpoint.restore("evaluate_judge", [run.eval_judge])
    done = {(r["kind"], r["id"]) for r in run.records(run.eval_judge) if current(r)}
    todo = [(kind, t) for kind, t in items if (kind, t.id) not in done]

    def request(item) -> Request:
        kind, task = item
        if kind.startswith("rate/"):
            prompt = rating_prompt(task.instruction, task.input, answers[kind[5:]][task.id], task.reference)
        else:
            first, second = ("tuned", "base") if kind == "pair/tuned_first" else ("base", "tuned")
            prompt = pairwise_prompt(task.instruction, task.input, answers[first][task.id],
                                     answers[second][task.id], task.reference)
        return Request(f"evaluate_judge/{kind}/{task.id}", prompt, chat=chat)

    def record(item, completion) -> dict:
        return {"kind": item[0], "id": item[1].id, "raw": completion.text, "answers": judged(item[0], item[1].id)}

    run_items(llm, "evaluate_judge", Sampling.from_config(cfg.sampling.judge), todo, request, record,
              path=run.eval_judge, checkpoint=run.checkpoint, window=llm_window(ctx, llm), total=len(items),
              desc="evaluate judge")
    raw = {(r["kind"], r["id"]): r["raw"] for r in run.records(run.eval_judge) if current(r)}
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        row: dict[str, Any] = {}
        for m in MODELS:
            if (f"rate/{m}", task.id) in raw:
                row[f"{m}_rating"] = parse_rating(raw[(f"rate/{m}", task.id)])
        if ("pair/tuned_first", task.id) in raw and ("pair/base_first", task.id) in raw:
            row["pairwise"] = pairwise_outcome(parse_pairwise(raw[("pair/tuned_first", task.id)]),
                                               parse_pairwise(raw[("pair/base_first", task.id)]))
        out[task.id] = row
    return out


# --- statistics ----------------------------------------------------------------------------------

def eval_stats(scores: dict[str, list[dict]], judgements: dict[str, dict], num_tasks: int) -> dict[str, Any]:
    stats: dict[str, Any] = {"eval/num_tasks": num_tasks}
    for name in MODELS:
        if scores[name]:
            agg = aggregate(scores[name])
            stats[f"eval/{name}/rougeL"] = agg["rougeL"]
            if agg["exact_match"] is not None:
                stats[f"eval/{name}/exact_match"] = agg["exact_match"]
            stats[f"eval/{name}/num_answers"] = agg["num_tasks"]
    if scores["base"] and scores["tuned"]:
        stats["eval/delta/rougeL"] = stats["eval/tuned/rougeL"] - stats["eval/base/rougeL"]
        if "eval/base/exact_match" in stats and "eval/tuned/exact_match" in stats:
            stats["eval/delta/exact_match"] = stats["eval/tuned/exact_match"] - stats["eval/base/exact_match"]
    if judgements:
        for name in MODELS:
            ratings = [row.get(f"{name}_rating") for row in judgements.values() if f"{name}_rating" in row]
            if ratings:
                for key, value in rating_shares(ratings).items():
                    if value is not None:
                        stats[f"eval/{name}/{key}"] = value
        rate = win_rate(row.get("pairwise") for row in judgements.values() if "pairwise" in row)
        if rate is not None:
            stats["eval/win_rate"] = rate
    return stats


def score_predictions(ctx) -> None:
    """stages=[evaluate] evaluate.predictions=FILE: the answers are in the file; no model."""
    run = ctx.run
    predictions = load_predictions(ctx.cfg.evaluate.predictions)[: ctx.cfg.evaluate.limit]
    records, scores = [], []
    for p in predictions:
        s = score(p.answer, p.task)
        scores.append(s)
        records.append({**p.task.to_record(), "answer": p.answer, "rougeL": s["rougeL"],
                        "exact_match": s["exact_match"]})
    agg = aggregate(scores)
    stats = {"eval/num_tasks": len(records), "eval/predictions/rougeL": agg["rougeL"]}
    if agg["exact_match"] is not None:
        stats["eval/predictions/exact_match"] = agg["exact_match"]
    run.replace_jsonl(run.eval, records, "evaluate")
    run.save_stats("evaluate", stats)
    log.info("evaluate: %d predictions from %s, mean ROUGE-L %.4f", len(records),
             ctx.cfg.evaluate.predictions, agg["rougeL"])
