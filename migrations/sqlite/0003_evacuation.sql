-- Paced evacuation of a drained instance (connections per second), cleared on
-- re-registration.
ALTER TABLE instances ADD COLUMN evacuate_per_sec INTEGER;
