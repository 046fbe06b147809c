-- One row that /readyz rewrites after a failed write, to learn whether the store can
-- write again.
CREATE TABLE IF NOT EXISTS write_probe (
    id INTEGER     NOT NULL PRIMARY KEY CHECK (id = 1),
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);
