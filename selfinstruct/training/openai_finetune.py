"""`finetune.backend=openai`: the paper's route, the OpenAI fine-tuning API (paper §4: GPT-3,
2 epochs).

One call of `finetune_openai` writes the training file in the model's format, uploads it
(`files.create`, purpose "fine-tune"), creates the job (`fine_tuning.jobs.create`), polls it
(`fine_tuning.jobs.retrieve`, with step and loss from `fine_tuning.jobs.list_events` on a progress
bar) and returns the fine-tuned model id with the job's statistics.

Training file format (`format=auto`): prompt/completion JSONL for the completion-only base models
(`davinci-002`, `babbage-002`, also as the base of an `ft:` model), the chat "messages" format
(user = prompt, assistant = completion) for every other model. `format=completion|chat` overrides
the rule for models it does not know. In chat format the completion loses GPT-3's end-of-text
marker: a chat model ends its turn with its own.

The paper trained with prompt loss weight 0. The current API has no such knob; in chat format the
loss is on the assistant message only, which is the same thing.

Hyperparameters go in `method={"type": "supervised", ...}` (the top-level `hyperparameters` of
`jobs.create` is deprecated); unset batch size and learning-rate multiplier mean "auto".

Resume: the caller keeps a small JSON-able state dict and a `save_state(dict)` callback; the state
is saved after each step (file uploaded, job about to be created, job created), so a killed run
polls the SAME job on the next call, or reuses the uploaded file when the job was not created yet.
A job created just before a kill, whose id never reached the state, is found again by the tag
sent in its metadata, so no second job is started (the same lookup guards a create whose response
was lost). The state is tied to the file's content and the job settings: a change starts afresh.
A failed or cancelled job raises `OpenAIFinetuneError` and is dropped from the state, so the next
call starts a new job from the same file. `timeout_s` bounds how long one call waits; when it is
over, `OpenAIFinetuneTimeout` says so and the next call resumes polling.

Transient failures (429, 5xx, timeouts, dropped connections) are retried with exponential
backoff, jitter and the server's Retry-After. The API key is masked in every error and log line,
and errors are raised without the client's exception attached (its text may quote the key).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from selfinstruct.errors import ConfigError, RunError
from selfinstruct.llm.openai_backend import is_retryable, retry_after_s

log = logging.getLogger(__name__)

FORMATS = ("auto", "completion", "chat")
COMPLETION_MODELS = ("davinci-002", "babbage-002")  # the API's prompt/completion base models
END_OF_TEXT = "<|endoftext|>"  # prepare.end_token's default, GPT-3's end marker
MIN_EXAMPLES = 10  # the API refuses smaller training files
MAX_EPOCHS = 50  # the API's range for n_epochs is 1..50
MAX_SUFFIX = 64
TERMINAL_OK, TERMINAL_BAD = ("succeeded",), ("failed", "cancelled")
TAG_KEY = "selfinstruct_job"  # metadata key that finds a job whose id was never saved
STEP_RE = re.compile(r"step (\d+)(?:/(\d+))?\b.*?loss[=: ]+([0-9.eE+-]+)", re.IGNORECASE)


@dataclass
class OpenAIFinetuneConfig:
    model: str = "davinci-002"  # the paper fine-tuned GPT-3 davinci; e.g. gpt-4o-mini-2024-07-18
    n_epochs: int = 2  # paper: 2
    batch_size: Optional[int] = None  # null: "auto", the API chooses
    learning_rate_multiplier: Optional[float] = None  # null: "auto"
    suffix: Optional[str] = None  # up to 64 characters, part of the fine-tuned model's name
    format: str = "auto"  # auto | completion | chat (auto: see training_format)
    poll_interval_s: float = 30.0
    timeout_s: float = 86400.0  # how long one run waits for the job; a rerun resumes polling it


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key `finetune.openai.{key}`: {message}")


def validate(cfg: Any) -> None:
    """Value checks of an OpenAIFinetuneConfig (or the `finetune.openai` DictConfig node)."""
    _check(bool(cfg.model), "model",
           "name the model to fine-tune, e.g. davinci-002 or gpt-4o-mini-2024-07-18")
    _check(isinstance(cfg.n_epochs, int) and 1 <= cfg.n_epochs <= MAX_EPOCHS, "n_epochs",
           f"must be an integer in [1, {MAX_EPOCHS}], got {cfg.n_epochs}")
    _check(cfg.batch_size is None or cfg.batch_size >= 1, "batch_size",
           f"must be >= 1 or null (auto), got {cfg.batch_size}")
    _check(cfg.learning_rate_multiplier is None or cfg.learning_rate_multiplier > 0,
           "learning_rate_multiplier", f"must be > 0 or null (auto), got {cfg.learning_rate_multiplier}")
    _check(cfg.suffix is None or 1 <= len(cfg.suffix) <= MAX_SUFFIX, "suffix",
           f"must be 1 to {MAX_SUFFIX} characters or null, got {cfg.suffix!r}")
    _check(cfg.format in FORMATS, "format", f"must be one of {list(FORMATS)}, got {cfg.format!r}")
    _check(cfg.poll_interval_s > 0, "poll_interval_s", f"must be > 0, got {cfg.poll_interval_s}")
    _check(cfg.timeout_s > 0, "timeout_s", f"must be > 0, got {cfg.timeout_s}")


class OpenAIFinetuneError(RunError):
    """The job failed or was cancelled, or a request failed for good; one line, key masked."""


class OpenAIFinetuneTimeout(OpenAIFinetuneError):
    """`timeout_s` passed while the job was still going; the next call resumes polling it."""


@dataclass
class FinetuneResult:
    model_id: str  # the fine-tuned model, e.g. "ft:davinci-002:org::abc123"
    job_id: str
    file_id: str
    status: str
    trained_tokens: Optional[int]
    seconds: float  # the job's own time (created -> finished) when the API gives it, else ours
    final_loss: Optional[float]  # the last training loss in the job's events, if any
    steps: Optional[int]
    retries: int  # transient failures retried by this call

    def stats(self) -> dict:
        """Flat stats.json keys (`cost/finetune/*`, `finetune/*`); only the known ones."""
        values = {"cost/finetune/seconds": self.seconds, "cost/finetune/tokens": self.trained_tokens,
                  "cost/finetune/steps": self.steps, "cost/finetune/retries": self.retries,
                  "finetune/final_loss": self.final_loss}
        if self.trained_tokens and self.seconds:
            values["cost/finetune/tokens_per_s"] = self.trained_tokens / self.seconds
        return {k: v for k, v in values.items() if v is not None}


def training_format(model: str, format: str = "auto") -> str:
    """"completion" or "chat". Rule for auto: the base model's name (an `ft:` model's second
    field) is one of COMPLETION_MODELS -> completion; anything else -> chat."""
    if format != "auto":
        if format not in FORMATS:
            raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
        return format
    base = model.split(":")[1] if model.startswith("ft:") else model
    return "completion" if base in COMPLETION_MODELS else "chat"


def training_file(pairs: Sequence[Mapping[str, str]], fmt: str) -> bytes:
    """The JSONL training file for prompt/completion pairs in format `fmt`."""
    if len(pairs) < MIN_EXAMPLES:
        raise OpenAIFinetuneError(
            f"OpenAI fine-tuning needs at least {MIN_EXAMPLES} examples, got {len(pairs)}")
    lines = []
    for i, pair in enumerate(pairs):
        prompt, completion = pair.get("prompt"), pair.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise OpenAIFinetuneError(
                f"training pair {i} needs string `prompt` and `completion`, got {sorted(pair)}")
        if fmt == "completion":
            record = {"prompt": prompt, "completion": completion}
        else:
            answer = completion.removesuffix(END_OF_TEXT).strip()
            if not prompt.strip() or not answer:
                raise OpenAIFinetuneError(f"training pair {i} has an empty prompt or completion")
            record = {"messages": [{"role": "user", "content": prompt},
                                   {"role": "assistant", "content": answer}]}
        lines.append(json.dumps(record, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _hyperparameters(cfg: OpenAIFinetuneConfig) -> dict:
    hp: dict = {"n_epochs": cfg.n_epochs}
    if cfg.batch_size is not None:
        hp["batch_size"] = cfg.batch_size
    if cfg.learning_rate_multiplier is not None:
        hp["learning_rate_multiplier"] = cfg.learning_rate_multiplier
    return hp


def _digest(value: Any) -> str:
    data = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


class _Api:
    """The client and one place for retries, backoff and masking the key."""

    def __init__(self, api_key: Optional[str], base_url: Optional[str], max_retries: int,
                 request_timeout_s: float, backoff_base_s: float, backoff_max_s: float):
        from openai import OpenAI

        for name in ("httpx", "httpx2"):  # one INFO line per poll would flood run.log
            logging.getLogger(name).setLevel(logging.WARNING)
        self.key = api_key
        # max_retries=0: `call` retries (and counts) every transient failure itself.
        self.client = OpenAI(api_key=api_key or "not-needed", base_url=base_url,
                             timeout=request_timeout_s, max_retries=0)
        self.max_retries, self.base_s, self.max_s = max_retries, backoff_base_s, backoff_max_s
        self.retries = 0

    def scrub(self, text: str) -> str:
        text = " ".join(str(text).split())  # one line
        return text.replace(self.key, "***") if self.key else text

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        hint: Optional[float] = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
                delay = min(self.max_s, self.base_s * 2 ** (attempt - 1)) * (0.5 + random.random())
                time.sleep(min(self.max_s, max(delay, hint or 0.0)))
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - classified below
                error = self.scrub(f"{type(e).__name__}: {e}")[:500]
                retry = is_retryable(e) or isinstance(e, json.JSONDecodeError)
                if not retry or attempt == self.max_retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    # from None: the client's exception (whose text may quote the key) stays out of tracebacks
                    raise OpenAIFinetuneError(f"{what} failed{tries}: {error}") from None
                hint = retry_after_s(e)
                log.warning("%s: %s; retrying (%d/%d)", what, error, attempt + 1, self.max_retries)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing is no error worth reporting
            pass


def _latest_metrics(api: _Api, job_id: str) -> Optional[tuple[Optional[int], Optional[int], Optional[float]]]:
    """(step, total_steps, train_loss) of the newest metrics event, or None. Best effort: events
    are progress only, so a failure here never stops the poll."""
    try:
        events = api.client.fine_tuning.jobs.list_events(job_id, limit=50).data  # newest first
    except Exception as e:  # noqa: BLE001
        log.debug("events of %s: %s", job_id, api.scrub(str(e)))
        return None
    for event in events:
        data = event.data if isinstance(getattr(event, "data", None), dict) else {}
        if "train_loss" in data or "step" in data:
            loss = data.get("train_loss")
            return data.get("step"), data.get("total_steps"), None if loss is None else float(loss)
        match = STEP_RE.search(event.message or "")
        if match:  # older servers only say "Step 10/100: training loss=1.23"
            step, total, loss = match.groups()
            return int(step), int(total) if total else None, float(loss)
    return None


def finetune_openai(pairs: Sequence[Mapping[str, str]], cfg: OpenAIFinetuneConfig, *,
                    api_key: Optional[str], base_url: Optional[str] = None,
                    state: Optional[Mapping] = None,
                    save_state: Optional[Callable[[dict], None]] = None,
                    seed: Optional[int] = None, max_retries: int = 6, request_timeout_s: float = 120.0,
                    backoff_base_s: float = 0.5, backoff_max_s: float = 30.0,
                    progress: bool = True) -> FinetuneResult:
    """Fine-tune `cfg.model` on prompt/completion `pairs` through the OpenAI API (see module doc).
    `state`/`save_state`: what a previous call saved, and where to save progress (both optional)."""
    validate(cfg)
    fmt = training_format(cfg.model, cfg.format)
    content = training_file(pairs, fmt)
    file_sha = _digest(content)
    hp = _hyperparameters(cfg)
    spec = _digest({"model": cfg.model, "hp": hp, "suffix": cfg.suffix, "seed": seed, "file": file_sha})
    st = dict(state or {})

    def save() -> None:
        if save_state is not None:
            save_state(dict(st))

    if st.get("file_sha256") != file_sha:  # other data: nothing of the old state applies
        if st.get("job_id"):
            log.warning("the saved fine-tuning job %s was for other data; starting a new one", st["job_id"])
        st = {"failed_jobs": st.get("failed_jobs", [])}
    elif st.get("job_spec") != spec and (st.get("job_id") or st.get("job_tag")):
        log.warning("the saved fine-tuning job %s had other settings; starting a new one", st.get("job_id"))
        for key in ("job_id", "job_tag", "fine_tuned_model"):
            st.pop(key, None)

    api = _Api(api_key, base_url, max_retries, request_timeout_s, backoff_base_s, backoff_max_s)
    started = time.monotonic()
    try:
        jobs = api.client.fine_tuning.jobs

        # 1. The training file: reuse the uploaded one while the server still has it.
        if st.get("file_id") and not st.get("job_id"):
            try:
                api.client.files.retrieve(st["file_id"])
            except Exception as e:  # noqa: BLE001 - gone (404, expired) or unreachable: upload again
                log.warning("uploaded file %s not usable (%s); uploading again",
                            st["file_id"], api.scrub(str(e))[:200])
                st.pop("file_id")
        if not st.get("file_id"):
            uploaded = api.call("upload training file", lambda: api.client.files.create(
                file=("selfinstruct_train.jsonl", content, "application/jsonl"), purpose="fine-tune"))
            st.update(file_id=uploaded.id, file_sha256=file_sha, format=fmt)
            log.info("uploaded %d examples (%s format, %d bytes) as %s",
                     len(pairs), fmt, len(content), uploaded.id)
            save()

        # 2. The job: a tag saved before the create finds it again if its id never reaches the state.
        if not st.get("job_id"):
            resumed_tag = bool(st.get("job_tag"))
            if not resumed_tag:
                st.update(job_tag=uuid.uuid4().hex, job_spec=spec)
                save()
            tag, maybe_created = st["job_tag"], resumed_tag

            def find_or_create():
                nonlocal maybe_created
                if maybe_created:  # a kill or a lost response may have left a job behind
                    found = jobs.list(metadata={TAG_KEY: tag}, limit=1).data
                    if found:
                        return found[0]
                maybe_created = True
                optional = {k: v for k, v in (("suffix", cfg.suffix), ("seed", seed)) if v is not None}
                return jobs.create(
                    model=cfg.model, training_file=st["file_id"], metadata={TAG_KEY: tag},
                    method={"type": "supervised", "supervised": {"hyperparameters": hp}}, **optional)

            job = api.call("create fine-tuning job", find_or_create)
            st["job_id"] = job.id
            log.info("fine-tuning job %s: %s on %s, %s", job.id, cfg.model, st["file_id"], hp)
            save()

        # 3. Poll until the job ends, or until this call's time is up (the next call resumes).
        job_id = st["job_id"]
        from tqdm import tqdm

        bar = tqdm(desc=f"finetune {job_id}", unit="step", disable=not progress)
        step = total = loss = None
        try:
            while True:
                job = api.call(f"poll fine-tuning job {job_id}", lambda: jobs.retrieve(job_id))
                metrics = _latest_metrics(api, job_id)
                if metrics:
                    step, total, loss = (new if new is not None else old
                                         for new, old in zip(metrics, (step, total, loss)))
                    if total and bar.total != total:
                        bar.total = total
                shown = job.status + (f" loss={loss:.4f}" if loss is not None else "")
                bar.set_postfix_str(shown, refresh=False)
                if step is not None and step > bar.n:
                    bar.update(step - bar.n)  # also redraws the line
                else:
                    bar.refresh()
                if job.status in TERMINAL_OK or job.status in TERMINAL_BAD:
                    break
                if time.monotonic() - started > cfg.timeout_s:
                    raise OpenAIFinetuneTimeout(
                        f"fine-tuning job {job_id} still {job.status} after {cfg.timeout_s:g} s "
                        "(finetune.openai.timeout_s); run again to resume polling it")
                time.sleep(cfg.poll_interval_s)
        finally:
            bar.close()

        if job.status in TERMINAL_BAD:
            # Dropped from the state: the next call starts a new job (from the same uploaded file).
            st.setdefault("failed_jobs", []).append(job_id)
            st.pop("job_id"), st.pop("job_tag", None)
            save()
            error = getattr(job, "error", None)
            reason = getattr(error, "message", None) or "no error message from the API"
            code = getattr(error, "code", None)
            raise OpenAIFinetuneError(api.scrub(
                f"fine-tuning job {job_id} {job.status}: {reason}" + (f" ({code})" if code else "")))
        if not job.fine_tuned_model:
            raise OpenAIFinetuneError(f"fine-tuning job {job_id} succeeded but names no fine-tuned model")

        st["fine_tuned_model"] = job.fine_tuned_model
        save()
        seconds = (job.finished_at - job.created_at if job.finished_at and job.created_at
                   else time.monotonic() - started)
        log.info("fine-tuning job %s succeeded: %s (%s tokens)",
                 job_id, job.fine_tuned_model, job.trained_tokens)
        return FinetuneResult(model_id=job.fine_tuned_model, job_id=job_id, file_id=st["file_id"],
                              status=job.status, trained_tokens=job.trained_tokens, seconds=float(seconds),
                              final_loss=loss, steps=step, retries=api.retries)
    finally:
        api.close()
