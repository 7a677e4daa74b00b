//! Labels of the text output in English or Chinese (`--lang en|zh`, env `YIDI_LANG`, else
//! `LC_ALL` / `LANG` starting with `zh`), for agency staff who read Chinese. JSON output
//! keeps the codes: it is for machines.
//!
//! A typed table rather than a message-catalogue crate: the labels are a closed set
//! known at compile time, so each is an enum variant and a missing translation is a
//! compile error (an exhaustive `match`), where catalogue look-ups by string key fail
//! at run time. Domain codes (person types, filing types, visit kinds) take their
//! Chinese names from `yidi_common::types`, which already holds them for import.

use clap::ValueEnum;

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

    /// `en` or `zh` of a label.
    #[must_use]
    pub fn pick<'a>(self, en: &'a str, zh: &'a str) -> &'a str {
        match self {
            Lang::En => en,
            Lang::Zh => zh,
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
    pub fn label(self, lang: Lang) -> &'static str {
        match self {
            KindGroup::Claims => lang.pick("claims", "结算费用"),
            KindGroup::Cancellations => lang.pick("cancellations", "撤销冲正"),
            KindGroup::AuditDeductions => lang.pick("audit deductions", "审核扣款"),
            KindGroup::Reserves => lang.pick("reserves", "预付金（储备金）"),
            KindGroup::Other => lang.pick("other", "其他"),
        }
    }
}

/// The Chinese name of a fund (NHSA fund types).
#[must_use]
pub fn fund_zh(f: yidi_common::engine::Fund) -> &'static str {
    use yidi_common::engine::Fund;
    match f {
        Fund::Hifp => "统筹基金",
        Fund::Hifmi => "大病保险",
        Fund::Hifob => "大额医疗补助",
        Fund::Cvlserv => "公务员医疗补助",
        Fund::Maf => "医疗救助",
        Fund::Acct => "个人账户",
    }
}

/// The Chinese name of how a fee line was classified.
#[must_use]
pub fn line_reason_zh(r: yidi_common::engine::LineReason) -> &'static str {
    use yidi_common::engine::LineReason;
    match r {
        LineReason::A => "甲类",
        LineReason::B => "乙类",
        LineReason::BFirstSelfpay => "乙类先行自付",
        LineReason::COutOfScope => "丙类（目录外全自费）",
        LineReason::OverPriceCap => "超限价",
        LineReason::BOverPriceCap => "乙类超限价",
    }
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
