//! The language of text output (`--lang en|zh`, env `YIDI_LANG`, else `LC_ALL` / `LANG`
//! starting with `zh`), for agency staff who read Chinese, and the labels it picks. JSON
//! output keeps the codes: it is for machines.
//!
//! The labels live in `node/cli/locales/en.yml` and `zh.yml`, embedded at compile time by
//! `rust-i18n` (`rust_i18n::i18n!` in `lib.rs`) and looked up with
//! `t!("key", locale = lang.code())`. A key missing from one locale would silently fall
//! back to English, so a test here requires both files to hold the same keys. Domain codes
//! (person types, filing types, visit kinds) take their Chinese names from
//! `yidi_common::types`, which holds them for import too.

use std::borrow::Cow;

use clap::ValueEnum;
use rust_i18n::t;

/// The language of text output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Lang {
    #[default]
    En,
    Zh,
}

impl Lang {
    /// The flag if given, else the environment: `YIDI_LANG`, then `LC_ALL`, then `LANG`
    /// (a locale starting with `zh`, e.g. `zh_CN.UTF-8`, is Chinese).
    #[must_use]
    pub fn resolve(flag: Option<Lang>) -> Lang {
        flag.unwrap_or_else(|| Self::from_env(|k| std::env::var(k).ok()))
    }

    /// As [`Lang::resolve`] without a flag, reading variables through `var`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Lang {
        if let Some(v) = var("YIDI_LANG").filter(|v| !v.trim().is_empty()) {
            return if v.trim().to_ascii_lowercase().starts_with("zh") {
                Lang::Zh
            } else {
                Lang::En
            };
        }
        // POSIX: LC_ALL overrides LANG; the first one set decides.
        for k in ["LC_ALL", "LANG"] {
            if let Some(v) = var(k).filter(|v| !v.trim().is_empty()) {
                return if v.starts_with("zh") {
                    Lang::Zh
                } else {
                    Lang::En
                };
            }
        }
        Lang::En
    }

    /// The label of `key` (a key of `locales/*.yml`, e.g. `quote.field`) in this language.
    #[must_use]
    pub fn label(self, key: &'static str) -> &'static str {
        // Without arguments `t!` borrows: the embedded text, or the key itself when no
        // locale has it (which `every_label_is_in_both_locales` rules out for zh and en).
        match t!(key, locale = self.code()) {
            Cow::Borrowed(s) => s,
            Cow::Owned(_) => key,
        }
    }

    /// The locale of `locales/<code>.yml`.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }
}

/// What a ledger record is, grouped as a statement shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KindGroup {
    Claims,
    Cancellations,
    AuditDeductions,
    Reserves,
    /// A kind this build does not know (a newer node's).
    Other,
}

impl KindGroup {
    /// Every group, in the order a statement lists them.
    pub const ALL: [KindGroup; 5] = [
        KindGroup::Claims,
        KindGroup::Cancellations,
        KindGroup::AuditDeductions,
        KindGroup::Reserves,
        KindGroup::Other,
    ];

    /// The group of a ledger `kind` (claim, reversal, deduction, reserve_…).
    #[must_use]
    pub fn of(kind: &str) -> KindGroup {
        match kind {
            "claim" => KindGroup::Claims,
            "reversal" => KindGroup::Cancellations,
            "deduction" => KindGroup::AuditDeductions,
            k if k.starts_with("reserve_") => KindGroup::Reserves,
            _ => KindGroup::Other,
        }
    }

    /// The group's code in JSON output.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            KindGroup::Claims => "claims",
            KindGroup::Cancellations => "cancellations",
            KindGroup::AuditDeductions => "audit_deductions",
            KindGroup::Reserves => "reserves",
            KindGroup::Other => "other",
        }
    }

    /// The label in `lang`.
    #[must_use]
    pub fn label(self, lang: Lang) -> String {
        code_label(lang, "kind_group", self.code())
    }
}

/// The label in `lang` of the code `code` under `section` of the locale files (a fund,
/// a line classification, an accumulator...): English shows the code itself. A code
/// the files lack (a newer node's) shows as the code.
#[must_use]
pub fn code_label(lang: Lang, section: &str, code: &str) -> String {
    let key = format!("{section}.{code}");
    let label = t!(&key, locale = lang.code());
    if label == key {
        code.to_owned()
    } else {
        label.into_owned()
    }
}

/// The label of a fund (NHSA fund types).
#[must_use]
pub fn fund_label(f: yidi_common::engine::Fund, lang: Lang) -> String {
    code_label(lang, "fund", f.as_str())
}

/// The label of how a fee line was classified.
#[must_use]
pub fn line_reason_label(r: yidi_common::engine::LineReason, lang: Lang) -> String {
    code_label(lang, "line_reason", r.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| v.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_flag_then_yidi_lang_then_the_locale_decide() {
        assert_eq!(Lang::from_env(env(&[])), Lang::En);
        assert_eq!(Lang::from_env(env(&[("LANG", "zh_CN.UTF-8")])), Lang::Zh);
        assert_eq!(
            Lang::from_env(env(&[("LC_ALL", "C"), ("LANG", "zh_CN.UTF-8")])),
            Lang::En
        );
        assert_eq!(
            Lang::from_env(env(&[("YIDI_LANG", "zh"), ("LANG", "C")])),
            Lang::Zh
        );
        assert_eq!(
            Lang::from_env(env(&[("YIDI_LANG", "en"), ("LANG", "zh_CN.UTF-8")])),
            Lang::En
        );
        assert_eq!(Lang::resolve(Some(Lang::Zh)), Lang::Zh);
    }

    /// Every locale file's keys, flattened (`quote.field`) as `i18n!` embeds them.
    fn locale_keys() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        rust_i18n_support::load_locales(concat!(env!("CARGO_MANIFEST_DIR"), "/locales"), |_| false)
            .into_iter()
            .map(|(locale, trs)| (locale, trs.into_keys().collect()))
            .collect()
    }

    #[test]
    fn every_label_is_in_both_locales() {
        let keys = locale_keys();
        assert_eq!(
            keys.keys().map(String::as_str).collect::<Vec<_>>(),
            ["en", "zh"]
        );
        let (en, zh) = (&keys["en"], &keys["zh"]);
        assert!(en.len() > 100, "en.yml holds {} keys", en.len());
        let only_en: Vec<_> = en.difference(zh).collect();
        let only_zh: Vec<_> = zh.difference(en).collect();
        assert!(only_en.is_empty(), "missing from zh.yml: {only_en:?}");
        assert!(only_zh.is_empty(), "missing from en.yml: {only_zh:?}");
    }

    #[test]
    fn every_code_has_a_label() {
        use yidi_common::engine::{Fund, LineReason};
        let keys = locale_keys();
        let mut codes: Vec<String> = KindGroup::ALL
            .iter()
            .map(|g| format!("kind_group.{}", g.code()))
            .collect();
        for f in [
            Fund::Hifp,
            Fund::Hifmi,
            Fund::Hifob,
            Fund::Cvlserv,
            Fund::Maf,
            Fund::Acct,
        ] {
            codes.push(format!("fund.{}", f.as_str()));
        }
        for r in [
            LineReason::A,
            LineReason::B,
            LineReason::BFirstSelfpay,
            LineReason::COutOfScope,
            LineReason::OverPriceCap,
            LineReason::BOverPriceCap,
        ] {
            codes.push(format!("line_reason.{}", r.as_str()));
        }
        for code in &codes {
            assert!(keys["zh"].contains(code), "no label for {code}");
        }
        assert_eq!(fund_label(Fund::Maf, Lang::Zh), "医疗救助");
        assert_eq!(fund_label(Fund::Maf, Lang::En), "maf");
        assert_eq!(
            line_reason_label(LineReason::COutOfScope, Lang::Zh),
            "丙类（目录外全自费）"
        );
        assert_eq!(code_label(Lang::Zh, "fund", "newer"), "newer");
    }

    #[test]
    fn ledger_kinds_fall_into_the_statement_groups() {
        assert_eq!(KindGroup::of("claim"), KindGroup::Claims);
        assert_eq!(KindGroup::of("reversal"), KindGroup::Cancellations);
        assert_eq!(KindGroup::of("deduction"), KindGroup::AuditDeductions);
        assert_eq!(KindGroup::of("reserve_topup"), KindGroup::Reserves);
        assert_eq!(KindGroup::of("reserve_withdrawal"), KindGroup::Reserves);
        assert_eq!(KindGroup::of("bonus"), KindGroup::Other);
        assert_eq!(KindGroup::AuditDeductions.label(Lang::Zh), "审核扣款");
        assert_eq!(KindGroup::Claims.label(Lang::En), "claims");
    }
}
