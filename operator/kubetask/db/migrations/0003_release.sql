-- kubetask schema, version 3: the release that owns the database.
--
-- One database serves one release. Two operators of different releases (a
-- different KUBETASK_MANAGED_BY, or the same name installed in two
-- namespaces) on one database would each cancel, in their orphan sweep, the
-- rows of the other's Tasks (they cannot see them), rescue and run the
-- other's work, and mirror into Tasks they do not own. The first operator to
-- start records who it is here; an operator with another identity refuses to
-- start, naming both (kubetask.db.release). The single row is the lock: its
-- primary key allows one, and the CHECK keeps it that way.

CREATE TABLE kubetask_release (
    singleton boolean PRIMARY KEY DEFAULT true,
    managed_by text NOT NULL,
    namespace text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT kubetask_release_one_row CHECK (singleton)
);
