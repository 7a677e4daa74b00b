//! Files of the NHSA gateway's file transfer: what an institution uploads with 9101 and
//! the 3202 results it downloads with 9102. Each belongs to one institution and expires;
//! expired files are deleted whenever a new one is stored, and are never served.

use rusqlite::{Connection, OptionalExtension, params};

use super::states::NhsaFileKind;
use crate::Result;

/// One stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NhsaFile {
    pub file_qury_no: String,
    pub institution_code: String,
    pub kind: NhsaFileKind,
    pub filename: String,
    pub content: Vec<u8>,
    pub stored_at: String,
    pub expires_at: String,
}

/// Deletes the files expired at `now` (RFC 3339 UTC, as `expires_at`); how many.
pub fn purge_expired(conn: &Connection, now: &str) -> Result<usize> {
    Ok(conn
        .prepare_cached("DELETE FROM nhsa_files WHERE expires_at <= ?1")?
        .execute(params![now])?)
}

/// How many unexpired files `institution` holds, and their total size in bytes.
pub fn held_by(conn: &Connection, institution: &str, now: &str) -> Result<(u64, u64)> {
    Ok(conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(content)), 0) FROM nhsa_files \
             WHERE institution_code = ?1 AND expires_at > ?2",
        )?
        .query_row(params![institution, now], |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// Stores a new file.
pub fn insert(conn: &Connection, f: &NhsaFile) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO nhsa_files (file_qury_no, institution_code, kind, filename, content, stored_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        f.file_qury_no,
        f.institution_code,
        f.kind,
        f.filename,
        f.content,
        f.stored_at,
        f.expires_at
    ])?;
    Ok(())
}

/// The file numbered `file_qury_no`, expired or not (the caller tells them apart).
pub fn get(conn: &Connection, file_qury_no: &str) -> Result<Option<NhsaFile>> {
    Ok(conn
        .prepare_cached(
            "SELECT file_qury_no, institution_code, kind, filename, content, stored_at, expires_at \
             FROM nhsa_files WHERE file_qury_no = ?1",
        )?
        .query_row(params![file_qury_no], |r| {
            Ok(NhsaFile {
                file_qury_no: r.get(0)?,
                institution_code: r.get(1)?,
                kind: r.get(2)?,
                filename: r.get(3)?,
                content: r.get(4)?,
                stored_at: r.get(5)?,
                expires_at: r.get(6)?,
            })
        })
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(no: &str, inst: &str, expires_at: &str) -> NhsaFile {
        NhsaFile {
            file_qury_no: no.into(),
            institution_code: inst.into(),
            kind: NhsaFileKind::Upload,
            filename: "d.zip".into(),
            content: vec![1, 2, 3],
            stored_at: "2026-03-01T00:00:00Z".into(),
            expires_at: expires_at.into(),
        }
    }

    #[test]
    fn files_expire_count_per_institution_and_keep_their_kind() {
        let mut conn = Connection::open_in_memory().expect("open");
        crate::store::migrations::migrate(&mut conn, crate::store::migrations::Schema::Node)
            .expect("migrate");
        insert(&conn, &file("F1", "H1", "2026-03-02T00:00:00Z")).expect("F1");
        insert(&conn, &file("F2", "H1", "2026-03-04T00:00:00Z")).expect("F2");
        insert(&conn, &file("F3", "H2", "2026-03-04T00:00:00Z")).expect("F3");
        assert_eq!(
            held_by(&conn, "H1", "2026-03-01T12:00:00Z").expect("held"),
            (2, 6)
        );
        assert_eq!(
            purge_expired(&conn, "2026-03-03T00:00:00Z").expect("purge"),
            1
        );
        assert!(get(&conn, "F1").expect("get").is_none());
        assert_eq!(
            get(&conn, "F2").expect("get"),
            Some(file("F2", "H1", "2026-03-04T00:00:00Z"))
        );
        let e = conn
            .execute("UPDATE nhsa_files SET kind = 'download'", [])
            .expect_err("kind is checked");
        assert!(e.to_string().contains("CHECK constraint failed"), "{e}");
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'nhsa_files'",
                [],
                |r| r.get(0),
            )
            .expect("table");
        let names: Vec<String> = NhsaFileKind::ALL.iter().map(|k| format!("'{k}'")).collect();
        assert!(
            sql.contains(&format!("kind IN ({})", names.join(", "))),
            "the CHECK lists NhsaFileKind: {sql}"
        );
    }
}
