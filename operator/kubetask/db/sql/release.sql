-- kubetask.db.release: see kubetask/db/sql.py for the conventions every file follows.

-- name: claim
-- Records this release as the database's owner unless one already is, and
-- returns the owner either way. Two operators starting at once conflict on
-- the primary key: the loser's INSERT waits for the winner's commit and does
-- nothing, and its SELECT (a later statement, a fresh snapshot) sees the
-- winner.
INSERT INTO kubetask_release (managed_by, namespace)
VALUES (%(managed_by)s, %(namespace)s)
ON CONFLICT (singleton) DO NOTHING;

-- name: owner
-- The release that owns the database.
SELECT managed_by, namespace, claimed_at FROM kubetask_release;
