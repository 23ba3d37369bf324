"""The store's schema: file names and the migrations that build its tables, version by version."""
from __future__ import annotations

DB_NAME = "trainwarden.db"
CHECKPOINT_DIR = "checkpoints"

# Each entry migrates the schema from version i to i + 1. Never edit a released entry: append.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE run (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        pid INTEGER,
        host TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        heartbeat_at REAL,
        ended_at REAL,
        step INTEGER NOT NULL DEFAULT 0,
        branch INTEGER NOT NULL DEFAULT 0,
        lr REAL,
        lr_multiplier REAL NOT NULL DEFAULT 1.0,
        last_loss REAL,
        config TEXT NOT NULL DEFAULT '{}',
        agent_version TEXT
    );
    CREATE TABLE branches (
        id INTEGER PRIMARY KEY,
        parent INTEGER REFERENCES branches(id),
        fork_step INTEGER NOT NULL,
        checkpoint_id INTEGER,
        reason TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE windows (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        branch INTEGER NOT NULL,
        first_step INTEGER NOT NULL,
        last_step INTEGER NOT NULL,
        count INTEGER NOT NULL,
        mean REAL, min REAL, max REAL, std REAL,
        nonfinite INTEGER NOT NULL,
        lr REAL,
        steps_per_s REAL,
        losses BLOB NOT NULL,
        time REAL NOT NULL
    );
    CREATE INDEX windows_by_branch ON windows(branch, last_step);
    CREATE TABLE metrics (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        branch INTEGER NOT NULL,
        step INTEGER NOT NULL,
        name TEXT NOT NULL,
        value REAL,
        time REAL NOT NULL
    );
    CREATE TABLE checkpoints (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        step INTEGER NOT NULL,
        branch INTEGER NOT NULL,
        loss REAL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        path TEXT NOT NULL,
        bytes INTEGER,
        sha256 TEXT,
        pinned INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        ready_at REAL,
        error TEXT
    );
    CREATE TABLE commands (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        args TEXT NOT NULL DEFAULT '{}',
        issuer TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        result TEXT,
        created_at REAL NOT NULL,
        applied_at REAL,
        applied_step INTEGER
    );
    CREATE INDEX commands_by_status ON commands(status, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        step INTEGER,
        branch INTEGER,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        source TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 2: checkpoint checksums name their algorithm ("xxh3_128:<hex>"); a bare digest is sha256.
    """
    ALTER TABLE checkpoints RENAME COLUMN sha256 TO checksum;
    """,
    # 3: the supervisor's interventions (and proposals awaiting an operator), its durable state.
    """
    CREATE TABLE interventions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        finding TEXT NOT NULL,
        onset INTEGER NOT NULL,
        step INTEGER NOT NULL,
        branch INTEGER NOT NULL,
        mode TEXT NOT NULL,
        status TEXT NOT NULL,
        actions TEXT NOT NULL,
        commands TEXT NOT NULL DEFAULT '[]',
        reason TEXT NOT NULL,
        level_before REAL,
        decided_by TEXT,
        decided_at REAL,
        outcome TEXT
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
