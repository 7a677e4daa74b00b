//! Named monotonic sequences for record ids (visits, settlements), advanced inside the
//! writer's transaction so an id is never handed out twice, even across a crash.

use rusqlite::{Connection, params};

use crate::Result;

/// The next value of sequence `name` (1, 2, …).
pub fn next(conn: &Connection, name: &str) -> Result<i64> {
    Ok(conn
        .prepare_cached(
            "INSERT INTO sequences (name, value) VALUES (?1, 1) \
             ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value",
        )?
        .query_row(params![name], |r| r.get(0))?)
}
