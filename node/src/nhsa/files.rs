//! NHSA file transfer: 9101 upload (`fsUploadIn`) and 9102 download (`fsDownloadIn`).
//!
//! The only file an institution uploads here is the 3202 detail file (a zip holding one
//! text file, one settlement per line), so 9101 checks it as one before storing it:
//! garbage is refused at the upload, naming the field, and nothing is stored. Files sit
//! in the node's store (`nhsa_files`) with a size limit, a per-institution quota and an
//! expiry (`dld_endtime`); only the institution that stored a file may use its
//! `file_qury_no`. 9102 answers the zip's bytes themselves, not JSON (sheet §1).

use std::io::{Cursor, Read, Write};

use base64::Engine;
use serde_json::{Value, json};
use yidi_common::{digest::sha256_hex, money, period};

use super::{
    envelope::{Envelope, NResult, NhsaError, object},
    transactions::{Answer, refusal},
};
use crate::{
    Error,
    context::NodeState,
    idempotency::{self, RequestKey},
    settlement::treatment,
    store::{
        nhsa_files::{self, NhsaFile},
        sequences,
        states::NhsaFileKind,
    },
};

/// The infno of the download, answered with raw bytes (`server.rs` routes it).
pub const DOWNLOAD: &str = "9102";
/// Largest zip accepted by 9101, in bytes (its Base64 text still fits in a request).
pub const MAX_UPLOAD_BYTES: usize = 2 * 1024 * 1024;
/// Largest text a zip may unpack to: a bound on what a small zip can expand into.
pub const MAX_TEXT_BYTES: u64 = 16 * 1024 * 1024;
/// How long a stored file may be used (its `dld_endtime`).
pub const FILE_HOURS: i64 = 72;
/// Unexpired bytes one institution may hold (uploads and results together).
pub const MAX_HELD_BYTES: u64 = 32 * 1024 * 1024;

/// The text file inside a detail zip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipText {
    pub name: String,
    pub text: String,
}

/// The one text file of a zip, or why the bytes are not one (English, for messages).
pub fn unzip_text(bytes: &[u8]) -> Result<ZipText, String> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format!("is not a zip archive ({e})"))?;
    let mut found: Option<usize> = None;
    for i in 0..zip.len() {
        let f = zip
            .by_index(i)
            .map_err(|e| format!("has an unreadable entry {i} ({e})"))?;
        if f.is_dir() {
            continue;
        }
        if found.is_some() {
            return Err("holds more than one file; zip the one detail text file alone".into());
        }
        found = Some(i);
    }
    let i = found.ok_or("holds no file; zip the detail text file")?;
    let mut f = zip
        .by_index(i)
        .map_err(|e| format!("has an unreadable file ({e})"))?;
    let name = f.name().map(|n| n.to_string()).unwrap_or_default();
    if f.size() > MAX_TEXT_BYTES {
        return Err(format!(
            "unpacks to {} bytes; at most {MAX_TEXT_BYTES} are accepted",
            f.size()
        ));
    }
    let mut raw = Vec::new();
    // The declared size may lie: never read past the limit.
    (&mut f)
        .take(MAX_TEXT_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("file {name} cannot be unpacked ({e})"))?;
    if raw.len() as u64 > MAX_TEXT_BYTES {
        return Err(format!(
            "unpacks to more than {MAX_TEXT_BYTES} bytes, the most accepted"
        ));
    }
    let text = String::from_utf8(raw)
        .map_err(|_| format!("file {name} is not UTF-8 text"))?
        .trim_start_matches('\u{feff}')
        .to_owned();
    Ok(ZipText { name, text })
}

/// A zip holding `text` as `name`, deflated.
pub fn zip_text(name: &str, text: &str) -> Result<Vec<u8>, String> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    w.start_file(name, options)
        .and_then(|()| w.write_all(text.as_bytes()).map_err(Into::into))
        .map_err(|e| format!("cannot write the zip: {e}"))?;
    w.finish()
        .map(Cursor::into_inner)
        .map_err(|e| format!("cannot write the zip: {e}"))
}

/// `in`: a Base64 string of the zip ([OH]) or an array of byte values.
fn upload_bytes(v: Option<&Value>, path: &str) -> NResult<Vec<u8>> {
    let bad = |zh: &str, en: String| NhsaError::field(path, zh, en);
    match v {
        None | Some(Value::Null) => Err(NhsaError::missing(path)),
        Some(Value::String(s)) => {
            // Base64 text may come wrapped in lines (MIME encoders).
            let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            if compact.is_empty() {
                return Err(NhsaError::missing(path));
            }
            // Refused before decoding: the decoded size is three quarters of the text.
            if compact.len() / 4 * 3 > MAX_UPLOAD_BYTES + 2 {
                return Err(too_large(path, compact.len() / 4 * 3));
            }
            base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map_err(|e| {
                    bad(
                        "不是合法的 Base64 文本",
                        format!(
                            "{path} is not Base64 text ({e}); send the zip's bytes Base64-encoded"
                        ),
                    )
                })
        }
        Some(Value::Array(a)) => {
            if a.len() > MAX_UPLOAD_BYTES {
                return Err(too_large(path, a.len()));
            }
            a.iter()
                .enumerate()
                .map(|(i, b)| {
                    b.as_u64()
                        .and_then(|n| u8::try_from(n).ok())
                        .ok_or_else(|| {
                            bad(
                                "字节数组的元素应为 0 到 255 的整数",
                                format!("{path}[{i}] {b} is not a byte (0–255)"),
                            )
                        })
                })
                .collect()
        }
        Some(_) => Err(bad(
            "应为 Base64 字符串或字节数组",
            format!("{path} must be the zip as a Base64 string or an array of bytes"),
        )),
    }
}

fn too_large(path: &str, n: usize) -> NhsaError {
    NhsaError::field(
        path,
        format!("文件过大（{n} 字节），最大 {MAX_UPLOAD_BYTES} 字节"),
        format!(
            "{path}: the file is {n} bytes; at most {MAX_UPLOAD_BYTES} bytes are accepted (split the period into several reconciliations)"
        ),
    )
}

/// `yyyy-MM-dd HH:mm:ss` in China Standard Time.
fn nhsa_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&period::cst())
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// A stored-file record's time (RFC 3339 UTC, seconds), which sorts as it compares.
fn store_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Stores a file for `institution` under the request `key`, exactly once: a repeat of
/// the same message answers the original output (`output` is built from the number,
/// the file name and the expiry), another message under the same msgid is refused.
pub(super) async fn store_once<F>(
    st: &NodeState,
    key: RequestKey,
    institution: &str,
    kind: NhsaFileKind,
    filename: String,
    content: Vec<u8>,
    output: F,
) -> NResult<Value>
where
    F: FnOnce(&str, &str, &str) -> Value + Send + 'static,
{
    let now = st.clock.now();
    let today = st.clock.today();
    let (stored_at, expires) = (store_time(now), now + chrono::Duration::hours(FILE_HOURS));
    let region = st.region;
    let institution = institution.to_owned();
    let text = st
        .store
        .write_as(crate::store::JobKind::Admin, move |conn| {
            idempotency::once(conn, &key, |conn| {
                treatment::check_institution(conn, &institution, today)?;
                nhsa_files::purge_expired(conn, &stored_at)?;
                let (files, bytes) = nhsa_files::held_by(conn, &institution, &stored_at)?;
                if bytes + content.len() as u64 > MAX_HELD_BYTES {
                    return Err(Error::FailedPrecondition(format!(
                        "institution {institution} already holds {files} files of {bytes} bytes; at most {MAX_HELD_BYTES} bytes are kept, each file for {FILE_HOURS} hours: wait for older files to expire"
                    )));
                }
                let no = format!(
                    "{region}-F-{:010}",
                    sequences::next(conn, "nhsa_file")?
                );
                nhsa_files::insert(
                    conn,
                    &NhsaFile {
                        file_qury_no: no.clone(),
                        institution_code: institution.clone(),
                        kind,
                        filename: filename.clone(),
                        content,
                        stored_at: stored_at.clone(),
                        expires_at: store_time(expires),
                    },
                )?;
                Ok(output(&no, &filename, &nhsa_time(expires)).to_string())
            })
        })
        .await
        .map_err(refusal)?;
    serde_json::from_str(&text).map_err(|e| {
        NhsaError::general(
            "系统内部错误",
            format!("internal error: stored answer unreadable: {e}"),
        )
    })
}

/// The request key of a file transaction: the institution's msgid, with a hash of what
/// makes the request.
pub(super) fn request_key(
    env: &Envelope,
    method: &'static str,
    parts: &[&[u8]],
) -> NResult<RequestKey> {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(&(p.len() as u64).to_be_bytes());
        all.extend_from_slice(p);
    }
    RequestKey::new(
        &treatment::scope(&env.fixmedins_code),
        &env.msgid,
        method,
        sha256_hex(&all),
    )
    .map_err(refusal)
}

/// A stored file of `institution` for use now, refused (naming `path`) when there is
/// none, it is another institution's or it has expired.
pub(super) async fn file_of(
    st: &NodeState,
    institution: &str,
    no: &str,
    path: &str,
) -> NResult<NhsaFile> {
    let key = no.to_owned();
    let f = st
        .store
        .read(move |conn| nhsa_files::get(conn, &key))
        .await
        .map_err(refusal)?;
    let Some(f) = f else {
        return Err(NhsaError::field(
            path,
            format!("文件 {no} 不存在（请先以 9101 上传；文件保留 {FILE_HOURS} 小时）"),
            format!(
                "{path} {no}: no such file; upload it with 9101 first (files are kept {FILE_HOURS} hours)"
            ),
        ));
    };
    if f.institution_code != institution {
        return Err(NhsaError::field(
            path,
            format!("文件 {no} 属于其他机构，不可使用"),
            format!(
                "{path} {no} belongs to another institution; only the institution that stored a file may use it"
            ),
        ));
    }
    if f.expires_at <= store_time(st.clock.now()) {
        return Err(NhsaError::field(
            path,
            format!("文件 {no} 已过期，请重新上传"),
            format!(
                "{path} {no} expired (files are kept {FILE_HOURS} hours); upload it again with 9101"
            ),
        ));
    }
    Ok(f)
}

/// 9101: upload a 3202 detail file.
pub async fn upload(st: &NodeState, env: &Envelope) -> NResult<Answer> {
    let node = object(&env.input, "fsUploadIn", "input.fsUploadIn")?;
    let filename = node.str("filename")?;
    if filename.chars().count() > 200 {
        return Err(NhsaError::field(
            "input.fsUploadIn.filename",
            "长度超过 200",
            "input.fsUploadIn.filename is longer than 200 characters",
        ));
    }
    let code = node.str("fixmedins_code")?;
    if code != env.fixmedins_code {
        return Err(NhsaError::field(
            "input.fsUploadIn.fixmedins_code",
            format!("应与报文的 fixmedins_code {} 一致", env.fixmedins_code),
            format!(
                "input.fsUploadIn.fixmedins_code {code} differs from the envelope's fixmedins_code {}",
                env.fixmedins_code
            ),
        ));
    }
    let path = "input.fsUploadIn.in";
    let bytes = upload_bytes(node.obj.get("in"), path)?;
    if bytes.len() > MAX_UPLOAD_BYTES {
        return Err(too_large(path, bytes.len()));
    }
    let text = unzip_text(&bytes).map_err(|why| {
        NhsaError::field(
            path,
            "不是可读的明细 zip 文件",
            format!("{path}: the upload {why}"),
        )
    })?;
    super::detail_reconcile::parse_detail(&text.text).map_err(|why| {
        NhsaError::field(
            path,
            "明细文件内容有误",
            format!("{path}: {} {why}", text.name),
        )
    })?;
    let key = request_key(env, "NhsaUpload", &[filename.as_bytes(), &bytes])?;
    let out = store_once(
        st,
        key,
        &env.fixmedins_code,
        NhsaFileKind::Upload,
        filename,
        bytes,
        |no, name, end| {
            // [OH] reads these at the top of `output`; others expect a node.
            let info = json!({"file_qury_no": no, "filename": name, "dld_endtime": end});
            json!({"file_qury_no": no, "filename": name, "dld_endtime": end, "fileinfo": info})
        },
    )
    .await?;
    Ok((out, None))
}

/// 9102: the bytes of a stored file (a 3202 result, or an upload) of the caller.
pub async fn download(st: &NodeState, env: &Envelope) -> NResult<(String, Vec<u8>)> {
    let node = object(&env.input, "fsDownloadIn", "input.fsDownloadIn")?;
    let no = node.str("file_qury_no")?;
    // Required by the sheet; the number alone finds the file.
    node.str("filename")?;
    let code = node.str("fixmedins_code")?;
    if code != env.fixmedins_code {
        return Err(NhsaError::field(
            "input.fsDownloadIn.fixmedins_code",
            format!("应与报文的 fixmedins_code {} 一致", env.fixmedins_code),
            format!(
                "input.fsDownloadIn.fixmedins_code {code} differs from the envelope's fixmedins_code {}",
                env.fixmedins_code
            ),
        ));
    }
    let f = file_of(
        st,
        &env.fixmedins_code,
        &no,
        "input.fsDownloadIn.file_qury_no",
    )
    .await?;
    Ok((f.filename, f.content))
}

/// Yuan text of fen, two decimals.
pub(super) fn yuan(fen: i64) -> String {
    money::format(money::from_fen(fen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zip_of_one_text_file_reads_back_and_garbage_is_named() {
        let z = zip_text("detail.txt", "a\tb\n").expect("zip");
        assert_eq!(
            unzip_text(&z),
            Ok(ZipText {
                name: "detail.txt".into(),
                text: "a\tb\n".into()
            })
        );
        assert!(
            unzip_text(b"PK not really")
                .unwrap_err()
                .starts_with("is not a zip archive")
        );
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default();
        w.start_file("a.txt", o).expect("a");
        w.start_file("b.txt", o).expect("b");
        let two = w.finish().expect("finish").into_inner();
        assert!(unzip_text(&two).unwrap_err().contains("more than one file"));
    }

    #[test]
    fn upload_bytes_take_base64_or_a_byte_array() {
        let p = "input.fsUploadIn.in";
        assert_eq!(upload_bytes(Some(&json!("AQID\n")), p), Ok(vec![1, 2, 3]));
        assert_eq!(
            upload_bytes(Some(&json!([1, 2, 255])), p),
            Ok(vec![1, 2, 255])
        );
        let e = upload_bytes(Some(&json!([1, 256])), p).unwrap_err();
        assert!(e.en.contains("[1] 256 is not a byte"), "{e:?}");
        let e = upload_bytes(Some(&json!("%%%")), p).unwrap_err();
        assert_eq!(e.field.as_deref(), Some(p));
        assert_eq!(upload_bytes(None, p).unwrap_err().field.as_deref(), Some(p));
    }
}
