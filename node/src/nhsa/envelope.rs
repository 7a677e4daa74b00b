//! The NHSA request envelope (公共输入) and response envelope (公共输出): parsing a
//! request body into [`Envelope`], reading typed values out of `input` with errors
//! that name the NHSA field ([`NhsaError`]), and writing answers: `infcode` as a JSON
//! number, amounts as JSON numbers with exactly two decimals.
//!
//! Numbers are read from their JSON text (serde_json's `arbitrary_precision`), never
//! through a float, so `68`, `68.0` and `68.00` are the same amount and `0.1 + 0.2`
//! never appears.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Map, Number, Value};

use super::codes;

/// An answer of infcode -1: the NHSA field it concerns (if any) and the message in
/// Chinese and English.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NhsaError {
    pub field: Option<String>,
    pub zh: String,
    pub en: String,
    /// A refusal at the node's door (`crate::admission`): when to retry, in
    /// milliseconds; the gateway sends it as the `Retry-After` and `retry-after-ms`
    /// headers too.
    pub retry_after_ms: Option<u64>,
}

impl NhsaError {
    /// A problem with one field.
    pub fn field(path: impl Into<String>, zh: impl AsRef<str>, en: impl Into<String>) -> Self {
        let path = path.into();
        Self {
            zh: format!("{}（{path}）{}", codes::field_zh(&path), zh.as_ref()),
            en: en.into(),
            field: Some(path),
            retry_after_ms: None,
        }
    }

    /// A required field that is absent or empty.
    pub fn missing(path: &str) -> Self {
        Self::field(
            path,
            "缺失或为空",
            format!("{path} is missing or empty; it is required"),
        )
    }

    /// A problem that concerns no single field.
    pub fn general(zh: impl Into<String>, en: impl Into<String>) -> Self {
        Self {
            field: None,
            zh: zh.into(),
            en: en.into(),
            retry_after_ms: None,
        }
    }

    /// `err_msg`: Chinese, then English.
    #[must_use]
    pub fn message(&self) -> String {
        format!("{}；{}", self.zh, self.en)
    }
}

pub type NResult<T> = std::result::Result<T, NhsaError>;

/// The envelope fields the gateway uses; the rest (`recer_sys_code`, `infver`,
/// `opter*`, `dev_*`, `cainfo`, `signtype`, `fixmedins_name`, `sign_no`) are accepted
/// and not needed.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub infno: String,
    pub msgid: String,
    pub mdtrtarea_admvs: String,
    pub insuplc_admdvs: String,
    pub fixmedins_code: String,
    pub sign_no: String,
    pub input: Map<String, Value>,
}

/// A scalar of the envelope as sent: a string (borrowed from the body where it has no
/// escapes), a number's JSON text, or absent/null. Anything else is kept as its kind,
/// refused with the field's name once known.
enum Scalar<'a> {
    Text(std::borrow::Cow<'a, str>),
    Number(Number),
    Absent,
    Other,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Text(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Text(v.to_owned().into()))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Text(v.into()))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Absent)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Absent)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Number(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Number(v.into()))
            }
            // An envelope field is a code or an id: a fraction in one is refused later
            // by its own rule, so its shortest text suffices.
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Number::from_f64(v).map_or(Scalar::Other, Scalar::Number))
            }
            // With `arbitrary_precision` a number that is no integer may arrive as
            // serde_json's one-entry map holding its text under this key (what `Number`
            // itself reads).
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                const NUMBER_TOKEN: &str = "$serde_json::private::Number";
                let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? else {
                    return Ok(Scalar::Other);
                };
                if key == NUMBER_TOKEN {
                    let text: std::borrow::Cow<'de, str> = map.next_value()?;
                    return Ok(Number::from_str(&text).map_or(Scalar::Other, Scalar::Number));
                }
                map.next_value::<serde::de::IgnoredAny>()?;
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Scalar::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The envelope as sent: the fields the gateway reads, typed (the rest are skipped
/// without being built), and `input` as a JSON value.
#[derive(serde::Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default = "absent")]
    infno: Scalar<'a>,
    #[serde(borrow, default = "absent")]
    msgid: Scalar<'a>,
    #[serde(borrow, default = "absent")]
    mdtrtarea_admvs: Scalar<'a>,
    #[serde(borrow, default = "absent")]
    insuplc_admdvs: Scalar<'a>,
    #[serde(borrow, default = "absent")]
    fixmedins_code: Scalar<'a>,
    #[serde(borrow, default = "absent")]
    sign_no: Scalar<'a>,
    #[serde(default)]
    input: Value,
}

fn absent<'a>() -> Scalar<'a> {
    Scalar::Absent
}

/// One envelope field as text: trimmed; a number as its JSON text.
fn text(f: &str, v: &Scalar<'_>, required: bool, max: usize) -> NResult<String> {
    let s = match v {
        Scalar::Absent => String::new(),
        Scalar::Text(s) => s.trim().to_owned(),
        Scalar::Number(n) => n.to_string(),
        Scalar::Other => {
            return Err(NhsaError::field(
                f,
                "必须是字符串",
                format!("{f} must be a string"),
            ));
        }
    };
    if required && s.is_empty() {
        return Err(NhsaError::missing(f));
    }
    check_len(f, &s, max)?;
    Ok(s)
}

/// Parses a request body. `path_infno` is the `/{infno}` the URL ended with, if any: it
/// must agree with the body's.
pub fn parse(body: &[u8], path_infno: Option<&str>) -> NResult<Envelope> {
    let not_object = || {
        NhsaError::general(
            "请求报文必须是 JSON 对象",
            "the request body must be a JSON object (the envelope)",
        )
    };
    // A struct would also accept its fields as an array.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(not_object());
    }
    let raw: RawEnvelope<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            not_object()
        } else {
            NhsaError::general(
                format!("请求报文不是合法的 JSON（{e}）"),
                format!("the request body is not valid JSON: {e}"),
            )
        }
    })?;
    let infno = text("infno", &raw.infno, true, 6)?;
    if let Some(p) = path_infno
        && p != infno
    {
        return Err(NhsaError::field(
            "infno",
            format!("与请求路径中的交易编号 {p} 不一致"),
            format!("infno {infno} differs from the {p} at the end of the URL"),
        ));
    }
    let msgid = text("msgid", &raw.msgid, true, 30)?;
    if !msgid
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    {
        return Err(NhsaError::field(
            "msgid",
            "只能包含字母、数字和 . _ : -",
            "msgid may hold only letters, digits and . _ : -",
        ));
    }
    let mdtrtarea_admvs = text("mdtrtarea_admvs", &raw.mdtrtarea_admvs, false, 6)?;
    let insuplc_admdvs = text("insuplc_admdvs", &raw.insuplc_admdvs, false, 6)?;
    let fixmedins_code = text("fixmedins_code", &raw.fixmedins_code, true, 30)?;
    let sign_no = text("sign_no", &raw.sign_no, false, 30)?;
    let input = match raw.input {
        Value::Object(m) => m,
        // Some HIS send `input` as the escaped string the spec's type suggests.
        Value::String(s) if !s.trim().is_empty() => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(NhsaError::field(
                    "input",
                    "必须是 JSON 对象",
                    "input must be a JSON object keyed by node name (data, feedetail, …)",
                ));
            }
        },
        Value::Null => Map::new(),
        _ => {
            return Err(NhsaError::field(
                "input",
                "必须是 JSON 对象",
                "input must be a JSON object keyed by node name (data, feedetail, …)",
            ));
        }
    };
    Ok(Envelope {
        infno,
        msgid,
        mdtrtarea_admvs,
        insuplc_admdvs,
        fixmedins_code,
        sign_no,
        input,
    })
}

fn check_len(path: &str, s: &str, max: usize) -> NResult<()> {
    let n = s.chars().count();
    if n > max {
        return Err(NhsaError::field(
            path,
            format!("长度 {n} 超过 {max}"),
            format!("{path} is {n} characters long; at most {max} are accepted"),
        ));
    }
    Ok(())
}

/// One node of `input` (an object), with its path for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub path: &'a str,
    pub obj: &'a Map<String, Value>,
}

/// The object at `input.<name>`; a one-element array is accepted for it (clients
/// differ, sheet §9).
pub fn object<'a>(input: &'a Map<String, Value>, name: &str, path: &'a str) -> NResult<Node<'a>> {
    match input.get(name) {
        Some(Value::Object(obj)) => Ok(Node { path, obj }),
        Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
            Value::Object(obj) => Ok(Node { path, obj }),
            _ => Err(NhsaError::field(
                path,
                "必须是对象",
                format!("{path} must be an object"),
            )),
        },
        None | Some(Value::Null) => Err(NhsaError::missing(path)),
        Some(_) => Err(NhsaError::field(
            path,
            "必须是对象",
            format!("{path} must be an object"),
        )),
    }
}

/// The objects of `input.<name>`: an array, or one object (clients differ).
pub fn objects<'a>(
    input: &'a Map<String, Value>,
    name: &str,
) -> NResult<Vec<&'a Map<String, Value>>> {
    let path = format!("input.{name}");
    match input.get(name) {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(o) => Ok(o),
                _ => Err(NhsaError::field(
                    format!("{name}[{i}]"),
                    "必须是对象",
                    format!("{name}[{i}] must be an object"),
                )),
            })
            .collect(),
        Some(Value::Object(o)) => Ok(vec![o]),
        _ => Err(NhsaError::missing(&path)),
    }
}

impl<'a> Node<'a> {
    fn at(&self, f: &str) -> String {
        format!("{}.{f}", self.path)
    }

    /// A string field; numbers are taken as their text (a code sent as `310`).
    pub fn opt_str(&self, f: &str) -> NResult<String> {
        match self.obj.get(f) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.trim().to_owned()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(_) => Err(NhsaError::field(
                self.at(f),
                "必须是字符串",
                format!("{} must be a string", self.at(f)),
            )),
        }
    }

    /// A required string field.
    pub fn str(&self, f: &str) -> NResult<String> {
        let s = self.opt_str(f)?;
        if s.is_empty() {
            return Err(NhsaError::missing(&self.at(f)));
        }
        Ok(s)
    }

    /// A decimal number, from its JSON text (a numeric string is accepted too).
    pub fn opt_dec(&self, f: &str) -> NResult<Option<Decimal>> {
        let text = match self.obj.get(f) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(_) => {
                return Err(NhsaError::field(
                    self.at(f),
                    "必须是数值",
                    format!("{} must be a number", self.at(f)),
                ));
            }
        };
        decimal(&text).map(Some).ok_or_else(|| {
            NhsaError::field(
                self.at(f),
                format!("不是合法的数值：{}", short(&text)),
                format!("{} is not a number: {}", self.at(f), short(&text)),
            )
        })
    }

    /// A required decimal number.
    pub fn dec(&self, f: &str) -> NResult<Decimal> {
        self.opt_dec(f)?
            .ok_or_else(|| NhsaError::missing(&self.at(f)))
    }
}

fn short(s: &str) -> String {
    let head: String = s.chars().take(32).collect();
    if head.len() < s.len() {
        format!("{head}…")
    } else {
        head
    }
}

/// A decimal from JSON number text: plain or with an exponent (`1.5e2`).
#[must_use]
pub fn decimal(text: &str) -> Option<Decimal> {
    if text.len() > 40 {
        return None;
    }
    Decimal::from_str(text)
        .or_else(|_| Decimal::from_scientific(text))
        .ok()
}

/// An amount as a JSON number with exactly two decimals (half-up at the fen).
#[must_use]
pub fn amount(d: Decimal) -> Value {
    let mut r = d.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    if r.is_zero() {
        // Never "-0.00".
        r = Decimal::ZERO;
    }
    r.rescale(2);
    number(&r.to_string())
}

/// An amount given as the proto's decimal string ("" reads as 0.00).
#[must_use]
pub fn amount_str(s: &str) -> Value {
    amount(decimal(s).unwrap_or_default())
}

/// A JSON number with the given text (which must be a valid JSON number).
#[must_use]
pub fn number(text: &str) -> Value {
    Number::from_str(text).map_or(Value::Null, Value::Number)
}

/// The text of a decimal without trailing zeros, for the proto's decimal strings.
#[must_use]
pub fn plain(d: Decimal) -> String {
    d.normalize().to_string()
}

/// The answer envelope, written straight from the transaction's result (the output is
/// not copied into a tree of its own).
#[derive(serde::Serialize)]
struct AnswerEnvelope<'a> {
    infcode: i32,
    inf_refmsgid: &'a str,
    refmsg_time: &'a str,
    respond_time: &'a str,
    err_msg: Option<String>,
    warn_msg: Option<&'a str>,
    cainfo: (),
    signtype: (),
    output: Option<&'a Value>,
}

/// The answer envelope as JSON bytes.
#[must_use]
pub fn answer(
    result: &NResult<(Value, Option<String>)>,
    refmsgid: &str,
    received: &str,
    responded: &str,
) -> Vec<u8> {
    let (infcode, err_msg, output, warn_msg) = match result {
        Ok((output, warn)) => (0, None, Some(output), warn.as_deref()),
        Err(e) => (-1, Some(e.message()), None, None),
    };
    let env = AnswerEnvelope {
        infcode,
        inf_refmsgid: refmsgid,
        refmsg_time: received,
        respond_time: responded,
        err_msg,
        warn_msg,
        cainfo: (),
        signtype: (),
        output,
    };
    // Serialising strings, numbers and a `Value` cannot fail.
    serde_json::to_vec(&env).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_decimal_text_and_answer_with_two_decimals() {
        let env = parse(
            br#"{"infno":"2206","msgid":"M1","fixmedins_code":"H1","input":{"data":{"a":68,"b":0.1,"c":"12.345","d":1.5e2,"e":true}}}"#,
            Some("2206"),
        )
        .expect("parse");
        let node = object(&env.input, "data", "input.data").expect("data");
        assert_eq!(node.dec("a").unwrap().to_string(), "68");
        assert_eq!(node.dec("b").unwrap().to_string(), "0.1");
        assert_eq!(node.dec("c").unwrap().to_string(), "12.345");
        assert_eq!(node.dec("d").unwrap(), Decimal::from(150));
        let e = node.dec("e").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("input.data.e"));
        assert_eq!(
            node.dec("z").unwrap_err().field.as_deref(),
            Some("input.data.z")
        );
        assert_eq!(
            amount(Decimal::from_str("0.125").unwrap()).to_string(),
            "0.13"
        );
        assert_eq!(amount(Decimal::from(68)).to_string(), "68.00");
        assert_eq!(
            amount(Decimal::from_str("-4.7").unwrap()).to_string(),
            "-4.70"
        );
    }

    #[test]
    fn malformed_envelopes_name_the_field() {
        assert!(parse(b"not json", None).unwrap_err().field.is_none());
        let e = parse(br#"{"msgid":"M1","fixmedins_code":"H1"}"#, None).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("infno"));
        assert!(e.message().contains("交易编号") && e.message().contains("infno is missing"));
        let e = parse(
            br#"{"infno":"2207","msgid":"M1","fixmedins_code":"H1"}"#,
            Some("2206"),
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("infno"));
        let e = parse(
            br#"{"infno":"2207","msgid":"M 1","fixmedins_code":"H1"}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("msgid"));
        let e = parse(
            br#"{"infno":"2207","msgid":"M1","fixmedins_code":"H1","input":[1]}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("input"));
        // An object or array where a string belongs names the field; a number is its
        // text; a string escaped as JSON text is unescaped.
        for body in [
            br#"{"infno":{"a":1,"b":[2]},"msgid":"M1","fixmedins_code":"H1"}"#.as_slice(),
            br#"{"infno":[2207],"msgid":"M1","fixmedins_code":"H1"}"#,
            br#"{"infno":true,"msgid":"M1","fixmedins_code":"H1"}"#,
        ] {
            let e = parse(body, None).unwrap_err();
            assert_eq!(e.en, "infno must be a string");
        }
        let env = parse(
            br#"{"infno":2207,"msgid":"M\u0031","fixmedins_code":" H1 ","x":{"y":[1,{}]}}"#,
            None,
        )
        .expect("parse");
        assert_eq!(
            (
                env.infno.as_str(),
                env.msgid.as_str(),
                env.fixmedins_code.as_str()
            ),
            ("2207", "M1", "H1")
        );
        for body in [b" []".as_slice(), b"5", br#""2207""#] {
            let e = parse(body, None).unwrap_err();
            assert_eq!(
                e.en,
                "the request body must be a JSON object (the envelope)"
            );
        }
    }
}
