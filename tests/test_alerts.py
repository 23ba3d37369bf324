"""Alerts against a real local HTTP server (standing in for Slack, Feishu or DingTalk) and a
real local command; then the real daemon alerting about a real rebound."""
from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import wait_for
from test_supervisor import JUMP, write_policy
from trainwarden.supervisor.alerts import Alert, Alerter, AlertSettings, body
from trainwarden.supervisor.policy import PolicyError, load_policy


class Hook:
    """A webhook endpoint: answers each POST with the next status of `statuses` (then 200)."""

    def __init__(self, statuses: list[int] | None = None, hold: threading.Event | None = None) -> None:
        self.received: list[dict] = []
        self.statuses = list(statuses or [])
        self.hold = hold
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                if hook.hold is not None:
                    hook.hold.wait(10)
                length = int(self.headers["Content-Length"])
                hook.received.append(json.loads(self.rfile.read(length)))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    made: list[Hook] = []

    def make(**kw) -> Hook:
        made.append(Hook(**kw))
        return made[-1]

    yield make
    for h in made:
        h.close()


def alert(kind: str = "spike", severity: str = "warning", message: str = "loss rebounded 5x", run: str = "gpt-small") -> Alert:
    return Alert(run=run, path="/runs/gpt-small", kind=kind, severity=severity, step=1200, message=message,
                 time=1.0e9)


def no_sleep(_: float) -> None:
    pass


class TestWebhook:
    @pytest.mark.parametrize("fmt, expect", [
        ("slack", lambda b: b["text"]),
        ("feishu", lambda b: b["msg_type"] == "text" and b["content"]["text"]),
        ("dingtalk", lambda b: b["msgtype"] == "text" and b["text"]["content"]),
        ("json", lambda b: b["run"] == "gpt-small" and b["kind"] == "spike" and b["step"] == 1200 and b["text"]),
    ])
    def test_each_format_arrives(self, hook, fmt, expect):
        h = hook()
        a = Alerter(AlertSettings(webhook=h.url, format=fmt))
        a.submit(alert())
        wait_for(lambda: h.received, 10)
        text = expect(h.received[0])
        assert text and "gpt-small step 1200 spike: loss rebounded 5x" in text
        a.close()

    def test_server_errors_are_retried_with_backoff_and_client_errors_are_not(self, hook):
        h = hook(statuses=[500, 503, 200, 400])
        waits: list[float] = []
        a = Alerter(AlertSettings(webhook=h.url, retries=4, backoff_s=1.5), sleep=waits.append)
        a.submit(alert())
        wait_for(lambda: a.delivered == 1, 10)
        assert len(h.received) == 3 and waits == [1.5, 3.0]
        a.submit(alert(kind="intervention"))  # answered 400: a bad request is not sent again
        wait_for(lambda: a.failed == 1, 10)
        assert len(h.received) == 4 and waits == [1.5, 3.0]
        a.close()

    def test_a_dead_endpoint_is_logged_and_the_next_alert_still_goes(self, hook, caplog):
        dead = hook()
        url = dead.url
        dead.close()
        a = Alerter(AlertSettings(webhook=url, retries=2), sleep=no_sleep)
        a.submit(alert())
        wait_for(lambda: a.failed == 1, 20)
        assert "giving up on this alert" in caplog.text
        live = hook()
        a.configure(AlertSettings(webhook=live.url))
        a.submit(alert(kind="cured", severity="error"))
        wait_for(lambda: live.received, 10)
        a.close()

    def test_submitting_never_waits_for_the_endpoint(self, hook):
        hold = threading.Event()
        h = hook(hold=hold)
        a = Alerter(AlertSettings(webhook=h.url))
        for _ in range(5):
            a.submit(alert())  # returns while the server holds the first request
        assert h.received == []
        hold.set()
        wait_for(lambda: len(h.received) == 5, 10)
        a.close()

    def test_rate_limit_holds_back_and_reports_the_count(self, hook):
        h = hook()
        now = [0.0]
        a = Alerter(AlertSettings(webhook=h.url, max_per_minute=2), sleep=no_sleep, clock=lambda: now[0])
        for _ in range(5):
            a.submit(alert())
        wait_for(lambda: a._queue.empty() and len(h.received) == 2, 10)
        now[0] = 61.0
        a.submit(alert(kind="cured", severity="warning"))
        wait_for(lambda: len(h.received) == 3, 10)
        assert "(3 more alerts held back by the rate limit)" in h.received[2]["text"]
        a.close()

    def test_only_the_chosen_severities(self, hook):
        h = hook()
        a = Alerter(AlertSettings(webhook=h.url, severities=["error"]))
        a.submit(alert(severity="warning"))
        a.submit(alert(kind="needs_person", severity="error"))
        wait_for(lambda: h.received, 10)
        a.close()
        assert len(h.received) == 1 and "needs_person" in h.received[0]["text"]


class TestCommand:
    def test_placeholders_and_a_failing_command(self, tmp_path):
        out = tmp_path / "alerts.txt"
        script = tmp_path / "record.py"
        script.write_text("import sys\nopen(sys.argv[1], 'a').write('|'.join(sys.argv[2:]) + '\\n')\n")
        a = Alerter(AlertSettings(command=f'{sys.executable} {script} {out} {{run}} {{kind}} "{{text}}"'))
        a.submit(alert())
        wait_for(lambda: out.exists() and out.read_text(), 10)
        run, kind, text = out.read_text().strip().split("|")
        assert (run, kind) == ("gpt-small", "spike") and text.startswith("[trainwarden] WARNING gpt-small step 1200")
        a.configure(AlertSettings(command=f"{sys.executable} -c 'import sys; sys.exit(3)'", retries=1))
        a.submit(alert())
        wait_for(lambda: a.failed == 1, 10)
        a.configure(AlertSettings(command="no-such-notifier {text}", retries=3))
        a.submit(alert())
        wait_for(lambda: a.failed == 2, 10)
        a.close()


    def test_a_hostile_run_name_never_runs_as_a_command(self, tmp_path):
        # A name that closes the quote of `sh -c 'echo "{text}"'` and starts a command of its own.
        marker = tmp_path / "pwned"
        name = f'x"; touch {marker}; echo "'
        with pytest.raises(ValueError, match="placeholder inside the code that sh -c runs"):
            AlertSettings(command="sh -c 'echo \"{text}\" >> /dev/null'")
        with pytest.raises(ValueError, match="python3 -c"):
            AlertSettings(command="python3 -I -c 'print(\"{run}\")'")
        out = tmp_path / "mail.txt"
        a = Alerter(AlertSettings(command=f"sh -c 'printf \"%s\\n\" \"$1\" >> {out}' sh \"{{text}}\""))
        a.submit(alert(run=name))
        wait_for(lambda: out.exists() and out.read_text(), 10)
        a.close()
        assert f"WARNING {name} step 1200" in out.read_text() and not marker.exists()


class TestSettings:
    @pytest.mark.parametrize("toml, field", [
        ('[alerts]\nwebhook = "hooks.slack.com/x"\n', "alerts.webhook"),
        ('[alerts]\nformat = "teams"\n', "alerts.format"),
        ('[alerts]\nseverities = ["loud"]\n', "alerts.severities.0"),
        ('[alerts]\ncommand = "notify-send \\"unclosed"\n', "alerts.command"),
        ('[alerts]\nmax_per_minute = 0\n', "alerts.max_per_minute"),
        ('[alerts]\nwebhok = "https://x"\n', "alerts.webhok"),
    ])
    def test_bad_settings_name_the_field(self, tmp_path, toml, field):
        p = tmp_path / "policy.toml"
        p.write_text(toml)
        with pytest.raises(PolicyError, match=f"policy.toml: {field.replace('.', '[.]')}"):
            load_policy(p)

    def test_body_formats_are_what_the_services_accept(self):
        assert set(body(alert(), "feishu")) == {"msg_type", "content"}
        assert set(body(alert(), "dingtalk")) == {"msgtype", "text"}
        assert set(body(alert(), "slack")) == {"text"}


def test_the_daemon_alerts_about_a_real_rebound(tmp_path, daemon, trainer, hook):
    h = hook()
    root = tmp_path / "runs"
    policy = write_policy(tmp_path, f'\n[alerts]\nwebhook = "{h.url}"\nformat = "slack"\n')
    d = daemon(root, policy=policy)
    d.wait_log("alerts (warning/error) to webhook (slack)")
    t = trainer(root / "jump", *JUMP)
    wait_for(lambda: any(" intervention:" in m["text"] for m in h.received), 120)
    t.kill()
    texts = [m["text"] for m in h.received]
    assert any(" jump step " in x and ("spike:" in x or "divergence:" in x or "nan:" in x) for x in texts)
    assert all(x.startswith("[trainwarden] ") for x in texts)
    assert h.url not in d.text()  # the webhook (a secret) is not logged
    assert Path(root / "jump").is_dir()
