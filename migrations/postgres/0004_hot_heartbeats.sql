-- Heartbeats as HOT updates (issue 21).
--
-- A heartbeat batch changes `connections`, `last_heartbeat` and `beat_txid`, and none
-- of them is in an index (the primary key is `id`, the live-address index covers
-- `service`, `address` and its predicate `deleted`, the sync index covers `txid`,
-- which a heartbeat no longer stamps). So PostgreSQL can write the new row version on
-- the same page without touching any index, as long as the page has room: hence the
-- fill factor, which leaves a quarter of each page for new versions. HOT pruning,
-- which runs whenever a page is read or written short of room, frees the old versions
-- without a vacuum; the autovacuum settings below catch what pruning leaves.
--
-- `beat_txid` is to heartbeats what `txid` is to registrations: the transaction id of
-- the last heartbeat write, read by the heartbeat sync (`WHERE beat_txid >= horizon`).
-- It has no index, on purpose: the heartbeat sync scans the table once per period
-- (whole-table work once per tick), where an index on it would make every heartbeat
-- write touch an index and stop being HOT. Nullable with no default, so adding it
-- rewrites nothing: NULL means "no heartbeat since registration", which the row sync
-- already carried.
ALTER TABLE instances ADD COLUMN IF NOT EXISTS beat_txid XID8;

-- The fill factor applies to pages written from now on (a `VACUUM FULL` would repack
-- existing ones); 75 % leaves room for several versions of each row on its page.
ALTER TABLE instances SET (
    fillfactor = 75,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05
);
