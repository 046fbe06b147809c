-- Cluster mode: several registry nodes share these tables.
--
-- Every write stamps `txid` with its transaction id; a node syncs the rows whose txid
-- is at or above the oldest transaction still running at its previous read, so a
-- transaction that commits late is never skipped. Deletions are soft (`deleted`) so
-- that they sync like any change; the leader purges old tombstones.
CREATE TABLE instances (
    id               TEXT        NOT NULL PRIMARY KEY,
    service          TEXT        NOT NULL,
    address          TEXT        NOT NULL,
    weight           INTEGER     NOT NULL,
    max_connections  BIGINT,
    zone             TEXT,
    tags             TEXT        NOT NULL DEFAULT '[]',
    metadata         TEXT        NOT NULL DEFAULT '{}',
    ttl_secs         INTEGER     NOT NULL,
    lease_hash       TEXT        NOT NULL,
    draining         BOOLEAN     NOT NULL DEFAULT false,
    connections      BIGINT      NOT NULL DEFAULT 0,
    registered_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_heartbeat   TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted          BOOLEAN     NOT NULL DEFAULT false,
    txid             XID8        NOT NULL DEFAULT pg_current_xact_id()
);
CREATE UNIQUE INDEX instances_live_address ON instances (service, address) WHERE NOT deleted;
CREATE INDEX instances_txid ON instances (txid);

-- Each node's pending hand-outs per instance, published with its heartbeat batches so
-- that every node ranks with the whole cluster's pending counts.
CREATE TABLE handouts (
    node        TEXT        NOT NULL,
    instance_id TEXT        NOT NULL,
    pending     BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (node, instance_id)
);

-- Registry nodes and when they were last alive, for the cluster-wide restart grace.
CREATE TABLE nodes (
    node       TEXT        NOT NULL PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen  TIMESTAMPTZ NOT NULL DEFAULT now()
);
