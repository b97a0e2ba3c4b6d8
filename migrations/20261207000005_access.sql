-- Issue 17: custom roles and who holds which role (the `access` read
-- model: lists and counts only; decisions read the store).
CREATE TABLE rm_roles
(
    name        text        PRIMARY KEY,
    description text        NOT NULL,
    permissions text[]      NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE rm_user_roles
(
    user_id    uuid        NOT NULL,
    role       text        NOT NULL,
    granted_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, role)
);
CREATE INDEX rm_user_roles_role_idx ON rm_user_roles (role, user_id);
