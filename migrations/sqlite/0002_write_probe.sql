-- One row that /readyz rewrites after a failed write, to learn whether the store can
-- write again (a full disk that was freed, an I/O error that passed).
CREATE TABLE write_probe (
    id    INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    at_ms INTEGER NOT NULL
);
