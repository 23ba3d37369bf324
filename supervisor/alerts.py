"""Alerts: tell operators about the supervisor's events without their watching a screen.

Each event the daemon writes (a finding, an intervention, a run paused for a person...) whose
severity the policy's `[alerts]` section selects is posted to a webhook (JSON that Slack,
Feishu/Lark or DingTalk accept, or a plain object) and/or given to a local command
(`notify-send`, `mail`...). Delivery runs on its own thread from a bounded queue: the daemon's
tick only enqueues, so a slow or dead endpoint never delays a decision. Failures are logged and
retried with exponential backoff; past the retries the alert is dropped (and logged). A rate
limit caps alerts per minute; what it holds back is counted in the next alert sent.
"""
from __future__ import annotations

import json
import logging
import queue
import os
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger("trainwarden.supervisor")
QUEUE_SIZE = 1000


class AlertSettings(BaseModel):
    """The policy's `[alerts]` section. Nothing is sent unless a webhook or a command is set."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    webhook: str | None = None
    """URL that receives a JSON POST per alert (http:// or https://)."""
    format: Literal["slack", "feishu", "dingtalk", "json"] = "slack"
    """Body of the POST: Slack `{"text": ...}`, Feishu/Lark and DingTalk text messages, or `json`:
    the alert's fields (run, path, kind, severity, step, message, time) plus `text`."""
    command: str | None = None
    """Local command run per alert, split like a shell line but run without a shell; `{run}`,
    `{path}`, `{kind}`, `{severity}`, `{step}`, `{message}` and `{text}` in it are replaced,
    e.g. `notify-send trainwarden "{text}"`."""
    severities: list[Literal["info", "warning", "error"]] = Field(default_factory=lambda: ["warning", "error"])
    """Event severities that are sent (findings and interventions are warnings; a run paused for
    a person is an error; `cured` is info)."""
    max_per_minute: int = Field(20, ge=1)
    """At most this many alerts a minute; the rest are counted and reported with the next one."""
    timeout_s: float = Field(10.0, gt=0, le=120)
    """Seconds one delivery may take."""
    retries: int = Field(4, ge=0, le=20)
    """Further tries after a failed delivery (network error, HTTP 5xx or 429, command failure)."""
    backoff_s: float = Field(2.0, gt=0, le=600)
    """Wait before the first retry; doubled for each next one."""

    @field_validator("webhook")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                words = shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"cannot be split into words: {exc}") from None
            if not words:
                raise ValueError("is empty")
            if code := _code_with_placeholder(words):
                raise ValueError(
                    f"puts a placeholder inside the code that {code} runs, where a quote in a run's name or "
                    "message would run commands; pass it as an argument instead, e.g. "
                    "sh -c 'echo \"$1\" | mail -s trainwarden ops@lab' sh \"{text}\"")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.webhook or self.command)


@dataclass(frozen=True)
class Alert:
    """One event worth telling a person about."""

    run: str
    path: str
    kind: str
    severity: str
    step: int | None
    message: str
    time: float

    @property
    def text(self) -> str:
        step = "" if self.step is None else f" step {self.step}"
        return f"[trainwarden] {self.severity.upper()} {self.run}{step} {self.kind}: {self.message}"


def body(alert: Alert, fmt: str, suppressed: int = 0) -> dict[str, Any]:
    """The JSON a webhook of this format accepts."""
    text = alert.text + (f" ({suppressed} more alerts held back by the rate limit)" if suppressed else "")
    if fmt == "slack":
        return {"text": text}
    if fmt == "feishu":
        return {"msg_type": "text", "content": {"text": text}}
    if fmt == "dingtalk":
        return {"msgtype": "text", "text": {"content": text}}
    return {"run": alert.run, "path": alert.path, "kind": alert.kind, "severity": alert.severity, "step": alert.step,
            "message": alert.message, "time": alert.time, "suppressed": suppressed, "text": text}


class DeliveryError(Exception):
    """One try failed; `retry` says whether trying again may help."""

    def __init__(self, why: str, retry: bool) -> None:
        super().__init__(why)
        self.retry = retry


class Alerter:
    """Queues alerts and delivers them on a background thread."""

    def __init__(self, settings: AlertSettings, sleep: Any = time.sleep, clock: Any = time.monotonic) -> None:
        self.settings = settings
        self._sleep, self._clock = sleep, clock
        self._queue: queue.Queue[Alert | None] = queue.Queue(QUEUE_SIZE)
        self._sent: deque[float] = deque()  # monotonic times of recent deliveries (rate limit)
        self._held = 0
        self._dropped_full = 0
        self.delivered = 0
        self.failed = 0
        self._thread: threading.Thread | None = None

    def configure(self, settings: AlertSettings) -> None:
        """New settings (a policy reload); alerts already queued are sent with them."""
        self.settings = settings

    def submit(self, alert: Alert) -> None:
        """Never blocks: a full queue drops the alert and says so once in a while."""
        s = self.settings
        if not s.enabled or alert.severity not in s.severities:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trainwarden-alerts", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self._dropped_full += 1
            if self._dropped_full % 100 == 1:
                log.error("alert queue full (%d waiting): %d alerts dropped so far", QUEUE_SIZE, self._dropped_full)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within `timeout`), then stop the thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            try:
                self._deliver(alert)
            except Exception:  # a bug here must not kill the thread: the next alert still goes
                log.exception("alert delivery failed unexpectedly")

    def _deliver(self, alert: Alert) -> None:
        s = self.settings
        now = self._clock()
        while self._sent and now - self._sent[0] > 60:
            self._sent.popleft()
        if len(self._sent) >= s.max_per_minute:
            self._held += 1
            return
        self._sent.append(now)
        held, self._held = self._held, 0
        targets = []
        if s.webhook:
            targets.append(("webhook", lambda: self._post(alert, held)))
        if s.command:
            targets.append(("command", lambda: self._command(alert)))
        for what, send in targets:
            wait = s.backoff_s
            for attempt in range(s.retries + 1):
                try:
                    send()
                    self.delivered += 1
                    break
                except DeliveryError as exc:
                    last = attempt == s.retries or not exc.retry
                    log.warning("alert %s failed (try %d of %d): %s%s", what, attempt + 1, s.retries + 1, exc,
                                "; giving up on this alert" if last else f"; again in {wait:g}s")
                    if last:
                        self.failed += 1
                        break
                    self._sleep(wait)
                    wait *= 2

    def _post(self, alert: Alert, held: int) -> None:
        s = self.settings
        assert s.webhook is not None
        data = json.dumps(body(alert, s.format, held)).encode()
        request = urllib.request.Request(s.webhook, data=data, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "trainwarden"})
        try:
            with urllib.request.urlopen(request, timeout=s.timeout_s) as response:
                response.read(65536)
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"{s.webhook} answered HTTP {exc.code}", retry=exc.code >= 500 or exc.code == 429) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(f"{s.webhook}: {reason}", retry=True) from None

    def _command(self, alert: Alert) -> None:
        s = self.settings
        assert s.command is not None
        fields = {"run": alert.run, "path": alert.path, "kind": alert.kind, "severity": alert.severity,
                  "step": "" if alert.step is None else str(alert.step), "message": alert.message, "text": alert.text}
        args = [_fill(word, fields) for word in shlex.split(s.command)]
        try:
            done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=s.timeout_s)
        except FileNotFoundError:
            raise DeliveryError(f"command not found: {args[0]}", retry=False) from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeliveryError(f"{args[0]}: {exc}", retry=True) from None
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise DeliveryError(f"{args[0]} exited {done.returncode}" + (f": {err[-1]}" if err else ""), retry=True)


# Programs that run the word after one of these flags as code: a placeholder there is code too.
_INTERPRETERS = {"sh": "-c", "bash": "-c", "dash": "-c", "zsh": "-c", "ksh": "-c", "fish": "-c", "python": "-c",
                 "python3": "-c", "perl": "-e", "ruby": "-e", "node": "-e"}
_PLACEHOLDERS = ("{run}", "{path}", "{kind}", "{severity}", "{step}", "{message}", "{text}")


def _code_with_placeholder(words: list[str]) -> str | None:
    """`sh -c` (or another interpreter's code flag) when its code holds a placeholder, else None."""
    for i, word in enumerate(words[:-1]):
        name = os.path.basename(word)
        flag = _INTERPRETERS.get(name) or _INTERPRETERS.get(name.rstrip("0123456789."))
        if flag is None:
            continue
        for j in range(i + 1, len(words) - 1):
            if words[j] == flag or (words[j].startswith("-") and not words[j].startswith("--") and flag[1] in words[j]):
                if any(p in words[j + 1] for p in _PLACEHOLDERS):
                    return f"{name} {flag}"
                break
            if not words[j].startswith("-"):
                break  # a script file: its arguments are data
    return None


def _fill(word: str, fields: dict[str, str]) -> str:
    """`{name}` placeholders replaced; other braces left alone (a command may use its own)."""
    for key, value in fields.items():
        word = word.replace("{" + key + "}", value)
    return word
