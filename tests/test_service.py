"""The systemd units and `trainwarden install-systemd`: the files pass `systemd-analyze verify`
(with no warning), and the command writes or prints them with this environment's paths."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import cli
from trainwarden.supervisor.service import GENERIC_EXE, SYSTEM_UNIT, USER_UNIT, default_roots, unit_text

UNITS = Path(__file__).resolve().parent.parent / "systemd"


def verify(unit: Path, user: bool, tmp_path: Path) -> None:
    """`systemd-analyze verify`: exit 0 and not one warning (a misspelt key is only a warning)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt install systemd)")
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    r = subprocess.run(["systemd-analyze", "verify", *(["--user"] if user else []), str(unit)],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime)})
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


@pytest.mark.parametrize("name, kind", [(USER_UNIT, "user"), (SYSTEM_UNIT, "system")])
def test_the_shipped_units_verify_and_match_what_the_command_writes(name, kind, tmp_path):
    text = (UNITS / name).read_text()
    assert text == unit_text(kind, GENERIC_EXE, default_roots(kind))  # systemd/ never drifts
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ReadWritePaths=", "PrivateTmp=yes", "ProtectKernelTunables=yes", "RestrictAddressFamilies=AF_UNIX"):
        assert line in text
    assert ("User=%i" in text) == (kind == "system")
    verify(UNITS / name, kind == "user", tmp_path)


def test_a_misspelt_key_fails_verification(tmp_path):
    """The check above can fail: one wrong key is caught."""
    bad = tmp_path / USER_UNIT
    bad.write_text(unit_text("user", GENERIC_EXE, ["%h/runs"]).replace("PrivateTmp=yes", "PrivatTmp=yes"))
    with pytest.raises(AssertionError, match="Unknown key"):
        verify(bad, True, tmp_path)


def test_install_a_user_unit(tmp_path):
    home = tmp_path / "home"
    root, policy = tmp_path / "my runs 100%", tmp_path / "policy.toml"
    policy.write_text("cooldown_steps = 300\n")
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "USER": "ana"}
    r = cli("install-systemd", "--user", "--root", root, "--policy", policy, env=env)
    assert r.returncode == 0, r.stderr
    unit = home / ".config" / "systemd" / "user" / USER_UNIT
    text = unit.read_text()
    exe = shutil.which("trainwarden")
    literal = str(root).replace("%", "%%")  # a literal % in a unit file
    assert f"ExecStart={Path(exe).absolute()} supervise --root '{literal}' --policy {policy}" in text
    assert f'ReadWritePaths="-{literal}"' in text and root.is_dir()  # made now: the sandbox is read-only outside it
    assert f"wrote {unit}" in r.stdout
    for step in ("systemctl --user daemon-reload", "systemctl --user enable --now trainwarden", "loginctl enable-linger ana"):
        assert step in r.stdout
    verify(unit, True, tmp_path)


def test_print_writes_nothing_and_system_template_defaults(tmp_path):
    r = cli("install-systemd", "--system", "--print", "--unit-dir", tmp_path / "units")
    assert r.returncode == 0, r.stderr
    assert "User=%i" in r.stdout and "--root /home/%i/runs" in r.stdout and "WantedBy=multi-user.target" in r.stdout
    assert not (tmp_path / "units").exists()
    printed = tmp_path / SYSTEM_UNIT
    printed.write_text(r.stdout)
    verify(printed, False, tmp_path)


def test_bad_input_is_one_line(tmp_path):
    r = cli("install-systemd", "--policy", tmp_path / "missing.toml", "--print")
    assert r.returncode == 2 and "no such policy file" in r.stderr and r.stderr.count("\n") == 1
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = cli("install-systemd", "--system", "--unit-dir", blocker / "units", "--root", tmp_path / "r")
    assert r.returncode == 2 and "cannot write" in r.stderr and "--print" in r.stderr
    r = cli("install-systemd", "--user", "--system")
    assert r.returncode == 2 and "not allowed with" in r.stderr


@pytest.mark.parametrize("journal", [True, False])
def test_log_lines_carry_the_journal_priority_under_systemd(tmp_path, daemon, journal):
    """Under systemd (stderr is the stream $JOURNAL_STREAM names) each line starts with its syslog
    priority, so `journalctl -p warning` works, and has no timestamp of its own (journald stamps
    it); elsewhere (the variable inherited, the stream not) lines keep their timestamp."""
    root = tmp_path / "runs"
    (root / "broken").mkdir(parents=True)
    (root / "broken" / "trainwarden.db").write_bytes(b"not a database " * 100)
    log = tmp_path / "daemon-0.log"  # the file the fixture's daemon writes its stderr to
    log.touch()
    st = (log if journal else tmp_path).stat()
    text = daemon(root, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}).wait_log("store unreadable")
    lines = text.splitlines()
    watching = next(line for line in lines if "watching" in line)
    unreadable = next(line for line in lines if "store unreadable" in line)
    if journal:
        assert watching.startswith("<6>INFO ") and unreadable.startswith("<3>ERROR ")
        assert not any(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", line) for line in lines)
    else:
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO ", watching)
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ERROR ", unreadable)
