"""A local stub of the OpenAI files and fine-tuning endpoints for tests (binds 127.0.0.1 only,
stdlib only).

    POST /v1/files                          multipart upload (purpose, file); stores the content
    GET  /v1/files/{id}                     the file object (404 for unknown ids)
    POST /v1/fine_tuning/jobs               checks training_file, model and hyperparameters
                                            (`method.supervised.hyperparameters` or the legacy
                                            top-level `hyperparameters`)
    GET  /v1/fine_tuning/jobs               list, newest first; filter `metadata[k]=v`
    GET  /v1/fine_tuning/jobs/{id}          each retrieve advances the job: validating_files ->
                                            queued -> running ... -> succeeded after `polls`
                                            retrieves (or failed / cancelled, see `outcome`)
    GET  /v1/fine_tuning/jobs/{id}/events   newest first, `limit`; metrics events while running

A job whose file does not match its model's format (prompt/completion for davinci-002 and
babbage-002, "messages" for chat models) fails at validation, as the real service does.

Faults: `inject(route, *faults)` makes the next arrivals at a route fail, one fault each: an HTTP
status (429, 500, 503, or 401, which quotes the key as a real server does), "drop" (close the
connection without an answer) or "drop_after" (do the work, then drop: a lost response). Routes:
files.create, files.retrieve, jobs.create, jobs.list, jobs.retrieve, jobs.events.
Counters: `files_created`, `jobs_created`, `calls[route]`; `job_requests` holds each create body.

    with OpenAIFinetuneStub(polls=3) as stub:
        ... base_url=stub.base_url ...
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
import time
from collections import Counter, defaultdict, deque
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from tests.local_server import JSONHandler, LocalServer

COMPLETION_MODELS = {"davinci-002", "babbage-002"}
CHAT_MODELS = {"gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", "gpt-4.1-mini-2025-04-14",
               "gpt-4.1-nano-2025-04-14", "gpt-3.5-turbo-0125"}
ROUTES = ("files.create", "files.retrieve", "jobs.create", "jobs.list", "jobs.retrieve", "jobs.events")


class StubError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": "invalid_request_error",
                                                    "param": param, "code": code}}


class OpenAIFinetuneStub(LocalServer):
    poll_interval = 0.02

    def __init__(self, *, polls: int = 3, outcome: str = "succeeded",
                 error_message: str = "Training failed: the training loss diverged.",
                 steps: int = 6):
        """polls: retrieves until the job ends; outcome: succeeded | failed | cancelled."""
        assert outcome in ("succeeded", "failed", "cancelled")
        self.polls, self.outcome, self.error_message, self.steps = polls, outcome, error_message, steps
        self.lock = threading.Lock()
        self.files: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.job_requests: list[dict] = []
        self.calls: Counter = Counter()
        self.faults: dict[str, deque] = defaultdict(deque)
        self.auth_headers: set[str] = set()
        super().__init__(_handler_for(self))

    # --- test API ---------------------------------------------------------------------------
    @property
    def files_created(self) -> int:
        return len(self.files)

    @property
    def jobs_created(self) -> int:
        return len(self.jobs)

    def inject(self, route: str, *faults) -> None:
        assert route in ROUTES, route
        with self.lock:
            self.faults[route].extend(faults)

    def file_content(self, file_id: str) -> bytes:
        return self.files[file_id]["content"]

    # --- endpoints (called under self.lock) ---------------------------------------------------
    def create_file(self, purpose: str, filename: str, content: bytes) -> dict:
        if purpose != "fine-tune":
            raise StubError(400, f"purpose must be fine-tune here, got {purpose!r}", "purpose")
        file_id = f"file-{len(self.files) + 1:04d}"
        self.files[file_id] = {"content": content, "object": {
            "id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
            "filename": filename, "purpose": purpose, "status": "processed"}}
        return self.files[file_id]["object"]

    def get_file(self, file_id: str) -> dict:
        if file_id not in self.files:
            raise StubError(404, f"No such File object: {file_id}", "id")
        return self.files[file_id]["object"]

    def create_job(self, body: dict) -> dict:
        self.job_requests.append(body)
        model, file_id = body.get("model"), body.get("training_file")
        if model not in COMPLETION_MODELS | CHAT_MODELS:
            raise StubError(404, f"Model {model} does not exist or is not available for fine-tuning",
                            "model", "model_not_available")
        if file_id not in self.files:
            raise StubError(400, f"invalid training_file: {file_id}", "training_file",
                            "invalid_training_file")
        hp = (body.get("method") or {}).get("supervised", {}).get("hyperparameters") \
            or body.get("hyperparameters") or {}
        n_epochs = hp.get("n_epochs", "auto")
        if n_epochs != "auto" and not (isinstance(n_epochs, int) and 1 <= n_epochs <= 50):
            raise StubError(400, f"n_epochs must be in [1, 50], got {n_epochs}", "hyperparameters.n_epochs")
        for key in ("batch_size", "learning_rate_multiplier"):
            value = hp.get(key, "auto")
            if value != "auto" and not (isinstance(value, (int, float)) and value > 0):
                raise StubError(400, f"{key} must be > 0, got {value}", f"hyperparameters.{key}")
        job_id = f"ftjob-{len(self.jobs) + 1:04d}"
        now = int(time.time())
        job = {"id": job_id, "object": "fine_tuning.job", "created_at": now, "model": model,
               "training_file": file_id, "validation_file": None, "status": "validating_files",
               "fine_tuned_model": None, "finished_at": None, "trained_tokens": None, "error": None,
               "hyperparameters": {"n_epochs": n_epochs, "batch_size": hp.get("batch_size", "auto"),
                                   "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto")},
               "organization_id": "org-stub", "result_files": [], "seed": body.get("seed") or 0,
               "suffix": body.get("suffix"), "metadata": body.get("metadata"), "method": body.get("method")}
        self.jobs[job_id] = {"job": job, "retrieves": 0, "events": []}
        self._event(job_id, "Validating training file: " + file_id)
        return job

    def list_jobs(self, query: dict) -> dict:
        wanted = {m.group(1): v[0] for k, v in query.items() if (m := re.fullmatch(r"metadata\[(.+)\]", k))}
        jobs = [j["job"] for j in reversed(self.jobs.values())
                if all((j["job"]["metadata"] or {}).get(k) == v for k, v in wanted.items())]
        limit = int(query.get("limit", ["20"])[0])
        return {"object": "list", "data": jobs[:limit], "has_more": len(jobs) > limit}

    def retrieve_job(self, job_id: str) -> dict:
        entry = self._entry(job_id)
        job = entry["job"]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        entry["retrieves"] += 1
        n = entry["retrieves"]
        if n == 1:
            job["status"] = "queued"
        elif n < self.polls:
            if job["status"] != "running":
                bad = self._format_error(job)
                if bad:
                    return self._finish(job_id, "failed", bad, "invalid_training_file")
                job["status"] = "running"
                self._event(job_id, "Fine-tuning job started")
            step = min(self.steps, round(self.steps * (n - 1) / max(1, self.polls - 2)))
            loss = round(2.0 / (1 + step), 4)
            self._event(job_id, f"Step {step}/{self.steps}: training loss={loss}", "metrics",
                        {"step": step, "total_steps": self.steps, "train_loss": loss})
        else:
            bad = self._format_error(job)
            if bad:
                return self._finish(job_id, "failed", bad, "invalid_training_file")
            if self.outcome != "succeeded":
                failed = self.outcome == "failed"
                return self._finish(job_id, self.outcome, self.error_message if failed else None,
                                    "training_failed" if failed else None)
            self._event(job_id, f"Step {self.steps}/{self.steps}: training loss=0.25", "metrics",
                        {"step": self.steps, "total_steps": self.steps, "train_loss": 0.25})
            tokens = self._tokens(job["training_file"])
            n_epochs = job["hyperparameters"]["n_epochs"]
            job.update(trained_tokens=tokens * (n_epochs if isinstance(n_epochs, int) else 1),
                       fine_tuned_model=f"ft:{job['model']}:org::{job_id.removeprefix('ftjob-')}")
            self._finish(job_id, "succeeded")
            self._event(job_id, "New fine-tuned model created")
        return job

    def job_events(self, job_id: str, query: dict) -> dict:
        events = list(reversed(self._entry(job_id)["events"]))
        limit = int(query.get("limit", ["20"])[0])
        return {"object": "list", "data": events[:limit], "has_more": len(events) > limit}

    # --- helpers ---------------------------------------------------------------------------
    def _entry(self, job_id: str) -> dict:
        if job_id not in self.jobs:
            raise StubError(404, f"Could not find fine-tune job: {job_id}", "fine_tune_id")
        return self.jobs[job_id]

    def _event(self, job_id: str, message: str, type: str = "message", data: Optional[dict] = None) -> None:
        events = self.jobs[job_id]["events"]
        events.append({"object": "fine_tuning.job.event", "id": f"ftevent-{job_id}-{len(events)}",
                       "created_at": int(time.time()), "level": "info", "message": message,
                       "type": type, "data": data or {}})

    def _finish(self, job_id: str, status: str, message: Optional[str] = None,
                code: Optional[str] = None) -> dict:
        job = self.jobs[job_id]["job"]
        job.update(status=status, finished_at=job["created_at"] + 42)  # a fixed, known duration
        if message:
            job["error"] = {"code": code, "message": message, "param": None}
        self._event(job_id, f"The job has {status}" + (f": {message}" if message else ""))
        return job

    def _tokens(self, file_id: str) -> int:
        """Whitespace-separated words of the file's texts: the stub's token count per epoch."""
        total = 0
        for line in self.files[file_id]["content"].decode().splitlines():
            record = json.loads(line)
            texts = [m["content"] for m in record["messages"]] if "messages" in record \
                else [record["prompt"], record["completion"]]
            total += sum(len(t.split()) for t in texts)
        return total

    def _format_error(self, job: dict) -> Optional[str]:
        """Why the file does not suit the model's format (None: it does)."""
        chat = job["model"] not in COMPLETION_MODELS
        for i, line in enumerate(self.files[job["training_file"]]["content"].decode().splitlines()):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return f"Invalid file format: line {i + 1} is not JSON"
            if chat and not (isinstance(record.get("messages"), list) and record["messages"]):
                return f"Invalid file format: line {i + 1} has no messages (chat model {job['model']})"
            if not chat and not {"prompt", "completion"} <= set(record):
                return f"Invalid file format: line {i + 1} needs prompt and completion ({job['model']})"
        return None


def _parse_multipart(content_type: str, body: bytes) -> dict:
    """{field name: (filename or None, bytes)} of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[name] = (part.get_filename(), part.get_payload(decode=True))
    return fields


def _handler_for(stub: OpenAIFinetuneStub) -> type:
    class Handler(JSONHandler):
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

        def send(self, status: int, payload: dict, headers: Optional[dict] = None) -> None:
            super().send(status, json.dumps(payload).encode(), headers)

        def route(self) -> tuple[str, list[str]]:
            path = urlsplit(self.path).path.rstrip("/")
            patterns = [("POST", r"/v1/files", "files.create"),
                        ("GET", r"/v1/files/([^/]+)", "files.retrieve"),
                        ("POST", r"/v1/fine_tuning/jobs", "jobs.create"),
                        ("GET", r"/v1/fine_tuning/jobs", "jobs.list"),
                        ("GET", r"/v1/fine_tuning/jobs/([^/]+)", "jobs.retrieve"),
                        ("GET", r"/v1/fine_tuning/jobs/([^/]+)/events", "jobs.events")]
            for method, pattern, name in patterns:
                match = re.fullmatch(pattern, path)
                if method == self.command and match:
                    return name, list(match.groups())
            return "", []

        def handle_request(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            name, args = self.route()
            if not name:
                self.send(404, {"error": {"message": f"unknown route {self.command} {self.path}"}})
                return
            auth = self.headers.get("Authorization", "")
            with stub.lock:
                stub.calls[name] += 1
                stub.auth_headers.add(auth)
                fault = stub.faults[name].popleft() if stub.faults[name] else None
            if fault == "drop":
                self.close_connection = True
                return
            if isinstance(fault, int):
                self.send_fault(fault, auth)
                return
            query = parse_qs(urlsplit(self.path).query)
            try:
                with stub.lock:
                    if name == "files.create":
                        fields = _parse_multipart(self.headers.get("Content-Type", ""), body)
                        filename, content = fields["file"]
                        result = stub.create_file(fields["purpose"][1].decode(), filename, content)
                    elif name == "files.retrieve":
                        result = stub.get_file(args[0])
                    elif name == "jobs.create":
                        result = stub.create_job(json.loads(body))
                    elif name == "jobs.list":
                        result = stub.list_jobs(query)
                    elif name == "jobs.retrieve":
                        result = stub.retrieve_job(args[0])
                    else:
                        result = stub.job_events(args[0], query)
            except StubError as e:
                self.send(e.status, e.body)
                return
            if fault == "drop_after":  # the work is done, the answer is lost
                self.close_connection = True
                return
            self.send(200, result)

        def send_fault(self, status: int, auth: str) -> None:
            key = auth.removeprefix("Bearer ")
            if status == 401:  # as the real server: it quotes the key it was given
                self.send(401, {"error": {"message": f"Incorrect API key provided: {key}.",
                                          "type": "invalid_request_error", "code": "invalid_api_key"}})
            elif status == 429:
                self.send(429, {"error": {"message": "Rate limit reached", "type": "requests"}},
                          {"retry-after-ms": "10"})
            else:
                self.send(status, {"error": {"message": f"The server had an error (request with key {key})",
                                             "type": "server_error"}})

        do_GET = do_POST = handle_request

    return Handler
