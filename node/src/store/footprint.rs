//! The store's footprint on disk: bytes per table and per index, read from SQLite's
//! `dbstat` virtual table (compiled into the bundled SQLite), and bytes per settlement
//! the node took part in — the figure an operator sizes a disk with and the target of
//! DESIGN.md ("≤ 3 KB per settlement per node") is checked against.

use rusqlite::{Connection, params};

use crate::Result;

/// One table or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The table's or index's name.
    pub name: String,
    /// The table it belongs to (itself for a table).
    pub table: String,
    /// Whether it is an index (an automatic one of a constraint included).
    pub index: bool,
    /// Pages it occupies, and their bytes.
    pub pages: u64,
    pub bytes: u64,
    /// Bytes of row content in them (the rest is page headers, cell pointers and free
    /// space: `bytes - payload` is what a fuller page would save).
    pub payload: u64,
    /// Rows (a table's or an index's entries).
    pub rows: u64,
}

/// The footprint of a whole store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    pub page_size: u64,
    /// Pages of the file, and of them those free (left by deletions, reused first).
    pub pages: u64,
    pub free_pages: u64,
    /// Largest first.
    pub objects: Vec<Object>,
    /// Settlements this node took part in: its own settlement records (not reversals)
    /// as treatment node, and the claims other regions committed here as home node. A
    /// same-city settlement is both and counts once.
    pub settlements: u64,
}

impl Footprint {
    /// Bytes of the file.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.pages * self.page_size
    }

    /// Bytes per settlement of the file (0 without settlements).
    #[must_use]
    pub fn per_settlement(&self, bytes: u64) -> u64 {
        bytes.checked_div(self.settlements).unwrap_or(0)
    }
}

/// Measures the store of `conn` (any connection; a read transaction is enough). It
/// reads every page, so it takes a while on a large store: an operator's tool, not a
/// metric.
pub fn measure(conn: &Connection) -> Result<Footprint> {
    let page_size: u64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    let pages: u64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let free_pages: u64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    let mut objects: Vec<Object> = conn
        .prepare(
            "SELECT d.name, COALESCE(m.tbl_name, d.name), COALESCE(m.type = 'index', 0), \
             d.pageno, d.pgsize, d.payload, d.ncell \
             FROM dbstat AS d LEFT JOIN sqlite_schema AS m ON m.name = d.name \
             WHERE d.aggregate = TRUE",
        )?
        .query_map([], |r| {
            Ok(Object {
                name: r.get(0)?,
                table: r.get(1)?,
                index: r.get(2)?,
                pages: r.get(3)?,
                bytes: r.get(4)?,
                payload: r.get(5)?,
                rows: 0,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    for o in &mut objects {
        // dbstat's cell count includes the interior pages' cells; the rows are counted.
        o.rows = if o.index {
            conn.query_row(
                &format!("SELECT COUNT(*) FROM {}", quote(&o.table)),
                [],
                |r| r.get(0),
            )?
        } else if o.name.starts_with("sqlite_") {
            0
        } else {
            conn.query_row(
                &format!("SELECT COUNT(*) FROM {}", quote(&o.name)),
                [],
                |r| r.get(0),
            )?
        };
    }
    objects.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    Ok(Footprint {
        page_size,
        pages,
        free_pages,
        objects,
        settlements: settlements(conn)?,
    })
}

/// Measures the store file at `path` through a read-only connection (a running node's
/// too: a read never blocks its writer).
pub fn measure_file(path: &std::path::Path) -> Result<Footprint> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    measure(&conn)
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// See [`Footprint::settlements`]. A coordinator's store has none.
fn settlements(conn: &Connection) -> Result<u64> {
    let node: bool = conn.query_row(
        "SELECT COUNT(*) = 2 FROM sqlite_schema WHERE type = 'table' AND name IN ('settlements', 'claims')",
        [],
        |r| r.get(0),
    )?;
    if !node {
        return Ok(0);
    }
    let region = super::meta_get(conn, "region")?.unwrap_or_default();
    Ok(conn.query_row(
        "SELECT (SELECT COUNT(*) FROM settlements WHERE reverses IS NULL) \
         + (SELECT COUNT(*) FROM claims WHERE treatment_region <> ?1)",
        params![region],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table and index is listed, their bytes add up to the file's (every page
    /// belongs to one object or the free list), and the settlements are counted as
    /// the docs say: one per settlement record that is no reversal, one per claim of
    /// another treatment region.
    #[test]
    fn objects_cover_the_file_and_settlements_are_counted_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrations::migrate(&mut conn, super::super::migrations::Schema::Node)
            .unwrap();
        conn.execute_batch(
            "INSERT INTO meta VALUES ('region', '330100');
             INSERT INTO institutions VALUES ('H1', '医院', 'hospital', 'level3', 'active', '2026-01-01', NULL);
             INSERT INTO visits VALUES ('V1', 1, 'H1', 'P1', '330200', 'outpatient', 'level3', 'E1', '', 'settled', 't', '2026-11-02', NULL, x'');
             INSERT INTO settlements VALUES ('S1', 1, 'V1', 'H1', 'P1', '330200', 'outpatient', 'cancelled', NULL, 'inst:H1', 'r1', 'h1', x'01', 2000, 1500, 0, 500, 3, 7, 't', '2026-11-02', '2026-11', '');
             INSERT INTO settlements VALUES ('S2', 2, 'V1', 'H1', 'P1', '330200', 'outpatient', 'reversal', 'S1', 'inst:H1', 'r2', 'h2', x'01', -2000, -1500, 0, -500, 3, 7, 't', '2026-11-02', '2026-11', '');",
        )
        .unwrap();
        let claim = "INSERT INTO claims (claim_id, treatment_region, id_number, institution_code, visit_kind, settled_at, period, \
                     policy_version, provisional, split, fund_fen, acct_fen, acc_year, acc_delta, state) \
                     VALUES (?1, ?2, 'P9', 'H9', 'outpatient', 't', '2026-11', 1, 0, x'', 100, 0, 2026, '{}', 'committed')";
        conn.execute(claim, ["C1", "330300"]).unwrap();
        conn.execute(claim, ["C2", "330100"]).unwrap();
        let f = measure(&conn).unwrap();
        assert_eq!(f.settlements, 2, "S1 and C1; S2 reverses, C2 is local");
        let total: u64 = f.objects.iter().map(|o| o.bytes).sum();
        assert_eq!(total + f.free_pages * f.page_size, f.bytes());
        let names: Vec<&str> = f.objects.iter().map(|o| o.name.as_str()).collect();
        for n in [
            "settlements",
            "settlements_by_request",
            "ledger",
            "requests",
            "audit_log",
        ] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        let by_request = f
            .objects
            .iter()
            .find(|o| o.name == "settlements_by_request")
            .unwrap();
        assert!(by_request.index);
        assert_eq!(
            (by_request.table.as_str(), by_request.rows),
            ("settlements", 2)
        );
        assert_eq!(f.per_settlement(f.bytes()), f.bytes() / 2);
    }
}
