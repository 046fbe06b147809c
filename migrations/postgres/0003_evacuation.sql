-- Paced evacuation of a drained instance (connections per second), cleared on
-- re-registration.
ALTER TABLE instances ADD COLUMN IF NOT EXISTS evacuate_per_sec INTEGER;
