-- Device PINs (issue 4): which users have set a PIN on a client-generated
-- device id, so `POST /api/auth/pin/verify {device_id, pin}` can find the
-- `device_pin` aggregate (`<user_id>:<device_id>`) without a user id.
-- Written by the command side when a PIN is set, deleted when removed; no
-- secret here (the PIN's hash lives only in the aggregate's events).
-- TOTP needs no table: its state is the `totp` aggregate (id = user id).
CREATE TABLE device_pins
(
    device_id text        NOT NULL,
    user_id   uuid        NOT NULL,
    set_at    timestamptz NOT NULL,
    PRIMARY KEY (device_id, user_id)
);
