-- One row per registered instance. Heartbeats update connections and
-- last_heartbeat_ms in batches; everything else is written before it is answered.
CREATE TABLE instances (
    id                TEXT    NOT NULL PRIMARY KEY,
    service           TEXT    NOT NULL,
    address           TEXT    NOT NULL,
    weight            INTEGER NOT NULL,
    max_connections   INTEGER,
    zone              TEXT,
    tags              TEXT    NOT NULL DEFAULT '[]',
    metadata          TEXT    NOT NULL DEFAULT '{}',
    ttl_secs          INTEGER NOT NULL,
    lease_hash        TEXT    NOT NULL,
    draining          INTEGER NOT NULL DEFAULT 0,
    connections       INTEGER NOT NULL DEFAULT 0,
    registered_at_ms  INTEGER NOT NULL,
    last_heartbeat_ms INTEGER NOT NULL,
    UNIQUE (service, address)
);
